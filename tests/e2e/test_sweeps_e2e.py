"""Sweeps end to end on digits: Tune trials, MLflow parent/child runs, the report, SIGKILL + resume,
infeasible placements, and the README's quickstart sweep."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from byzlab.orchestrator import cli

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 24
CHECKPOINT_EVERY = 4
# Columns that depend on wall-clock time, not on the computation.
TIMING_COLUMNS = {"train_seconds", "agg_seconds", "eval_seconds", "round_seconds"}

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("ray_cluster")


def write_grid(path: Path, output_dir: Path, **run) -> Path:
    """2 x 2: beta in {0.3, 0.5} x {fedavg, median}, all under a 4x sign flip by 2 of 10 clients."""
    spec = {
        "name": "grid",
        "description": "2 x 2 test grid",
        "base": {
            "threat": {"attack": "sign_flip", "attack_params": {"scale": 4}, "fraction": 0.2},
            "run": {"rounds": ROUNDS, "checkpoint_every": CHECKPOINT_EVERY, "client_actors": 1,
                    "client_actor_cpus": 0.5, "server_cpus": 0.5, "output_dir": str(output_dir), **run},
        },
        "grid": {"partition.beta": [0.3, 0.5]},
        "defenses": {"fedavg": {}, "median": {}},
        "seeds": [0],
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def run_dirs(sweep_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in (sweep_dir / "runs").iterdir() if (p / "run.json").is_file()}


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def computed_metrics(run_dir: Path) -> dict:
    """The metrics that do not depend on wall-clock time; NaN (FedAvg diverging under attack) as a string so
    that equal runs compare equal."""
    table = pq.read_table(run_dir / "metrics.parquet")
    return {
        key: ["nan" if isinstance(x, float) and math.isnan(x) else x for x in values]
        for key, values in table.to_pydict().items()
        if key not in TIMING_COLUMNS and "train_seconds" not in key
    }


def mlflow_runs(output_dir: Path):
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("byzlab")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "byzlab.run_id" not in r.data.tags]
    children = [r for r in runs if "byzlab.run_id" in r.data.tags]
    return client, parents, children


def trial_processes(sweep_dir: Path) -> dict[str, tuple[int, float]]:
    """Each trial's trainable process and the time of its first result (Tune's result.json), by run id."""
    firsts = {
        trial.name: json.loads((trial / "result.json").read_text().splitlines()[0])
        for trial in (sweep_dir / "tune").iterdir() if (trial / "result.json").is_file()
    }
    return {run_id: (first["pid"], first["timestamp"]) for run_id, first in firsts.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 2 x 2 grid run straight through, in this process, on the session's cluster."""
    root = tmp_path_factory.mktemp("uninterrupted")
    spec = write_grid(root / "grid.yaml", root / "results")
    result = runner.invoke(cli.app, ["sweep", str(spec)], terminal_width=200)
    assert result.exit_code == 0, result.output
    return root / "results", result.stdout


def test_grid_runs_four_trials_with_child_runs_and_a_report(uninterrupted):
    output_dir, stdout = uninterrupted
    sweep_dir = output_dir / "sweeps" / "grid"
    assert f"table: {sweep_dir / 'report' / 'table.md'}" in stdout
    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 4 and all(state(d)["status"] == "finished" for d in dirs.values())
    # Two trials at a time: the third and fourth ran in the first two's trainable processes, on their
    # client and server actors (sweeps/trainable.py).
    assert len({pid for pid, _ in trial_processes(sweep_dir).values()}) == 2

    client, parents, children = mlflow_runs(output_dir)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["byzlab.run_id"] for c in children} == set(dirs)
    assert {(c.data.params["partition.beta"], c.data.params["server.aggregator"]) for c in children} == {
        ("0.3", "fedavg"), ("0.3", "median"), ("0.5", "fedavg"), ("0.5", "median")
    }
    # The MLflow UI's search works on the flattened params.
    found = client.search_runs(
        [parent.info.experiment_id], "params.partition.beta = '0.3' and params.server.aggregator = 'median'"
    )
    assert len(found) == 1
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/table.md", "report/table.csv", "report/table.tex"
    }

    # End to end: FedAvg collapses under the 4x sign flip, the median withstands it, in both beta groups.
    table = (sweep_dir / "report" / "table.md").read_text()
    for beta in ("0.3", "0.5"):
        section = table.split(f"β={beta}")[1].split("###")[0]
        median_row = next(line for line in section.splitlines() if line.startswith("| median"))
        fedavg_row = next(line for line in section.splitlines() if line.startswith("| fedavg"))
        assert "**" in median_row and "**" not in fedavg_row
    accuracy = {
        (c.data.params["server.aggregator"], c.data.params["partition.beta"]): c.data.metrics["acc_last5_mean"]
        for c in children
    }
    for beta in ("0.3", "0.5"):
        assert accuracy[("fedavg", beta)] < 0.2 and accuracy[("median", beta)] > accuracy[("fedavg", beta)] + 0.4


