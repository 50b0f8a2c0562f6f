"""The threat model: configuration, the malicious set, the server-side adversary and client-side poisoning
(the end-to-end effects are in e2e/test_threat_e2e.py)."""

import numpy as np
import pytest
import torch

from byzlab.orchestrator.core.errors import ConfigError
from byzlab import attacks
from byzlab.actors.adversary import Adversary
from byzlab.actors.client import ClientWorker
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.layout import flatten_state
from byzlab.orchestrator.specs.threat import AttackSchedule, draw_malicious, resolve_threat


def _threat_config(*overrides):
    return build_config({}, ["threat.fraction=0.2", *overrides]).threat


def _threat(*overrides):
    """The resolved threat (built attacks, schedule) of the default 10-client run with Phi = 0.2."""
    return resolve_threat(_threat_config(*overrides), seed=0, num_clients=10)


@pytest.mark.parametrize("overrides, message", [
    (["threat.attack=krumm"], "unknown attack 'krumm'; known: backdoor, byzmean"),
    (["threat.attack=enlarge_quantity"], "'enlarge_quantity' is a quantity attack; allowed: none, backdoor"),
    (["threat.quantity_attack=lie"], "'lie' is a model attack; allowed: none, enlarge_quantity"),
    (["threat.fraction=0", "threat.attack=lie"], "attack 'lie' needs fraction > 0"),
    (["threat.attack_params.z=1"], "attack_params given but attack is 'none'"),
    (["threat.attack=lie", "threat.attack_params.zz=1"], "attack 'lie' parameter 'zz'"),
    (["threat.knowledge=partial"], "threat.knowledge: Input should be 'omniscient' or 'agnostic'"),
    (["threat.every=0"], "threat.every: Input should be greater than or equal to 1"),
])
def test_threat_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config({}, ["threat.fraction=0.2", *overrides])


def test_attack_defaults_are_filled_into_the_resolved_config():
    threat = _threat_config("threat.attack=lie", "threat.quantity_attack=enlarge_quantity")
    assert set(threat.attack_params) == set(attacks.attack_class("lie").Params.model_fields)
    assert "alpha" in "".join(threat.quantity_params)


def test_schedule():
    schedule = _threat("threat.start_round=3", "threat.every=2").schedule
    assert schedule == AttackSchedule(start_round=3, every=2)
    assert [r for r in range(1, 10) if schedule.active(r)] == [3, 5, 7, 9]


def test_threat_is_resolved_once_into_kind_and_built_attacks():
    model = _threat("threat.attack=lie", "threat.attack_params.z=1.5")
    assert (model.kind, model.model_attack.params.z, model.data_attack) == ("model", 1.5, None)
    data = _threat("threat.attack=label_flip")
    assert (data.kind, data.model_attack, data.data_attack.name) == ("data", None, "label_flip")
    honest = _threat()
    assert (honest.kind, honest.attack, honest.quantity_attack) == ("none", None, None)
    assert np.array_equal(honest.malicious, draw_malicious(0, 10, 0.2))  # malicious but honest (attack none)
    assert honest.population_byzantine() == 2
    assert _threat("threat.declared_byzantine=3").population_byzantine() == 3


def test_malicious_set_is_floor_of_fraction_and_seeded():
    assert len(draw_malicious(0, 10, 0.2)) == 2
    assert len(draw_malicious(0, 10, 0.25)) == 2
    assert len(draw_malicious(0, 100, 0.25)) == 25
    assert np.array_equal(draw_malicious(3, 50, 0.3), draw_malicious(3, 50, 0.3))
    assert not np.array_equal(draw_malicious(3, 50, 0.3), draw_malicious(4, 50, 0.3))


def _round(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g)
    malicious = torch.tensor([True, False, True, False, False, False])[:n]
    return updates, torch.arange(1.0, n + 1), malicious


def test_adversary_rewrites_only_malicious_rows_in_attacked_rounds():
    threat = _threat("threat.attack=sign_flip", "threat.attack_params.scale=3", "threat.start_round=2")
    adversary = Adversary(threat, seed=0, initial_params=torch.zeros(5), layers=())
    updates, counts, malicious = _round()
    original = updates.clone()
    adversary.attack(1, updates, counts, malicious, torch.zeros(5))  # before start_round: untouched
    assert torch.equal(updates, original)
    adversary.attack(2, updates, counts, malicious, torch.zeros(5))
    assert torch.equal(updates[~malicious], original[~malicious])
    assert torch.allclose(updates[malicious], -3 * original[malicious])


