"""What a run reserves on the Ray cluster: one bundle per client actor and one for the server
(docs/architecture.md, "Placement and threads").

An actor computes on as many torch threads as the whole CPUs it reserves, at least one. A kernel's
floating-point rounding follows its thread count (a reduction split over two threads sums in another
order), while the number of actors changes no number (every client trains from generators keyed by seed,
round and client). So the default placement gets its parallelism from actors, not threads: two 1-CPU
client actors train clients side by side, and the server, which works only while they wait for the next
round (aggregation, evaluation), reserves no CPU of its own and computes on theirs, one torch thread per
whole CPU the client actors reserve (:attr:`RunResources.server_threads`). Ray 2.60 schedules an
actor that asks for no resources even when every CPU is taken, and inside a placement group; it refuses a
placement-group bundle whose resources are all zero.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import ray
import torch

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.config import RunConfig


@dataclass(frozen=True)
class ActorResources:
    num_cpus: float
    num_gpus: float

    @property
    def num_threads(self) -> int:
        """Torch threads for the actor: its whole reserved CPUs, at least one."""
        return max(1, math.floor(self.num_cpus))


@dataclass(frozen=True)
class RunResources:
    client: ActorResources
    client_actors: int
    server: ActorResources

    @property
    def total_cpus(self) -> float:
        return self.client_actors * self.client.num_cpus + self.server.num_cpus

    @property
    def server_threads(self) -> int:
        """The server's torch threads. A server that reserves no CPU works only while the client actors wait
        for the next round, so it computes on the CPUs they reserve: one thread per whole CPU of theirs
        (two on the default placement), which the evaluation and the rule use. Like every thread count, it
        follows from the config alone, so a config computes the same numbers on any machine."""
        if self.server.num_cpus > 0:
            return self.server.num_threads
        return max(1, math.floor(self.client_actors * self.client.num_cpus))

    @property
    def total_gpus(self) -> float:
        return self.client_actors * self.client.num_gpus + self.server.num_gpus

    def describe(self) -> str:
        return (
            f"{self.client_actors} client actor(s) x ({self.client.num_cpus:g} CPU, {self.client.num_gpus:g} GPU) "
            f"+ server ({self.server.num_cpus:g} CPU, {self.server.num_gpus:g} GPU)"
        )


def plan_resources(run: RunConfig, cluster_gpus: float) -> RunResources:
    """Resolve unset GPU shares: none on CPU runs; otherwise all actors share one GPU equally.

    ``device: cuda`` on a cluster without GPUs is an error; ``auto`` falls back to the CPU.
    """
    use_gpu = run.device == "cuda" or (run.device == "auto" and cluster_gpus > 0)
    if run.device == "cuda" and cluster_gpus == 0:
        raise ConfigError("run.device is 'cuda' but the Ray cluster has no GPU; use 'auto' or 'cpu'")
    # Ray accounts fractional GPUs in steps of 1e-4: round the equal share down to that grid.
    share = math.floor(1e4 / (run.client_actors + 1)) / 1e4 if use_gpu else 0.0
    client_gpus = run.client_actor_gpus if run.client_actor_gpus is not None else share
    server_gpus = run.server_gpus if run.server_gpus is not None else share
    return RunResources(
        client=ActorResources(run.client_actor_cpus, client_gpus),
        client_actors=run.client_actors,
        server=ActorResources(run.server_cpus, server_gpus),
    )


def check_fits(resources: RunResources, cluster_cpus: float, cluster_gpus: float) -> None:
    """Fail fast, instead of waiting forever for actors the cluster can never place."""
    if resources.total_cpus > cluster_cpus + 1e-9 or resources.total_gpus > cluster_gpus + 1e-9:
        raise ConfigError(
            f"the run needs {resources.total_cpus:g} CPUs and {resources.total_gpus:g} GPUs "
            f"({resources.describe()}) but the Ray cluster has {cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs; "
            "lower run.client_actors, run.client_actor_cpus / run.server_cpus or the GPU shares"
        )


def check_fits_this_machine(run: RunConfig) -> None:
    """A local Ray cluster gets at most this machine's CPUs: a run that reserves more is refused before Ray
    starts. (GPU shares depend on the GPUs Ray finds, so ``check_fits`` checks them once it has started.)"""
    cpus = os.cpu_count() or 1
    needed = run.client_actors * run.client_actor_cpus + run.server_cpus
    if needed > cpus + 1e-9:
        raise ConfigError(
            f"the run reserves {needed:g} CPUs (run.client_actors {run.client_actors} x run.client_actor_cpus "
            f"{run.client_actor_cpus:g} + run.server_cpus {run.server_cpus:g}) but this machine has {cpus}; "
            "lower them, or join a larger cluster with --address"
        )


def actor_device(setting: str) -> torch.device:
    """The torch device for the actor this runs in: CUDA only when Ray gave it a GPU (``auto``) or
    when the config demands it (``cuda``)."""
    has_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    if setting == "cuda" and not has_gpu:
        raise RuntimeError("run.device is 'cuda' but this actor was given no GPU")
    return torch.device("cuda" if has_gpu and setting != "cpu" else "cpu")