@pytest.mark.slow  # 7 s: a single run on new actors; that trials borrow workers is checked by the grid test
def test_a_trial_on_borrowed_workers_computes_what_byzlab_run_of_its_config_does(uninterrupted, tmp_path):
    """The last trial to start ran on the trainable and actors of a trial before it (two at a time)."""
    sweep_dir = uninterrupted[0] / "sweeps" / "grid"
    processes = trial_processes(sweep_dir)
    borrowed = max(processes, key=lambda run_id: processes[run_id][1])  # the last to start
    raw = yaml.safe_load((run_dirs(sweep_dir)[borrowed] / "config.yaml").read_text())
    raw["run"]["output_dir"], raw["tracking"]["enabled"] = str(tmp_path), False
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(raw))
    single = runner.invoke(cli.app, ["run", str(tmp_path / "trial.yaml")])
    assert single.exit_code == 0, single.output
    assert computed_metrics(tmp_path / borrowed) == computed_metrics(run_dirs(sweep_dir)[borrowed])


def wait_for(condition, process, timeout):
    """Poll ``condition`` until it holds; fail if the process ends first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.1)
    pytest.fail(f"condition not reached within {timeout} s")


def test_sigkill_of_the_driver_then_resume_loses_nothing(tmp_path, uninterrupted):
    output_dir = tmp_path / "results"
    spec = write_grid(tmp_path / "grid.yaml", output_dir)
    sweep_dir = output_dir / "sweeps" / "grid"
    driver = subprocess.Popen(
        [shutil.which("byzlab"), "sweep", str(spec)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def one_finished_one_partway() -> bool:
            if not (sweep_dir / "runs").is_dir():
                return False
            states = [state(d) for d in run_dirs(sweep_dir).values()]
            finished = [s for s in states if s["status"] == "finished"]
            partway = [s for s in states if s["status"] != "finished" and s["round"] >= CHECKPOINT_EVERY]
            return bool(finished and partway)

        wait_for(one_finished_one_partway, driver, timeout=240)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {rid: state(d) for rid, d in run_dirs(sweep_dir).items()}
    finished_files = {
        rid: {name: (d / name).read_bytes() for name in ("run.json", "metrics.parquet", "clients.parquet")}
        for rid, d in run_dirs(sweep_dir).items() if before[rid]["status"] == "finished"
    }
    assert finished_files and len(finished_files) < 4

    result = runner.invoke(cli.app, ["resume", str(sweep_dir)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "4/4 trials finished" in result.stdout

    dirs = run_dirs(sweep_dir)
    assert all(state(d)["status"] == "finished" for d in dirs.values())
    for rid, files in finished_files.items():  # finished trials were not rerun
        assert {name: (dirs[rid] / name).read_bytes() for name in files} == files
    reference_dirs = run_dirs(uninterrupted[0] / "sweeps" / "grid")
    assert set(dirs) == set(reference_dirs)
    for rid, run_dir in dirs.items():
        assert computed_metrics(run_dir) == computed_metrics(reference_dirs[rid])
        assert pq.read_table(run_dir / "metrics.parquet")["round"].to_pylist() == list(range(1, ROUNDS + 1))

    client, parents, children = mlflow_runs(output_dir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        for key in ("round_seconds", "test_accuracy"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, ROUNDS + 1)), (key, steps)
        assert len(client.get_metric_history(child.info.run_id, "acc_last5_mean")) == 1
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "finished"


def test_a_trial_the_cluster_cannot_hold_fails_fast_and_dry_run_says_so(tmp_path):
    spec = write_grid(tmp_path / "grid.yaml", tmp_path / "results", client_actor_cpus=3)
    for args in (["sweep", str(spec), "--dry-run"], ["sweep", str(spec)]):
        result = runner.invoke(cli.app, args, terminal_width=300)
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1
        assert "trial 0 (β=0.3, attack=sign_flip, defense=fedavg, seed=0)" in result.stderr.replace("'", "")
        assert "needs 3.5 CPUs" in result.stderr and "has 2 CPUs" in result.stderr
    assert not (tmp_path / "results" / "sweeps").exists()


def test_dry_run_counts_trials_reservations_and_work(tmp_path):
    spec = write_grid(tmp_path / "grid.yaml", tmp_path / "results")
    result = runner.invoke(cli.app, ["sweep", str(spec), "--dry-run", "--max-concurrent", "1"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "4 trials" in result.stdout
    assert "4 trial(s) reserve: 1 client actor(s) x (0.5 CPU, 0 GPU) + server (0.5 CPU, 0 GPU) = 1 CPUs" in result.stdout
    assert "up to 1 trial(s) at a time" in result.stdout
    # 4 trials x 24 rounds; 10 clients per round; 2 local epochs each
    assert "total work: 96 rounds, 960 client updates (1,920 local epochs)" in result.stdout
    assert not (tmp_path / "results" / "sweeps").exists()


@pytest.mark.slow  # 2 min; the sweep path (Tune, MLflow parent and children, report) stays in the default suite
def test_the_quickstart_sweep_as_the_readme_runs_it(tmp_path):
    """README: `byzlab sweep sweeps/quickstart.yaml` from a checkout (own local Ray cluster)."""
    shutil.copytree(REPO / "sweeps", tmp_path / "sweeps", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    done = subprocess.run(
        [shutil.which("byzlab"), "sweep", "sweeps/quickstart.yaml"], cwd=tmp_path,
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = tmp_path / "byzlab-results" / "sweeps" / "quickstart" / "report" / "table.md"
    assert f"table: {table}" in done.stdout
    assert "12/12 trials finished" in done.stdout
    header, _, *rows = [line.split("|")[1:-1] for line in table.read_text().splitlines() if line.startswith("| ")]
    cells = {row[0].strip(): dict(zip((h.strip() for h in header[1:]), row[1:])) for row in rows}
    assert list(cells) == ["fedavg", "median", "lasa", "fedra"]

    def accuracy(cell: str) -> float:
        return float(cell.replace("**", "").replace("<u>", "").replace("</u>", "").split("±")[0])

    # FedAvg collapses under the 4x sign flip; the robust rules keep most of their accuracy.
    assert accuracy(cells["fedavg"]["sign_flip"]) < 20
    for rule in ("median", "lasa", "fedra"):
        assert accuracy(cells[rule]["sign_flip"]) > 80


def kill_process(command_prefix: str) -> int | None:
    """SIGKILL the newest process whose command line starts with ``command_prefix`` (Linux /proc): an
    actor's process of an earlier test may still be exiting, and it would be the oldest."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: start time
        except (OSError, ValueError, IndexError):
            continue
        if command.startswith(command_prefix):
            found[int(entry.name)] = started
    if not found:
        return None
    newest = max(found, key=found.get)
    os.kill(newest, signal.SIGKILL)
    return newest


