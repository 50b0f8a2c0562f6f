import pytest
import torch
import torch.nn.functional as F

from byzlab.orchestrator.config import ClientsConfig, build_config
from byzlab.orchestrator.config.schema import run_id
from byzlab.orchestrator.specs.roles import local_recipe
from byzlab.orchestrator.core.layout import flatten_state, load_flat_state
from byzlab.orchestrator.learning.models import build_model
from byzlab.orchestrator.learning.training import train_locally


def _setup(n=40):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    x = torch.randn(n, 1, 8, 8)
    y = torch.randint(0, 10, (n,))
    return model, flatten_state(model), x, y


def test_update_is_trained_minus_global_and_first_loss_is_at_the_global_model():
    model, global_flat, x, y = _setup()
    recipe = local_recipe(ClientsConfig(local_epochs=1, batch_size=8, lr=0.1, momentum=0.0))
    result = train_locally(model, global_flat, x, y, recipe, torch.Generator().manual_seed(3))
    assert torch.allclose(result.update, flatten_state(model) - global_flat)
    assert result.update.abs().sum() > 0
    # the first minibatch is the first 8 indices of the seeded permutation, evaluated at the global model
    first = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:8]
    probe = build_model("mlp", (1, 8, 8), 10)
    load_flat_state(probe, global_flat)
    assert abs(result.loss_before - F.cross_entropy(probe(x[first]), y[first]).item()) < 1e-5


def test_epochs_and_steps_count_batches():
    model, global_flat, x, y = _setup(n=40)
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    train_locally(model, global_flat, x, y, local_recipe(ClientsConfig(local_epochs=2, batch_size=16)), torch.Generator())
    assert calls == [16, 16, 8] * 2
    calls.clear()
    train_locally(model, global_flat, x, y, local_recipe(ClientsConfig(local_steps=7, batch_size=16)), torch.Generator())
    assert calls == [16, 16, 8, 16, 16, 8, 16]
    hook.remove()


def test_same_generator_seed_same_update_and_other_seed_differs():
    model, global_flat, x, y = _setup()
    recipe = local_recipe(ClientsConfig(local_epochs=1, batch_size=8))
    a = train_locally(model, global_flat, x, y, recipe, torch.Generator().manual_seed(1)).update
    b = train_locally(model, global_flat, x, y, recipe, torch.Generator().manual_seed(1)).update
    c = train_locally(model, global_flat, x, y, recipe, torch.Generator().manual_seed(2)).update
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_fedprox_term_pulls_towards_the_global_model():
    model, global_flat, x, y = _setup()
    norms = []
    for mu in (0.0, 10.0):
        recipe = local_recipe(ClientsConfig(local_epochs=3, batch_size=8, lr=0.05, momentum=0.0, prox_mu=mu))
        norms.append(train_locally(model, global_flat, x, y, recipe, torch.Generator().manual_seed(0)).update.norm())
    assert norms[1] < 0.5 * norms[0]


def test_the_learning_rate_decays_per_round_and_round_one_is_the_base_recipe():
    recipe = local_recipe(ClientsConfig(lr=0.05, lr_decay=0.5))
    assert [recipe.for_round(r).lr for r in (1, 2, 3)] == [0.05, 0.025, 0.0125]
    assert recipe.for_round(1) == recipe
    undecayed = local_recipe(ClientsConfig(lr=0.05))
    assert undecayed.for_round(500) == undecayed  # lr_decay 1: every round trains with the same lr
    # a decayed round trains exactly as a recipe with that lr does
    model, global_flat, x, y = _setup()
    halved = local_recipe(ClientsConfig(lr=0.025, local_epochs=1, batch_size=8))
    decayed = local_recipe(ClientsConfig(lr=0.05, lr_decay=0.5, local_epochs=1, batch_size=8)).for_round(2)
    a, b = (train_locally(model, global_flat, x, y, r, torch.Generator().manual_seed(1)) for r in (halved, decayed))
    assert torch.equal(a.update, b.update)


def test_update_clip_bounds_the_sent_update_and_keeps_its_direction():
    model, global_flat, x, y = _setup()
    plain = local_recipe(ClientsConfig(local_epochs=2, batch_size=8, lr=0.5))
    free = train_locally(model, global_flat, x, y, plain, torch.Generator().manual_seed(0)).update
    bound = 0.5 * float(free.norm())  # below the unclipped norm, so the clip acts
    clipped_recipe = local_recipe(ClientsConfig(local_epochs=2, batch_size=8, lr=0.5, update_clip=bound))
    clipped = train_locally(model, global_flat, x, y, clipped_recipe, torch.Generator().manual_seed(0)).update
    assert float(clipped.norm()) == pytest.approx(bound, rel=1e-5)
    assert torch.allclose(clipped, free * (bound / free.norm()), atol=1e-7)
    loose = local_recipe(ClientsConfig(local_epochs=2, batch_size=8, lr=0.5, update_clip=2 * float(free.norm())))
    assert torch.equal(train_locally(model, global_flat, x, y, loose, torch.Generator().manual_seed(0)).update, free)


def test_update_clip_leaves_the_run_id_of_unclipped_configs():
    assert "update_clip" not in build_config({}, []).to_dict()["clients"]
    assert run_id(build_config({}, ["clients.update_clip=1.0"])) != run_id(build_config({}, []))
