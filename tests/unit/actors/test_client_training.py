"""The client actor's local training is keyed by (seed, round, client) only: dropout included, so a resumed
run or another actor layout trains every client exactly as before."""

import pytest
import torch

from byzlab.actors.client import ClientWorker
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.layout import flatten_state
from byzlab.orchestrator.specs.inputs import resolve_inputs

pytestmark = pytest.mark.usefixtures("ray_cluster")  # actor_device asks Ray for the actor's GPUs


def _worker(*overrides):
    inputs = resolve_inputs(build_config({}, list(overrides)))
    return ClientWorker(inputs.client, inputs.dataset.train_x, inputs.dataset.train_y,
                        dict(enumerate(inputs.parts)), num_threads=1)


def test_dropout_is_drawn_per_round_and_client():
    first, second = _worker("model.dropout=0.5"), _worker("model.dropout=0.5")
    global_flat = flatten_state(first.model)
    update = first._train_client(3, 1, global_flat).update
    torch.manual_seed(1234)  # whatever the process drew before, the client draws the same masks
    assert torch.equal(second._train_client(3, 1, global_flat).update, update)
    assert not torch.equal(first._train_client(3, 2, global_flat).update, update)  # other round, other masks
    plain = _worker()._train_client(3, 1, global_flat).update
    assert not torch.equal(plain, update)  # the masks do act


def test_the_round_decays_the_local_learning_rate():
    decayed, halved = _worker("clients.lr_decay=0.5"), _worker("clients.lr=0.025")
    global_flat = flatten_state(decayed.model)
    assert torch.equal(decayed._train_client(0, 2, global_flat).update, halved._train_client(0, 2, global_flat).update)
    assert not torch.equal(decayed._train_client(0, 1, global_flat).update, halved._train_client(0, 1, global_flat).update)