def test_a_trial_whose_server_actor_dies_is_retried_from_its_checkpoint(tmp_path, uninterrupted):
    """FailureConfig: the killed actor fails the trial (the run itself may not restart its actors here:
    run.actor_restarts = 0, an execution field, so the run id is the uninterrupted one); Tune restarts it, it
    continues from its checkpoint and ends with exactly the numbers of the uninterrupted sweep, each MLflow
    step logged once."""
    output_dir = tmp_path / "results"
    spec = write_grid(tmp_path / "grid.yaml", output_dir)
    raw = yaml.safe_load(spec.read_text())
    raw["base"].setdefault("run", {})["actor_restarts"] = 0
    spec.write_text(yaml.safe_dump({**raw, "grid": {"partition.beta": [0.3]}, "defenses": {"median": {}}}))
    sweep_dir = output_dir / "sweeps" / "grid"
    killed: list[int] = []

    def kill_server_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            dirs = run_dirs(sweep_dir) if (sweep_dir / "runs").is_dir() else {}
            if any(state(d)["round"] >= CHECKPOINT_EVERY for d in dirs.values()):
                pid = kill_process("ray::ServerWorker")
                if pid is not None:
                    killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_server_after_a_checkpoint, daemon=True)
    killer.start()
    result = runner.invoke(cli.app, ["sweep", str(spec)], terminal_width=200)
    killer.join()
    assert killed, "the server actor was never found"
    assert result.exit_code == 0, result.output
    assert "1/1 trials finished" in result.stdout

    (run_id, run_dir), = run_dirs(sweep_dir).items()
    assert (sweep_dir / "tune" / run_id / "error.txt").is_file()  # Tune saw the failure and retried
    reference = run_dirs(uninterrupted[0] / "sweeps" / "grid")[run_id]
    assert computed_metrics(run_dir) == computed_metrics(reference)
    client, _, (child,) = mlflow_runs(output_dir)
    assert child.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "round_seconds")]
    assert sorted(steps) == list(range(1, ROUNDS + 1))


