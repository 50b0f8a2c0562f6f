"""Two identical `byzlab run` started together in a fresh directory: one runs, the other either finds it
running (one line naming its pid, exit 2) or finds it finished; never a crash, never two MLflow runs."""

import subprocess
import sys

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_two_identical_runs_started_together(tmp_path):
    command = [sys.executable, "-m", "byzlab.orchestrator", "run", "-o", "run.rounds=3",
               "-o", f"run.output_dir={tmp_path}"]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    outcomes = [(process.wait(300), *process.communicate()) for process in (first, second)]
    assert all("Traceback" not in err for _, _, err in outcomes), outcomes
    codes = sorted(code for code, _, _ in outcomes)
    assert codes in ([0, 0], [0, 2]), outcomes
    if codes == [0, 2]:
        refused = next(err for code, _, err in outcomes if code == 2)
        errors = [line for line in refused.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "being run by another process (pid" in errors[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("byzlab").experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED"]
