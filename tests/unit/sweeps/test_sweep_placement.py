"""sweeps.placement (a trial's bundles, whether a cluster can hold it, how many run at once) and
sweeps.trainable.restore_run_dir (run directory vs Tune checkpoint). No Ray cluster: ClusterShape is built
by hand, and PlacementGroupFactory / Checkpoint are plain objects that need no ray.init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ray import tune

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.actors.resources import plan_resources
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.sweeps.placement import ClusterShape, concurrent_trials, plan_trial, trial_bundles, trial_resources
from byzlab.sweeps.trainable import CHECKPOINT_RUN_DIR, restore_run_dir


def _cfg(**run):
    """A run config with the placement spelled out (one client actor, a 1-CPU server) unless ``run`` says
    otherwise, so these bundles do not follow the defaults."""
    return build_config({"run": {"client_actors": 1, "server_cpus": 1.0, **run}})


def _nodes(*cpus_gpus: tuple[float, float]) -> list[dict[str, float]]:
    return [{"CPU": c, "GPU": g} for c, g in cpus_gpus]


# --- bundles ------------------------------------------------------------------------------------------


def test_bundles_cpu_cluster():
    resources = plan_resources(_cfg(client_actors=3, client_actor_cpus=0.5, server_cpus=2).run, 0)
    assert trial_bundles(resources) == [
        {},
        {"CPU": 0.5, "GPU": 0.0},
        {"CPU": 0.5, "GPU": 0.0},
        {"CPU": 0.5, "GPU": 0.0},
        {"CPU": 2.0, "GPU": 0.0},
    ]


def test_a_server_that_reserves_nothing_has_no_bundle():
    # Ray refuses an all-zero bundle; the server actor (0 CPUs, 0 GPUs) runs in the group without one.
    resources = plan_resources(_cfg(client_actors=2, server_cpus=0).run, 0)
    assert trial_bundles(resources) == [{}, {"CPU": 1.0, "GPU": 0.0}, {"CPU": 1.0, "GPU": 0.0}]
    assert trial_resources({"trial": {"bundles": trial_bundles(resources)}}).required_resources == {"CPU": 2.0}
    # with a GPU share it keeps its bundle (0 CPUs, a third of the GPU)
    assert trial_bundles(plan_resources(_cfg(client_actors=2, server_cpus=0).run, 1.0))[-1] == {"CPU": 0.0, "GPU": 0.3333}


def test_bundles_share_one_gpu_in_steps_of_1e4():
    # 2 client actors + server = 3 actors on one GPU: floor(1e4 / 3) / 1e4 = 0.3333 each.
    resources = plan_resources(_cfg(client_actors=2).run, 1.0)
    assert trial_bundles(resources) == [
        {}, {"CPU": 1.0, "GPU": 0.3333}, {"CPU": 1.0, "GPU": 0.3333}, {"CPU": 1.0, "GPU": 0.3333},
    ]
    assert resources.total_gpus == pytest.approx(0.9999)
    # 6 actors: floor(1e4 / 7) / 1e4 = 1428 / 1e4
    assert plan_resources(_cfg(client_actors=6).run, 1.0).client.num_gpus == 0.1428


def test_bundles_explicit_gpu_shares_and_cpu_device():
    resources = plan_resources(_cfg(client_actor_gpus=0.25, server_gpus=0.5).run, 2.0)
    assert trial_bundles(resources) == [{}, {"CPU": 1.0, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.5}]
    # device cpu: no GPU share even on a GPU cluster
    assert trial_bundles(plan_resources(_cfg(device="cpu").run, 4.0)) == [
        {}, {"CPU": 1.0, "GPU": 0.0}, {"CPU": 1.0, "GPU": 0.0},
    ]


def test_trial_resources_is_a_placement_group_factory():
    bundles = trial_bundles(plan_resources(_cfg(client_actors=2).run, 1.0))
    config = {"trial": {"bundles": bundles}}
    pgf = trial_resources(config)
    assert isinstance(pgf, tune.PlacementGroupFactory)
    assert pgf.head_bundle_is_empty
    # Ray 2.x keeps the empty head out of `bundles`: the actors' bundles, in order.
    assert pgf.bundles == [{"CPU": 1.0, "GPU": 0.3333}] * 3
    assert pgf.head_cpus == 0.0
    assert pgf.required_resources == pytest.approx({"CPU": 3.0, "GPU": 0.9999})
    # the config's list is not consumed: a second call gives the same request
    assert config["trial"]["bundles"] == bundles
    assert trial_resources(config) == pgf


def test_trial_resources_drops_zero_gpus():
    pgf = trial_resources({"trial": {"bundles": trial_bundles(plan_resources(_cfg(server_cpus=2).run, 0))}})
    assert pgf.head_bundle_is_empty
    assert pgf.bundles == [{"CPU": 1.0}, {"CPU": 2.0}]
    assert pgf.required_resources == {"CPU": 3.0}


# --- plan_trial ---------------------------------------------------------------------------------------


def test_plan_trial_fits():
    cluster = ClusterShape(4, 0, _nodes((4, 0)))
    resources = plan_trial(_cfg(client_actors=2, client_actor_cpus=1.5), cluster)
    assert resources.client.num_cpus == 1.5 and resources.client_actors == 2
    assert resources.server.num_cpus == 1.0
    assert resources.total_cpus == 4.0 and resources.total_gpus == 0.0


def test_plan_trial_fits_with_gpus():
    cluster = ClusterShape(8, 1, _nodes((8, 1)))
    resources = plan_trial(_cfg(client_actors=2), cluster)
    assert resources.client.num_gpus == 0.3333 and resources.server.num_gpus == 0.3333


def test_plan_trial_too_many_cpus_in_total():
    cluster = ClusterShape(3, 0, _nodes((2, 0), (1, 0)))
    with pytest.raises(ConfigError) as info:
        plan_trial(_cfg(client_actors=2, client_actor_cpus=1.5), cluster)  # 2 x 1.5 + 1 = 4 CPUs
    assert str(info.value) == (
        "the run needs 4 CPUs and 0 GPUs (2 client actor(s) x (1.5 CPU, 0 GPU) + server (1 CPU, 0 GPU)) "
        "but the Ray cluster has 3 CPUs and 0 GPUs; lower run.client_actors, "
        "run.client_actor_cpus / run.server_cpus or the GPU shares"
    )


def test_plan_trial_too_many_gpus_in_total():
    cluster = ClusterShape(8, 1, _nodes((8, 1)))
    with pytest.raises(ConfigError, match=r"needs 2 CPUs and 1\.5 GPUs .* has 8 CPUs and 1 GPUs"):
        plan_trial(_cfg(client_actor_gpus=1, server_gpus=0.5), cluster)


def test_plan_trial_no_node_can_hold_an_actor():
    # 4 CPUs in total (enough for 3 + 1) but each node has only 2.
    cluster = ClusterShape(4, 0, _nodes((2, 0), (2, 0)))
    with pytest.raises(ConfigError) as info:
        plan_trial(_cfg(client_actor_cpus=3), cluster)
    message = str(info.value)
    assert message.startswith("one actor needs 3 CPUs and 0 GPUs (")
    assert "no node of the Ray cluster (4 CPUs and 0 GPUs on 2 node(s)) has that much" in message
    assert "run.client_actor_cpus / run.server_cpus" in message


def test_plan_trial_no_node_has_the_gpu_share():
    # 2 GPUs in total but one per node; the client actor asks for 1.5.
    cluster = ClusterShape(8, 2, _nodes((4, 1), (4, 1)))
    with pytest.raises(ConfigError, match=r"^one actor needs 1 CPUs and 1\.5 GPUs"):
        plan_trial(_cfg(client_actor_gpus=1.5, server_gpus=0.5), cluster)


def test_plan_trial_server_too_big_for_any_node():
    cluster = ClusterShape(6, 0, _nodes((3, 0), (3, 0)))
    with pytest.raises(ConfigError, match=r"^one actor needs 4 CPUs and 0 GPUs"):
        plan_trial(_cfg(server_cpus=4), cluster)


def test_plan_trial_cuda_without_gpus():
    with pytest.raises(ConfigError, match="run.device is 'cuda' but the Ray cluster has no GPU"):
        plan_trial(_cfg(device="cuda"), ClusterShape(16, 0, _nodes((16, 0))))


def test_plan_trial_auto_without_gpus_falls_back_to_cpu():
    resources = plan_trial(_cfg(device="auto"), ClusterShape(2, 0, _nodes((2, 0))))
    assert resources.total_gpus == 0.0


def test_plan_trial_bundles_that_cannot_be_packed():
    cluster = ClusterShape(4, 0, _nodes((2, 0), (2, 0)))
    with pytest.raises(ConfigError, match="do not fit together on the nodes"):
        plan_trial(_cfg(client_actors=2, client_actor_cpus=1.5), cluster)


# --- concurrent_trials --------------------------------------------------------------------------------


def test_concurrent_trials_cpu_bound():
    one_cpu = plan_resources(_cfg(client_actor_cpus=0.5, server_cpus=0.5).run, 0)  # 1 CPU per trial
    assert concurrent_trials(one_cpu, ClusterShape(2, 0, _nodes((2, 0)))) == 2
    two_cpu = plan_resources(_cfg().run, 0)  # 2 CPUs per trial
    assert concurrent_trials(two_cpu, ClusterShape(5, 0, _nodes((5, 0)))) == 2  # floor(2.5)
    assert concurrent_trials(two_cpu, ClusterShape(1, 0, _nodes((1, 0)))) == 0


def test_concurrent_trials_float_sums_are_not_rounded_down():
    # 0.1 + 0.2 = 0.30000000000000004 in floating point, and 3 / that = 9.999999999999998: still 10 trials.
    resources = plan_resources(_cfg(client_actor_cpus=0.1, server_cpus=0.2).run, 0)
    assert resources.total_cpus > 0.3
    assert concurrent_trials(resources, ClusterShape(3, 0, _nodes((3, 0)))) == 10


def test_concurrent_trials_gpu_bound():
    # 0.25 + 0.25 = 0.5 GPU and 2 CPUs per trial on 16 CPUs and 1 GPU: CPUs allow 8, the GPU 2.
    resources = plan_resources(_cfg(client_actor_gpus=0.25, server_gpus=0.25).run, 1)
    assert concurrent_trials(resources, ClusterShape(16, 1, _nodes((16, 1)))) == 2
    # default share with 2 client actors: 3 x 0.3333 = 0.9999 GPU per trial; 2 GPUs -> 2 (2.0002), CPUs 16/3 -> 5
    shared = plan_resources(_cfg(client_actors=2).run, 2)
    assert concurrent_trials(shared, ClusterShape(16, 2, _nodes((8, 1), (8, 1)))) == 2
    # and the CPU bound wins when it is lower: 4 CPUs / 3 -> 1
    assert concurrent_trials(shared, ClusterShape(4, 2, _nodes((4, 2)))) == 1


# --- restore_run_dir ----------------------------------------------------------------------------------


def _write_run(path: Path, round_: int, status: str = "running") -> RunDirectory:
    run_dir = RunDirectory(path)
    run_dir.create({"run": {"rounds": 10, "seed": 0}}, {"status": status, "round": round_, "mlflow_run_id": "m"})
    run_dir.save_checkpoint({"round": round_, "server": {"global_params": torch.full((4,), float(round_))}})
    return run_dir


def _checkpoint(tmp_path: Path, round_: int, status: str = "running") -> tuple[tune.Checkpoint, Path]:
    directory = tmp_path / f"tune_ckpt_{round_}_{status}"
    _write_run(directory / CHECKPOINT_RUN_DIR, round_, status)
    return tune.Checkpoint.from_directory(str(directory)), directory / CHECKPOINT_RUN_DIR


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _siblings(run_dir: RunDirectory) -> list[str]:
    return sorted(p.name for p in run_dir.path.parent.iterdir() if p.name != run_dir.path.name)


def test_checkpoint_as_directory_holds_the_run_directory_copy(tmp_path):
    checkpoint, saved = _checkpoint(tmp_path, 3)
    with checkpoint.as_directory() as directory:
        assert (Path(directory) / CHECKPOINT_RUN_DIR / "run.json").is_file()


def test_restore_without_checkpoint_changes_nothing(tmp_path):
    missing = RunDirectory(tmp_path / "runs" / "abc")
    restore_run_dir(None, missing)
    assert not missing.path.exists()
    present = _write_run(tmp_path / "runs2" / "abc", 4)
    before = _snapshot(present.path)
    restore_run_dir(None, present)
    assert _snapshot(present.path) == before


def test_restore_creates_the_missing_run_directory(tmp_path):
    checkpoint, saved = _checkpoint(tmp_path, 3)
    run_dir = RunDirectory(tmp_path / "runs" / "abc")
    run_dir.path.parent.mkdir()
    restore_run_dir(checkpoint, run_dir)
    assert run_dir.exists()
    assert _snapshot(run_dir.path) == _snapshot(saved)
    assert set(_snapshot(run_dir.path)) == {"config.yaml", "run.json", "checkpoints/latest.pt"}
    assert run_dir.read_state()["round"] == 3
    assert run_dir.load_checkpoint()["round"] == 3
    assert torch.equal(run_dir.load_checkpoint()["server"]["global_params"], torch.full((4,), 3.0))
    assert _siblings(run_dir) == []
    assert (saved / "run.json").is_file(), "the checkpoint's own copy stays"


def test_restore_keeps_a_run_directory_that_is_further_along(tmp_path):
    checkpoint, _ = _checkpoint(tmp_path, 3)
    run_dir = _write_run(tmp_path / "runs" / "abc", 6)
    (run_dir.path / "metrics.parquet").write_bytes(b"rounds 1-6")
    before = _snapshot(run_dir.path)
    restore_run_dir(checkpoint, run_dir)
    assert _snapshot(run_dir.path) == before
    assert run_dir.read_state()["round"] == 6
    assert _siblings(run_dir) == []


def test_restore_keeps_a_run_directory_at_the_same_round(tmp_path):
    checkpoint, _ = _checkpoint(tmp_path, 5)
    run_dir = _write_run(tmp_path / "runs" / "abc", 5)
    (run_dir.path / "local-only").write_text("kept")
    restore_run_dir(checkpoint, run_dir)
    assert (run_dir.path / "local-only").read_text() == "kept"


def test_restore_replaces_a_run_directory_that_is_behind(tmp_path):
    checkpoint, saved = _checkpoint(tmp_path, 6)
    run_dir = _write_run(tmp_path / "runs" / "abc", 3)
    (run_dir.path / "stale-file").write_text("from round 3")
    restore_run_dir(checkpoint, run_dir)
    assert _snapshot(run_dir.path) == _snapshot(saved)
    assert not (run_dir.path / "stale-file").exists()
    assert run_dir.read_state()["round"] == 6
    assert run_dir.load_checkpoint()["round"] == 6
    assert _siblings(run_dir) == []  # no .abc.restoring / .abc.replaced left


def test_restore_clears_a_stale_restoring_copy(tmp_path):
    checkpoint, saved = _checkpoint(tmp_path, 6)
    run_dir = _write_run(tmp_path / "runs" / "abc", 3)
    stale = run_dir.path.with_name(".abc.restoring")
    stale.mkdir()
    (stale / "junk").write_text("from an interrupted restore")
    restore_run_dir(checkpoint, run_dir)
    assert _snapshot(run_dir.path) == _snapshot(saved)
    assert _siblings(run_dir) == []


def test_restore_replaces_a_directory_without_run_json(tmp_path):
    checkpoint, saved = _checkpoint(tmp_path, 2)
    run_dir = RunDirectory(tmp_path / "runs" / "abc")
    run_dir.checkpoint_path.parent.mkdir(parents=True)
    (run_dir.path / "partial").write_text("a run killed before its first run.json")
    restore_run_dir(checkpoint, run_dir)
    assert _snapshot(run_dir.path) == _snapshot(saved)
    assert _siblings(run_dir) == []


def test_restore_never_replaces_a_finished_run(tmp_path):
    checkpoint, _ = _checkpoint(tmp_path, 9)
    run_dir = _write_run(tmp_path / "runs" / "abc", 4, status="finished")
    before = _snapshot(run_dir.path)
    restore_run_dir(checkpoint, run_dir)
    assert _snapshot(run_dir.path) == before
    assert run_dir.read_state()["status"] == "finished"
    # not even by a finished checkpoint
    finished_checkpoint, _ = _checkpoint(tmp_path, 10, status="finished")
    restore_run_dir(finished_checkpoint, run_dir)
    assert _snapshot(run_dir.path) == before


def test_restore_takes_a_finished_checkpoint_over_a_running_directory(tmp_path):
    checkpoint, saved = _checkpoint(tmp_path, 2, status="finished")
    run_dir = _write_run(tmp_path / "runs" / "abc", 8)
    restore_run_dir(checkpoint, run_dir)
    assert _snapshot(run_dir.path) == _snapshot(saved)
    assert run_dir.read_state()["status"] == "finished"