def test_report_from_the_sweep_directory_and_from_the_mlflow_experiment(tmp_path, uninterrupted):
    output_dir = uninterrupted[0]
    sweep_dir = output_dir / "sweeps" / "grid"
    from_dir = runner.invoke(cli.app, ["report", str(sweep_dir), "--out", str(tmp_path / "a")], terminal_width=300)
    assert from_dir.exit_code == 0, from_dir.output
    assert f"table: {tmp_path / 'a' / 'table.md'}" in from_dir.stdout
    from_mlflow = runner.invoke(
        cli.app, ["report", "byzlab", "--output-dir", str(output_dir), "--out", str(tmp_path / "b")], terminal_width=300
    )
    assert from_mlflow.exit_code == 0, from_mlflow.output
    # The same runs, read from the run directories or from MLflow, give the same table.
    for name in ("table.md", "table.csv", "table.tex"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert {p.name for p in (tmp_path / "a").glob("*.png")} == {
        "accuracy_beta0.3.png", "accuracy_beta0.5.png", "heatmap_beta0.3.png", "heatmap_beta0.5.png"
    }
    missing = runner.invoke(cli.app, ["report", "no-such-experiment", "--output-dir", str(output_dir)])
    assert missing.exit_code == 2 and "no-such-experiment" in missing.stderr
    # Another metric than the sweep file's (acc_last5_mean): the best accuracy, as LASA's tables report it.
    best = runner.invoke(cli.app, ["report", str(sweep_dir), "--metric", "acc_best", "--out", str(tmp_path / "c")])
    assert best.exit_code == 0, best.output
    assert "of the best evaluation (acc_best)" in (tmp_path / "c" / "table.md").read_text()
    with (tmp_path / "c" / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["metric"] for r in rows} == {"acc_best"} and len(rows) == 4
    wrong = runner.invoke(cli.app, ["report", str(sweep_dir), "--metric", "accuracy"])
    assert wrong.exit_code == 2 and "--metric: 'accuracy' is not one of: acc_last5_mean, acc_best, acc_final, backdoor_asr" in wrong.stderr


def test_a_missing_dataset_stops_the_sweep_before_any_trial(tmp_path):
    spec = write_grid(tmp_path / "grid.yaml", tmp_path / "results")
    raw = yaml.safe_load(spec.read_text())
    raw["base"]["data"] = {"dataset": "mnist", "data_root": str(tmp_path / "no-data")}
    spec.write_text(yaml.safe_dump(raw))
    dry = runner.invoke(cli.app, ["sweep", str(spec), "--dry-run"], terminal_width=300)
    assert dry.exit_code == 0, dry.output  # the dry run loads no data
    result = runner.invoke(cli.app, ["sweep", str(spec)], terminal_width=300)
    assert result.exit_code == 2 and "MNIST not found" in result.stderr
    assert not (tmp_path / "results" / "sweeps").exists()


def test_launching_an_existing_sweep_again_points_to_report_or_force(uninterrupted, tmp_path):
    output_dir = uninterrupted[0]
    spec = write_grid(tmp_path / "grid.yaml", output_dir)
    result = runner.invoke(cli.app, ["sweep", str(spec)], terminal_width=400)
    assert result.exit_code == 2
    assert "(status: finished); its report: `byzlab report" in result.stderr and "--force" in result.stderr
