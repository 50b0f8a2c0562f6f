"""A run interrupted (Ctrl-C) at every point of its life resumes to bitwise the numbers of an uninterrupted
run, and MLflow holds exactly one FINISHED run for it: no orphan RUNNING run under any kill point."""

import pytest
import ray
from mlflow import MlflowClient

from byzlab.actors.pool import WorkerPool
from byzlab.orchestrator.config import build_config, run_id
from byzlab.orchestrator.run import experiment
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.orchestrator.run.tracking import tracking_uri

pytestmark = pytest.mark.usefixtures("ray_cluster")
TIMING = ("_seconds",)
SETTING = ["run.rounds=6", "run.checkpoint_every=2", "threat.fraction=0.2", "threat.attack=sign_flip"]


def _numbers(table):
    return {k: v for k, v in table.to_pydict().items() if not k.endswith(TIMING)}


def _interrupt_once(monkeypatch, owner, name, when=lambda *args, **kwargs: True):
    """Make ``owner.name`` raise KeyboardInterrupt the first time ``when`` holds for its arguments."""
    original = getattr(owner, name)
    fired = []

    def interrupted(*args, **kwargs):
        if not fired and when(*args, **kwargs):
            fired.append(True)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


KILL_POINTS = {
    # the MLflow run exists, run.json does not yet
    "after the MLflow run, before run.json": (RunDirectory, "create", lambda *a, **k: True),
    # round 3's rows are pending, the last checkpoint is round 2
    "mid-run, between checkpoints": (RunDirectory, "append_segment", lambda self, name, first, table: first == 5),
    # the segments of rounds 3-4 are written, their checkpoint is not
    "between a segment and its checkpoint": (RunDirectory, "save_checkpoint", lambda self, cp: cp["round"] == 4),
    # MLflow says FINISHED, the run directory does not yet
    "after MLflow finished, before run.json": (
        RunDirectory, "update_state", lambda self, **changes: changes.get("status") == "finished"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_every_kill_point_resumes_bitwise_with_one_mlflow_run(tmp_path, monkeypatch, point):
    reference = experiment.run_experiment(build_config({}, [f"run.output_dir={tmp_path / 'ref'}", *SETTING]))
    cfg = build_config({}, [f"run.output_dir={tmp_path / 'run'}", *SETTING])
    with monkeypatch.context() as patched:
        _interrupt_once(patched, *KILL_POINTS[point])
        with pytest.raises(KeyboardInterrupt):
            experiment.run_experiment(cfg)
    run_dir = RunDirectory(tmp_path / "run" / run_id(cfg))
    if run_dir.exists():
        result = experiment.resume_experiment(run_dir.path)
    else:
        result = experiment.run_experiment(cfg)
    assert _numbers(result.metrics) == _numbers(reference.metrics)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment_id = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.`byzlab.run_id` = '{run_id(cfg)}'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(client.get_metric_history(runs[0].info.run_id, "test_accuracy")) == 6  # each round once


def _killing(monkeypatch, kills: dict[int, str]):
    """An ``on_round`` that kills the round's server (or first client) actor after the rounds in ``kills``,
    once each, as a crashed worker or a lost node would; the actors' handles are caught as the run borrows
    them from its worker pool (after a death the pool starts new ones)."""
    launched = []
    original = WorkerPool.borrow

    def borrow(pool, *args, **kwargs):
        launched.append(original(pool, *args, **kwargs))
        return launched[-1]

    monkeypatch.setattr(WorkerPool, "borrow", borrow)

    def on_round(metrics):
        which = kills.pop(int(metrics["round"]), None)
        if which is not None:
            server, clients = launched[-1]
            ray.kill(server if which == "server" else clients[0], no_restart=True)

    return on_round, launched


@pytest.mark.slow
def test_a_run_survives_dying_actors_with_the_same_numbers(tmp_path, monkeypatch):
    reference = experiment.run_experiment(build_config({}, [f"run.output_dir={tmp_path / 'ref'}", *SETTING]))
    cfg = build_config({}, [f"run.output_dir={tmp_path / 'run'}", *SETTING])
    on_round, launched = _killing(monkeypatch, {3: "server", 5: "client"})
    result = experiment.execute(experiment.prepare(cfg), on_round=on_round)
    assert len(launched) == 3  # the first actors and two restarts
    assert _numbers(result.metrics) == _numbers(reference.metrics)


@pytest.mark.slow
def test_past_its_restarts_a_run_stops_resumable(tmp_path, monkeypatch):
    from byzlab.orchestrator.core.errors import RunAbortedError

    cfg = build_config({}, [f"run.output_dir={tmp_path}", *SETTING, "run.actor_restarts=0"])
    on_round, _ = _killing(monkeypatch, {3: "server"})
    with pytest.raises(RunAbortedError, match=r"a Ray actor died after 0 restarts \(run.actor_restarts\): .*; "
                                              r"continue with: byzlab run --resume"):
        experiment.execute(experiment.prepare(cfg), on_round=on_round)
    assert RunDirectory(tmp_path / run_id(cfg)).read_state()["status"] == "interrupted"


def test_the_quickstart_survives_a_dying_server_and_client_bit_for_bit(tmp_path, monkeypatch):
    """The default run's sample of the kill tests: the stored quickstart tables (test_behaviour_unchanged),
    reproduced by a run whose server actor dies after round 7 and a client actor after round 12."""
    from test_behaviour_unchanged import differences_from_every_set

    cfg = build_config({}, [f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    on_round, launched = _killing(monkeypatch, {7: "server", 12: "client"})
    result = experiment.execute(experiment.prepare(cfg), on_round=on_round)
    timing = [c for c in result.metrics.column_names if c.endswith("_seconds")]
    assert len(launched) == 3
    assert differences_from_every_set("quickstart", {"metrics": result.metrics.drop_columns(timing)}) is None