def test_knowledge_decides_which_statistics_the_attacker_uses():
    crafted = {}
    for knowledge in ("omniscient", "agnostic"):
        threat = _threat("threat.attack=lie", "threat.attack_params.z=1.0", f"threat.knowledge={knowledge}")
        updates, counts, malicious = _round()
        Adversary(threat, 0, torch.zeros(5), ()).attack(1, updates, counts, malicious, torch.zeros(5))
        crafted[knowledge] = updates[malicious][0]
    original, _, malicious = _round()
    benign, own = original[~malicious], original[malicious]
    expected_agnostic = attacks.build("lie", z=1.0).craft(own, own, _ctx(malicious))[0]
    expected_omniscient = attacks.build("lie", z=1.0).craft(own, benign, _ctx(malicious))[0]
    assert torch.allclose(crafted["agnostic"], expected_agnostic)
    assert torch.allclose(crafted["omniscient"], expected_omniscient)
    assert not torch.allclose(crafted["agnostic"], crafted["omniscient"])


def _ctx(malicious):
    return attacks.AttackContext(round=1, num_clients=len(malicious), num_malicious=int(malicious.sum()),
                                 generator=torch.Generator())


def test_quantity_attack_rewrites_only_the_attackers_claims():
    threat = _threat("threat.quantity_attack=enlarge_quantity", "threat.quantity_params.alpha_q=2")
    updates, counts, malicious = _round()
    adversary = Adversary(threat, 0, torch.zeros(5), ())
    original_updates, original_counts = updates.clone(), counts.clone()
    adversary.attack(1, updates, counts, malicious, torch.zeros(5))
    assert torch.equal(updates, original_updates)  # no model attack configured
    assert torch.equal(counts[~malicious], original_counts[~malicious])
    expected = attacks.build("enlarge_quantity", alpha_q=2).claims(original_counts[~malicious], 2)
    assert torch.allclose(counts[malicious], expected.to(counts))


def _worker(*overrides):
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    inputs = resolve_inputs(build_config({}, ["threat.fraction=0.2", *overrides]))
    worker = ClientWorker(inputs.client, inputs.dataset.train_x, inputs.dataset.train_y, dict(enumerate(inputs.parts)),
                          num_threads=1)
    return worker, inputs.malicious


@pytest.mark.usefixtures("ray_cluster")
def test_label_poisoning_touches_only_the_attackers_data():
    worker, malicious = _worker("threat.attack=label_flip")
    for client, part in worker.slices.items():
        if client in malicious:
            assert torch.equal(worker.poisoned_y[part], 9 - worker.y[part])
        else:
            assert torch.equal(worker.poisoned_y[part], worker.y[part])


@pytest.mark.usefixtures("ray_cluster")
def test_model_replacement_boosts_the_backdoor_update_in_its_round():
    trigger = ["threat.attack_params.size=2"]
    backdoor, malicious = _worker("threat.attack=backdoor", *trigger)
    replacement, _ = _worker("threat.attack=model_replacement", *trigger,
                             "threat.attack_params.boost=7", "threat.attack_params.boost_round=2")
    honest, _ = _worker()
    global_flat = flatten_state(honest.model)
    attacker, benign = int(malicious[0]), next(c for c in range(10) if c not in malicious)
    for round_index, boost in ((1, 1.0), (2, 7.0)):
        plain = backdoor._train_client(attacker, round_index, global_flat).update
        boosted = replacement._train_client(attacker, round_index, global_flat).update
        assert torch.allclose(boosted, boost * plain)
    honest_update = honest._train_client(attacker, 1, global_flat).update
    assert not torch.allclose(honest_update, backdoor._train_client(attacker, 1, global_flat).update)
    # benign clients of an attacked run train exactly as in an honest run
    assert torch.equal(honest._train_client(benign, 1, global_flat).update,
                       backdoor._train_client(benign, 1, global_flat).update)
