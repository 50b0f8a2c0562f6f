"""Searches end to end on digits (issue 15): a random search over LASA's parameters against its defaults,
a worst-case search over LIE's z against the median, ASHA stopping a clearly bad trial (and MLflow ending
it FINISHED with a tag), and a SIGKILLed search resumed."""

import csv
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from byzlab.orchestrator import cli

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("ray_cluster")
BASE = {"data": {"dataset": "digits"}, "partition": {"scheme": "dirichlet", "beta": 0.5},
        "threat": {"fraction": 0.2}}


def write(path: Path, output_dir: Path, rounds: int, tracking: bool = False, **spec) -> Path:
    run = {"rounds": rounds, "client_actors": 1, "client_actor_cpus": 0.5, "server_cpus": 0.5,
           "output_dir": str(output_dir)}
    tree = {"name": path.stem, "base": {**BASE, "run": run, "tracking": {"enabled": tracking}}, **spec}
    path.write_text(yaml.safe_dump(tree))
    return path


def search_rows(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "report" / "search.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["params"] = dict(item.split("=") for item in row["parameters"].split("; "))
        row["value"] = float(row["value"])
    return rows


def run_states(sweep_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "run.json").read_text())
            for p in (sweep_dir / "runs").iterdir() if (p / "run.json").is_file()}


def test_random_search_finds_a_setting_at_least_as_accurate_as_the_defaults(tmp_path):
    """8 samples of LASA's λ_m and sparsity under ByzMean, the defaults (λ_m 1, sparsity 0.3) the first."""
    spec = write(tmp_path / "tune.yaml", tmp_path / "out", rounds=6,
                 defenses={"lasa": {"lambda_m": {"uniform": [0.25, 4.0]}, "sparsity": {"uniform": [0.05, 0.9]}}},
                 attacks={"byzmean": {"base_params": {"z": 2}}}, search={"num_samples": 8})
    result = runner.invoke(cli.app, ["sweep", str(spec)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "8/8 trials finished" in result.stdout
    sweep_dir = tmp_path / "out" / "sweeps" / "tune"
    rows = search_rows(sweep_dir)
    assert len(rows) == len(run_states(sweep_dir)) == 8
    default = [r for r in rows if r["params"] == {"server.aggregator_params.lambda_m": "1.0",
                                                   "server.aggregator_params.sparsity": "0.3"}]
    assert len(default) == 1
    best = rows[0]  # ranked, highest first
    assert best["value"] == max(r["value"] for r in rows) >= default[0]["value"]
    for row in rows:
        assert 0.25 <= float(row["params"]["server.aggregator_params.lambda_m"]) <= 4.0
    report = (sweep_dir / "report" / "search.md").read_text()
    assert "Defaults: lambda_m=1, sparsity=0.3:" in report and "(default)" in report
    assert (sweep_dir / "report" / "search_server.aggregator_params.lambda_m.png").is_file()


def test_a_worst_case_search_over_lie_finds_a_z_worse_than_the_default(tmp_path):
    """LIE's default z is z_max = Φ⁻¹(0.6) ≈ 0.25 for 2 of 10 clients, which the median shrugs off; the
    search over [0.5, 3] finds a z that costs it more."""
    spec = write(tmp_path / "worst.yaml", tmp_path / "out", rounds=10, defenses={"median": {}},
                 attacks={"lie": {"z": {"uniform": [0.5, 3.0]}}}, objective="worst_attack",
                 search={"num_samples": 5})
    result = runner.invoke(cli.app, ["sweep", str(spec)], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = search_rows(tmp_path / "out" / "sweeps" / "worst")
    default = next(r for r in rows if r["params"]["threat.attack_params.z"] == "None")
    worst = rows[0]  # lowest first
    assert worst["value"] == min(r["value"] for r in rows) < default["value"]
    table = (tmp_path / "out" / "sweeps" / "worst" / "report" / "worst_case.md").read_text()
    assert f"| median | {100 * worst['value']:.2f} ({100 * default['value']:.2f}) |" in table


def test_asha_stops_a_clearly_bad_trial_which_mlflow_shows_finished_with_a_tag(tmp_path):
    """Learning rates 1e-4 (clearly bad: the model barely moves in 8 rounds) or 0.05, one trial at a time:
    at the rung of round 2 a 1e-4 trial falls below the better half and is stopped."""
    output_dir = tmp_path / "out"
    spec = write(tmp_path / "asha.yaml", output_dir, rounds=8, tracking=True, defenses={"fedavg": {}},
                 grid={"clients.lr": {"choice": [0.0001, 0.05]}},
                 search={"num_samples": 6, "seed": 3,
                         "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2}})
    result = runner.invoke(cli.app, ["sweep", str(spec), "--max-concurrent", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    sweep_dir = output_dir / "sweeps" / "asha"
    states = run_states(sweep_dir)
    configs = {rid: yaml.safe_load((sweep_dir / "runs" / rid / "config.yaml").read_text()) for rid in states}
    stopped = [rid for rid, s in states.items() if s["status"] == "stopped"]
    assert stopped and all(configs[rid]["clients"]["lr"] == 0.0001 for rid in stopped)
    assert all(states[rid]["stopped_round"] < 8 for rid in stopped)
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("byzlab")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "byzlab.run_id" in r.data.tags]
    assert {r.info.status for r in children} == {"FINISHED"}
    tagged = {r.data.tags["byzlab.run_id"]: r.data.tags.get("byzlab.stopped_early") for r in children}
    assert {rid for rid, tag in tagged.items() if tag} == set(stopped)
    assert all(tagged[rid] == str(states[rid]["stopped_round"]) for rid in stopped)
    assert "stopped at round" in (sweep_dir / "report" / "search.md").read_text()


@pytest.mark.slow  # ~1.5 min: a search killed and resumed in a second driver
def test_a_sigkilled_search_resumes_without_rerunning_finished_trials(tmp_path):
    output_dir = tmp_path / "out"
    spec = write(tmp_path / "killed.yaml", output_dir, rounds=12, defenses={"median": {}},
                 attacks={"sign_flip": {"scale": {"loguniform": [0.5, 8.0]}}}, search={"num_samples": 6})
    sweep_dir = output_dir / "sweeps" / "killed"
    driver = subprocess.Popen([shutil.which("byzlab"), "sweep", str(spec)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if (sweep_dir / "runs").is_dir() and sum(
                    s["status"] == "finished" for s in run_states(sweep_dir).values()) >= 2:
                break
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    finished = {rid: (sweep_dir / "runs" / rid / "metrics.parquet").read_bytes()
                for rid, s in run_states(sweep_dir).items() if s["status"] == "finished"}
    assert 2 <= len(finished) < 6
    result = runner.invoke(cli.app, ["resume", str(sweep_dir)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "6/6 trials finished" in result.stdout
    states = run_states(sweep_dir)
    assert len(states) == 6 and {s["status"] for s in states.values()} == {"finished"}
    for rid, metrics in finished.items():  # not rerun: the same files
        assert (sweep_dir / "runs" / rid / "metrics.parquet").read_bytes() == metrics
    assert len(search_rows(sweep_dir)) == 6
