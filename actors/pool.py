"""Client and server actors that runs borrow one at a time, so that a sweep's trials start no processes
(docs/architecture.md, "Sweeps", worker reuse).

A :class:`WorkerPool` belongs to one process: a sweep's trainable (which Tune reuses from trial to trial)
or a single ``byzlab run``. A run borrows the pool's actors for its lifetime; the next run re-initialises
them for its own config (``reset``: exactly the state of actors created from the same arguments, so no
state leaks from run to run) instead of starting new processes that import torch again. The actors were
created by this process, so they live in its placement group (Tune's placement groups capture child
actors): two trials never share an actor's CPUs or GPUs, and the actors go when the process goes.
``execute`` asks the pool to ``lend`` before it opens the run (MLflow, the run directory), so that new
actors start their processes meanwhile, and ``borrow``s them for the rounds.

The clients' training data and the test data are put in the object store once and reused while the next
run's arrays are equal to them, so a sweep's trials do not ship the same dataset again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from byzlab.actors.client import ClientActor
from byzlab.actors.resources import RunResources
from byzlab.actors.server import ServerActor
from byzlab.orchestrator.specs.inputs import RunInputs


class _PlacedArrays:
    """Arrays put in the object store, each reused while an equal array is placed under its name again."""

    def __init__(self) -> None:
        self._refs: dict[str, ray.ObjectRef] = {}

    def put(self, name: str, array: np.ndarray) -> ray.ObjectRef:
        ref = self._refs.get(name)
        if ref is not None and _holds(ref, array):
            return ref
        self._refs[name] = ray.put(array)
        return self._refs[name]


def _holds(ref: ray.ObjectRef, array: np.ndarray) -> bool:
    """Whether the stored object is ``array`` bit for bit (read in place, without a copy)."""
    try:
        placed = ray.get(ref)
    except RayError:  # lost with a node: place it again
        return False
    if placed.dtype != array.dtype or placed.shape != array.shape:
        return False
    return np.array_equal(_bytes(placed), _bytes(array))


def _bytes(array: np.ndarray) -> np.ndarray:
    """The array's bytes (a view when it is contiguous): -0.0 and 0.0, or two NaNs, compare as they are."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


class WorkerPool:
    """One run's client actors and server actor, kept for the next run of this process."""

    def __init__(self) -> None:
        self._server: Any = None
        self._clients: list[Any] = []
        self._resources: RunResources | None = None
        self._ready_for: RunInputs | None = None  # the run the actors were made ready for, until it borrows them
        self._placed = _PlacedArrays()

    @classmethod
    @contextmanager
    def for_run(cls, pool: WorkerPool | None) -> Iterator[WorkerPool]:
        """``pool`` itself when given (its actors outlive the run), else a pool of the run's own whose actors
        are killed when the run's rounds end."""
        if pool is not None:
            yield pool
            return
        own = cls()
        try:
            yield own
        finally:
            own.discard()

    def lend(self, inputs: RunInputs, resources: RunResources) -> None:
        """Make actors ready for the run of ``inputs``: the pool's own, re-initialised, when they have the
        run's resources and are alive, else new ones (the old ones killed). Called before the run opens, it
        lets new actors start their processes meanwhile; the run then takes them with ``borrow``."""
        client_args, server_args = self._arguments(inputs, resources)
        if self._resources != resources or not self._reset(client_args, server_args):
            self.discard()
            self._clients = [
                ClientActor.options(num_cpus=resources.client.num_cpus, num_gpus=resources.client.num_gpus
                                    ).remote(*args)
                for args in client_args
            ]
            self._server = ServerActor.options(num_cpus=resources.server.num_cpus, num_gpus=resources.server.num_gpus
                                               ).remote(*server_args(self._clients))
            self._resources = resources
        self._ready_for = inputs

    def borrow(self, inputs: RunInputs, resources: RunResources) -> tuple[Any, list[Any]]:
        """The server and client actors for the run of ``inputs``: those ``lend`` made ready for it and no run
        has used since, else ``lend``'s."""
        if self._ready_for is not inputs:
            self.lend(inputs, resources)
        self._ready_for = None
        return self._server, self._clients

    def _reset(self, client_args: list[tuple[Any, ...]], server_args: Any) -> bool:
        """Re-initialise the pool's actors, waiting until they are; False when one died or failed to (then a
        new actor, which fails the way a new actor does, replaces it)."""
        try:
            ray.get([client.reset.remote(*args) for client, args in zip(self._clients, client_args)])
            ray.get(self._server.reset.remote(*server_args(self._clients)))
        except (RayActorError, RayTaskError):
            return False
        return True

    def _arguments(self, inputs: RunInputs, resources: RunResources) -> tuple[list[tuple[Any, ...]], Any]:
        """Each client actor's arguments (its clients: every ``client_actors``-th), and the server's given
        the client actors."""
        dataset, num_actors = inputs.dataset, resources.client_actors
        actor_of_client = np.arange(len(inputs.parts)) % num_actors
        train_x, train_y = self._placed.put("train_x", dataset.train_x), self._placed.put("train_y", dataset.train_y)
        test_x, test_y = self._placed.put("test_x", dataset.test_x), self._placed.put("test_y", dataset.test_y)
        client_spec = ray.put(inputs.client)
        client_args = [
            (client_spec, train_x, train_y, {c: inputs.parts[c] for c in np.flatnonzero(actor_of_client == a)},
             resources.client.num_threads)
            for a in range(num_actors)
        ]

        def server_args(clients: list[Any]) -> tuple[Any, ...]:
            return (inputs.server, clients, actor_of_client, test_x, test_y, inputs.server_data,
                    resources.server_threads)

        return client_args, server_args

    def discard(self) -> None:
        """Kill the pool's actors (after one died, or when their run was interrupted mid-round)."""
        for actor in [self._server, *self._clients]:
            if actor is not None:
                ray.kill(actor)
        self._server, self._clients, self._resources, self._ready_for = None, [], None, None
