"""What a trial reserves on the cluster, and whether the cluster can ever give it.

A trial is a placement group: an empty head bundle for the trainable (it only drives the round loop), one
bundle per client actor and one for the server actor (none when it reserves no CPU and no GPU), each with
the config's CPUs and (fractional) GPUs.
Ray's placement-group capture puts the trial's actors into its own bundles, so concurrent trials never
take each other's CPUs or GPUs. A trial that no cluster node or the whole cluster can hold would wait
forever; it is reported before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.actors.resources import RunResources, check_fits, plan_resources
from byzlab.orchestrator.config import ExperimentConfig

_EPSILON = 1e-9


@dataclass(frozen=True)
class ClusterShape:
    cpus: float
    gpus: float
    nodes: list[dict[str, float]]  # each alive node's CPU / GPU capacity

    @classmethod
    def current(cls) -> ClusterShape:
        resources = ray.cluster_resources()
        nodes = [
            {"CPU": node["Resources"].get("CPU", 0.0), "GPU": node["Resources"].get("GPU", 0.0)}
            for node in ray.nodes()
            if node["Alive"]
        ]
        return cls(resources.get("CPU", 0.0), resources.get("GPU", 0.0), nodes)

    def describe(self) -> str:
        return f"{self.cpus:g} CPUs and {self.gpus:g} GPUs on {len(self.nodes)} node(s)"


def trial_bundles(resources: RunResources) -> list[dict[str, float]]:
    """The empty head bundle, one per client actor, and the server's unless it reserves nothing (Ray
    refuses a bundle whose resources are all zero; an actor that asks for none runs in the group anyway)."""
    client = {"CPU": resources.client.num_cpus, "GPU": resources.client.num_gpus}
    server = {"CPU": resources.server.num_cpus, "GPU": resources.server.num_gpus}
    return [{}] + [client] * resources.client_actors + ([server] if any(server.values()) else [])


def trial_resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
    """Tune's resource request for a trial, from the bundles the driver planned into its config."""
    return tune.PlacementGroupFactory(config["trial"]["bundles"])


def plan_trial(cfg: ExperimentConfig, cluster: ClusterShape) -> RunResources:
    """The trial's actors' resources; ConfigError when the cluster can never place them."""
    resources = plan_resources(cfg.run, cluster.gpus)
    check_fits(resources, cluster.cpus, cluster.gpus)
    bundles = trial_bundles(resources)[1:]
    for bundle in bundles:
        if not any(_fits(bundle, node) for node in cluster.nodes):
            raise ConfigError(
                f"one actor needs {bundle['CPU']:g} CPUs and {bundle['GPU']:g} GPUs ({resources.describe()}) "
                f"but no node of the Ray cluster ({cluster.describe()}) has that much; lower "
                "run.client_actor_cpus / run.server_cpus or the GPU shares"
            )
    if not _packs(bundles, cluster.nodes):
        raise ConfigError(
            f"the trial's actors ({resources.describe()}) do not fit together on the nodes of the Ray cluster "
            f"({cluster.describe()}); lower run.client_actors, run.client_actor_cpus / run.server_cpus or the GPU shares"
        )
    return resources


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(bundle[k] <= free[k] + _EPSILON for k in bundle)


def _packs(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """First-fit decreasing on an empty cluster: a sufficient check that the bundles can be placed at once
    (it can miss a packing that exists; then the message above asks for smaller actors)."""
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: (b["GPU"], b["CPU"]), reverse=True):
        node = next((n for n in free if _fits(bundle, n)), None)
        if node is None:
            return False
        for key in bundle:
            node[key] -= bundle[key]
    return True


def concurrent_trials(resources: RunResources, cluster: ClusterShape) -> int:
    """How many such trials the cluster's totals can hold at once (node boundaries can lower it)."""
    limits = [cluster.cpus / resources.total_cpus]
    if resources.total_gpus > 0:
        limits.append(cluster.gpus / resources.total_gpus)
    return int(min(limits) + _EPSILON)
