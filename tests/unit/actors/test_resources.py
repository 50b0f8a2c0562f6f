"""What a run reserves and on how many torch threads its actors compute (actors/resources.py), and what Ray
2.60 accepts of the default placement's server, which reserves nothing."""

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from byzlab.actors import resources
from byzlab.actors.resources import check_fits, check_fits_this_machine, plan_resources
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.errors import ConfigError


def _run(*overrides):
    return build_config({}, list(overrides)).run


def test_the_default_placement_trains_on_every_cpu_it_reserves_one_thread_per_actor():
    planned = plan_resources(_run(), cluster_gpus=0)
    assert (planned.client_actors, planned.client.num_cpus, planned.server.num_cpus) == (2, 1.0, 0.0)
    assert planned.total_cpus == 2.0 and planned.total_gpus == 0.0
    # the client actors' threads add up to the CPUs the run reserves; the server, which works while they
    # wait, computes on the same CPUs
    assert planned.client_actors * planned.client.num_threads == planned.total_cpus
    assert planned.server_threads == 2


def test_a_server_without_cpus_of_its_own_computes_on_the_whole_cpus_of_the_client_actors():
    assert plan_resources(_run("run.client_actors=3", "run.client_actor_cpus=1.5"), 0).server_threads == 4
    assert plan_resources(_run("run.client_actors=1", "run.client_actor_cpus=0.5"), 0).server_threads == 1
    # a server with CPUs of its own computes on those, whatever the client actors reserve
    assert plan_resources(_run("run.client_actor_cpus=4", "run.server_cpus=0.5"), 0).server_threads == 1


def test_the_default_placement_on_a_gpu_shares_it_among_the_three_actors():
    planned = plan_resources(_run(), cluster_gpus=1)
    assert planned.client.num_gpus == planned.server.num_gpus == 0.3333  # floor(1e4 / 3) / 1e4
    assert planned.server.num_cpus == 0.0  # its bundle still holds its GPU share
    assert planned.total_cpus == 2.0


def test_the_default_never_asks_for_more_client_actors_than_clients():
    assert _run("clients.num_clients=1").client_actors == 1
    assert plan_resources(_run("clients.num_clients=1"), 0).total_cpus == 1.0
    assert _run("clients.num_clients=3").client_actors == 2
    with pytest.raises(ConfigError, match=r"run.client_actors \(2\) must be at most clients.num_clients \(1\)"):
        _run("clients.num_clients=1", "run.client_actors=2")  # an explicit count is never lowered


def test_explicit_cpus_are_reserved_and_become_threads():
    planned = plan_resources(_run("run.client_actors=3", "run.client_actor_cpus=2.5", "run.server_cpus=3"), 0)
    assert planned.total_cpus == 10.5
    assert (planned.client.num_threads, planned.server_threads) == (2, 3)
    old = plan_resources(_run("run.client_actors=1", "run.client_actor_cpus=1", "run.server_cpus=1"), 0)
    assert old.describe() == "1 client actor(s) x (1 CPU, 0 GPU) + server (1 CPU, 0 GPU)"
    assert (old.client.num_threads, old.server_threads) == (1, 1)


def test_a_negative_server_share_is_refused():
    with pytest.raises(ConfigError, match=r"^run.server_cpus: Input should be greater than or equal to 0 \(got -1\)$"):
        _run("run.server_cpus=-1")


def test_check_fits_names_the_default_placement():
    planned = plan_resources(_run(), 0)
    check_fits(planned, cluster_cpus=2, cluster_gpus=0)
    with pytest.raises(ConfigError) as info:
        check_fits(planned, cluster_cpus=1, cluster_gpus=0)
    assert str(info.value) == (
        "the run needs 2 CPUs and 0 GPUs (2 client actor(s) x (1 CPU, 0 GPU) + server (0 CPU, 0 GPU)) but the "
        "Ray cluster has 1 CPUs and 0 GPUs; lower run.client_actors, run.client_actor_cpus / run.server_cpus "
        "or the GPU shares"
    )


def test_check_fits_this_machine_counts_the_default_placement(monkeypatch):
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)
    check_fits_this_machine(_run())
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 1)
    with pytest.raises(ConfigError) as info:
        check_fits_this_machine(_run())
    assert str(info.value) == (
        "the run reserves 2 CPUs (run.client_actors 2 x run.client_actor_cpus 1 + run.server_cpus 0) but this "
        "machine has 1; lower them, or join a larger cluster with --address"
    )
    check_fits_this_machine(_run("run.client_actors=1"))  # one 1-CPU client actor and the server fit


# --- what Ray 2.60 accepts of a server that reserves nothing (the session's cluster has 2 CPUs) -------------


def _probe_class():
    """An actor that says whether it runs in a placement group (defined here: Ray ships it by value)."""

    class Probe:
        def in_placement_group(self) -> bool:
            return ray.util.get_current_placement_group() is not None

    return ray.remote(Probe)


@pytest.mark.usefixtures("ray_cluster")
def test_ray_starts_the_server_while_the_client_actors_hold_every_cpu():
    probe = _probe_class()
    clients = [probe.options(num_cpus=1).remote() for _ in range(2)]
    server = probe.options(num_cpus=0, num_gpus=0).remote()
    try:
        assert ray.get([a.in_placement_group.remote() for a in [*clients, server]], timeout=60) == [False] * 3
    finally:
        for actor in [*clients, server]:
            ray.kill(actor)


@pytest.mark.usefixtures("ray_cluster")
def test_a_trial_places_the_server_in_its_group_without_a_bundle_of_its_own():
    with pytest.raises(ValueError, match="only 0 values"):  # a bundle of zeros is refused
        placement_group([{"CPU": 1.0}, {"CPU": 0.0, "GPU": 0.0}])
    group = placement_group([{"CPU": 1.0}, {"CPU": 1.0}])  # the client actors' bundles: every CPU
    probe = _probe_class()

    @ray.remote(num_cpus=0)
    def trial() -> list[bool]:
        """As a Tune trainable does: the group captures the actors it starts."""
        actors = [probe.options(num_cpus=1).remote() for _ in range(2)]
        actors.append(probe.options(num_cpus=0, num_gpus=0).remote())
        return ray.get([a.in_placement_group.remote() for a in actors])

    try:
        ray.get(group.ready(), timeout=60)
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        assert ray.get(trial.options(scheduling_strategy=strategy).remote(), timeout=60) == [True] * 3
    finally:
        remove_placement_group(group)
