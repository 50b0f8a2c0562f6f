"""Worker reuse (actors/pool.py): a client or server worker re-initialised for another run is what a new one
built for that run is, and the data a pool placed in the object store is reused only while it is the same
bit for bit. In process (the workers' classes, no actor processes), so it is quick."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import ray
import torch

from byzlab.actors.client import ClientWorker
from byzlab.actors.pool import _PlacedArrays
from byzlab.actors.server import ServerWorker
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.layout import flatten_state
from byzlab.orchestrator.specs.inputs import resolve_inputs

pytestmark = pytest.mark.usefixtures("ray_cluster")  # actor_device asks Ray for the actor's GPUs

# Run A leaves as much state behind as a run can: poisoned labels on its data attackers, another seed,
# population and partition, FoolsGold's history and FedAvgM's velocity on the server.
RUN_A = ["threat.attack=label_flip", "threat.fraction=0.3", "run.seed=3", "clients.num_clients=12",
         "partition.beta=0.3", "server.aggregator=foolsgold", "server.momentum=0.9"]
RUN_B = ["threat.attack=sign_flip", "threat.fraction=0.2", "server.aggregator=median"]


def _client_args(overrides: list[str]) -> tuple:
    inputs = resolve_inputs(build_config({}, overrides))
    return (inputs.client, inputs.dataset.train_x, inputs.dataset.train_y, dict(enumerate(inputs.parts)), 1)


def _server_args(overrides: list[str]) -> tuple:
    inputs = resolve_inputs(build_config({}, overrides))
    return (inputs.server, [], np.zeros(len(inputs.parts), dtype=int), inputs.dataset.test_x,
            inputs.dataset.test_y, inputs.server_data, 1)


def test_a_reset_client_worker_trains_exactly_as_a_new_one():
    worker = ClientWorker(*_client_args(RUN_A))
    global_flat = flatten_state(worker.model).numpy()
    worker.train(global_flat, 1, [0, 1, 2, 3, 11])  # attackers among them: their poisoned labels are used
    assert hasattr(worker, "poisoned_y")

    args = _client_args(RUN_B)
    worker.reset(*copy.deepcopy(args))  # an actor gets its own copy of the arguments, as here
    fresh = ClientWorker(*args)
    assert vars(worker).keys() == vars(fresh).keys()  # nothing of run A's is left (no poisoned labels)
    for round_index in (1, 2):
        reused_updates, reused_meta = worker.train(global_flat, round_index, [0, 4, 9])
        fresh_updates, fresh_meta = fresh.train(global_flat, round_index, [0, 4, 9])
        assert np.array_equal(reused_updates.view(np.uint32), fresh_updates.view(np.uint32))
        assert {k: v for k, v in reused_meta.items() if k != "train_seconds"} == \
            {k: v for k, v in fresh_meta.items() if k != "train_seconds"}


def test_a_reset_server_worker_starts_from_the_state_of_a_new_one():
    server = ServerWorker(*_server_args(RUN_A))
    d = server.global_params.numel()
    updates = torch.randn(5, d, generator=torch.Generator().manual_seed(0))
    server.aggregator.aggregate(updates, _foolsgold_context(server))  # FoolsGold remembers the clients
    assert server._apply(torch.ones(d))  # FedAvgM's velocity and the model move
    assert server.aggregator.state_dict()["history"].abs().sum() > 0

    args = _server_args(RUN_B)
    server.reset(*copy.deepcopy(args))
    fresh = ServerWorker(*copy.deepcopy(args))
    assert vars(server).keys() == vars(fresh).keys()
    assert type(server.aggregator) is type(fresh.aggregator)
    _assert_same_state(server.state_dict(), fresh.state_dict())
    assert server.evaluate(server.test_x, server.test_y) == fresh.evaluate(fresh.test_x, fresh.test_y)


def _foolsgold_context(server: ServerWorker):
    from byzlab import aggregators

    return aggregators.RoundContext(client_ids=torch.arange(5), num_clients_total=12)


def _assert_same_state(reused, fresh) -> None:
    if isinstance(fresh, dict):
        assert reused.keys() == fresh.keys()
        for key in fresh:
            _assert_same_state(reused[key], fresh[key])
    elif isinstance(fresh, torch.Tensor):
        assert torch.equal(reused, fresh)
    else:
        assert reused == fresh


def test_placed_data_is_reused_only_while_it_is_the_same_bit_for_bit():
    placed = _PlacedArrays()
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = placed.put("train_x", data)
    assert placed.put("train_x", data.copy()) == first  # an equal array (the next trial's load): no new copy
    changed = data.copy()
    changed[2, 3] = 0.5
    assert placed.put("train_x", changed) != first
    assert np.array_equal(ray.get(placed.put("train_x", changed)), changed)
    zero = np.zeros(3, dtype=np.float32)
    signed = placed.put("test_x", zero)
    assert placed.put("test_x", -zero) != signed  # -0.0 == 0.0 numerically, yet it is other data
    assert placed.put("test_x", zero.astype(np.float64)) != placed.put("test_x", zero)  # another dtype
    assert placed.put("test_y", zero[::2]) == placed.put("test_y", np.zeros(2, dtype=np.float32))  # a strided view
