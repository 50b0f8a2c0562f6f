"""End-to-end runs on Ray (one shared local instance, 2 CPUs)."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from byzlab.actors.pool import WorkerPool
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.data.datasets import DEBIAN_FASHION_MNIST_DIR
from byzlab.orchestrator.run.experiment import execute, prepare, resume_experiment, run_experiment
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.orchestrator.run.tracking import default_tracking_uri

pytestmark = pytest.mark.usefixtures("ray_cluster")

TIMING = ("_seconds",)  # wall-clock columns differ between identical runs


def _cfg(output_dir, *overrides):
    return build_config({}, [f"run.output_dir={output_dir}", *overrides])


def _numbers(table):
    """The deterministic part of a metrics table: everything but timings."""
    return {k: v for k, v in table.to_pydict().items() if not k.endswith(TIMING)}


def test_quickstart_fedavg_on_digits(tmp_path):
    result = run_experiment(_cfg(tmp_path))
    assert result.status == "finished"
    assert result.metrics.column("test_accuracy").to_pylist()[-1] >= 0.85
    assert result.metrics.num_rows == 20

    run_dir = RunDirectory(result.run_dir)
    clients = run_dir.read_table("clients").to_pandas()
    partition = pq.read_table(run_dir.partition_path).to_pandas()
    assert len(clients) == 20 * 10
    assert not clients["malicious"].any()
    assert np.allclose(clients.groupby("round")["weight"].sum(), 1.0)
    claimed = clients[clients["round"] == 1].set_index("client")["num_samples"]
    assert (claimed == partition.set_index("client")["num_samples"]).all()
    assert partition["num_samples"].sum() == 1347  # every training sample is held by one client
    assert run_dir.read_state()["status"] == "finished"

    client = MlflowClient(default_tracking_uri(tmp_path))
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["partition.beta"] == "0.5"
    assert run.data.params["server.aggregator"] == "fedavg"
    assert run.data.tags["byzlab.run_id"] == result.run_id
    assert run.data.metrics["acc_last5_mean"] == pytest.approx(result.summary["acc_last5_mean"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")]
    assert steps == list(range(1, 21))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.parquet", "clients.parquet", "partition.parquet"} <= artifacts

    again = run_experiment(_cfg(tmp_path))  # the identical experiment is not run twice
    assert again.status == "already finished"
    assert again.summary == result.summary


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    """The second and third runs borrow the first one's actors, as a sweep's trials do (and start faster)."""
    common = ["run.rounds=4", "tracking.enabled=false"]
    pool = WorkerPool()
    try:
        first, second, other = (
            execute(prepare(_cfg(tmp_path / name, *common, *seed)), workers=pool)
            for name, seed in (("a", []), ("b", []), ("c", ["run.seed=1"]))
        )
    finally:
        pool.discard()
    assert _numbers(first.metrics) == _numbers(second.metrics)
    assert _numbers(first.metrics)["test_accuracy"] != _numbers(other.metrics)["test_accuracy"]


class _Stop(Exception):
    pass


def _stop_after(round_index):
    def on_round(metrics):
        if metrics["round"] == round_index:
            raise _Stop

    return on_round


def test_resume_equals_an_uninterrupted_run(tmp_path):
    common = ["run.rounds=4", "run.checkpoint_every=2", "clients.clients_per_round=6", "server.momentum=0.5"]
    straight = run_experiment(_cfg(tmp_path / "straight", *common))

    cfg = _cfg(tmp_path / "resumed", *common)
    with pytest.raises(_Stop):  # interrupted after round 3 was logged; the checkpoint holds round 2
        run_experiment(cfg, on_round=_stop_after(3))
    run_dir = RunDirectory(tmp_path / "resumed" / straight.run_id)
    assert run_dir.read_state()["status"] == "interrupted"
    assert run_dir.load_checkpoint()["round"] == 2
    # rounds 1-2 were appended at the checkpoint, round 3 when the run was interrupted; nothing joined yet
    assert sorted(p.name for p in run_dir.segments_path.iterdir()) == [
        "clients-0000001.parquet", "clients-0000003.parquet", "metrics-0000001.parquet", "metrics-0000003.parquet"]
    assert not run_dir.metrics_path.exists()
    assert run_dir.read_table("metrics")["round"].to_pylist() == [1, 2, 3]
    with pytest.raises(ConfigError, match="--resume"):  # a plain rerun refuses to clobber it
        prepare(cfg)

    resumed = resume_experiment(run_dir.path)
    assert _numbers(resumed.metrics) == _numbers(straight.metrics)
    assert not run_dir.segments_path.exists() and run_dir.metrics_path.is_file()
    expected, actual = (RunDirectory(r.run_dir).load_checkpoint()["server"] for r in (straight, resumed))
    assert torch.equal(expected["global_params"], actual["global_params"])
    assert torch.equal(expected["optimizer"]["velocity"], actual["optimizer"]["velocity"])

    client = MlflowClient(default_tracking_uri(tmp_path / "resumed"))
    runs = client.search_runs([client.get_experiment_by_name("byzlab").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == resumed.mlflow_run_id
    assert runs[0].info.status == "FINISHED"
    for key in ("test_accuracy", "round_seconds"):
        assert sorted(m.step for m in client.get_metric_history(resumed.mlflow_run_id, key)) == [1, 2, 3, 4]


def test_fedadam_with_a_decaying_local_lr_resumes_bitwise(tmp_path):
    """The adaptive optimizer's moments are checkpointed and the lr schedule is keyed by round: a resumed
    run equals the uninterrupted one; round 1 trains with the undecayed lr, so it matches a run without decay."""
    common = ["run.rounds=3", "run.checkpoint_every=1", "server.optimizer=fedadam", "server.lr=0.01",
              "tracking.enabled=false"]
    straight = run_experiment(_cfg(tmp_path / "straight", *common, "clients.lr_decay=0.5"))
    cfg = _cfg(tmp_path / "resumed", *common, "clients.lr_decay=0.5")
    with pytest.raises(_Stop):
        run_experiment(cfg, on_round=_stop_after(2))
    resumed = resume_experiment(RunDirectory(tmp_path / "resumed" / straight.run_id).path)
    assert _numbers(resumed.metrics) == _numbers(straight.metrics)
    expected, actual = (RunDirectory(r.run_dir).load_checkpoint()["server"]["optimizer"] for r in (straight, resumed))
    assert torch.equal(expected["first"], actual["first"]) and torch.equal(expected["second"], actual["second"])

    undecayed = run_experiment(_cfg(tmp_path / "undecayed", *common))
    rounds = [_numbers(r.metrics)["test_accuracy"] for r in (straight, undecayed)]
    losses = [_numbers(r.metrics)["train_loss"] for r in (straight, undecayed)]
    assert rounds[0][0] == rounds[1][0] and losses[0][0] == losses[1][0]
    assert losses[0][1:] != losses[1][1:]


def test_problems_found_before_the_run_leave_no_directory(tmp_path):
    with pytest.raises(ConfigError, match="partition: .*min_samples"):
        prepare(_cfg(tmp_path, "partition.min_samples=500"))
    too_big = prepare(_cfg(tmp_path, "run.server_cpus=1"))  # 2 x 1 CPU + 1 CPU server > 2 CPUs
    with pytest.raises(ConfigError, match="needs 3 CPUs .* has 2 CPUs"):
        execute(too_big)
    assert not any(tmp_path.iterdir())


def test_two_client_actors_both_work_and_change_no_number(tmp_path):
    common = ["run.rounds=3", "tracking.enabled=false"]
    one = run_experiment(_cfg(tmp_path / "one", *common, "run.client_actors=1"))
    two = run_experiment(_cfg(tmp_path / "two", *common, "run.client_actors=2", "run.client_actor_cpus=0.5"))
    columns = two.metrics.to_pydict()
    for actor in (0, 1):
        assert all(s > 0 for s in columns[f"actor{actor}_train_seconds"])
        assert columns[f"actor{actor}_clients"] == [5.0, 5.0, 5.0]
    assert "actor1_train_seconds" not in one.metrics.column_names
    def model_numbers(result):
        return {k: v for k, v in _numbers(result.metrics).items() if not k.startswith("actor")}

    assert model_numbers(one) == model_numbers(two)  # randomness is keyed by client, not by actor


def test_nonfinite_updates_are_never_applied(tmp_path):
    # A learning rate this large makes local training overflow to inf/NaN.
    result = run_experiment(_cfg(tmp_path, "run.rounds=2", "clients.lr=1e30", "tracking.enabled=false"))
    columns = result.metrics.to_pydict()
    assert columns["nonfinite_updates"][0] > 0
    assert columns["update_applied"] == [0.0, 0.0]
    assert all(np.isfinite(columns["test_loss"]))
    initial = run_experiment(_cfg(tmp_path / "zero", "run.rounds=1", "clients.lr=1e-30", "tracking.enabled=false"))
    assert columns["test_accuracy"][-1] == pytest.approx(initial.metrics.column("test_accuracy")[0].as_py(), abs=0.01)


@pytest.mark.slow  # 55 s; Fashion-MNIST with the CNN stays in the default suite via e2e/test_behaviour_unchanged.py
def test_fashion_mnist_cnn_three_rounds(tmp_path):
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist package (.ci/run installs it)")
    # 50 local steps of 32 images per client and round keep this under a minute on 2 cores.
    cfg = _cfg(tmp_path, "data.dataset=fashion-mnist", "partition.scheme=iid", "run.rounds=3",
               "clients.local_steps=50", "clients.lr=0.02", "tracking.enabled=false",
               "run.client_actors=2", "run.client_actor_cpus=0.75", "run.server_cpus=0.5")
    assert cfg.model.name == "cnn"
    result = run_experiment(cfg)
    assert result.metrics.column("test_accuracy").to_pylist()[-1] >= 0.75
