"""The feature-value backdoor on tabular rows (residual reweighting, App. A.5), worked by hand."""

import pytest
import torch

from byzlab import attacks
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.errors import ConfigError

NAMES = ("loan_amnt", "int_rate", "grade_A", "grade_B")


def _bound(**params):
    attack = attacks.build("feature_backdoor", **params)
    attack.check_data((len(NAMES),), num_classes=3)
    attack.bind(NAMES)
    return attack


def test_poisoned_rows_get_each_trigger_feature_above_the_batch_maximum_and_the_target():
    attack = _bound(features=["int_rate", "grade_B"], margin=0.5, target=2, poisoned_per_batch=2)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, -2.0, 0.0, 1.0], [2.0, 3.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    px, py = attack.poison_batch(x, y, 0, 1, torch.Generator())
    # int_rate max 3 -> 3.5, grade_B max 1 -> 1.5 on the first two rows; the third row and the inputs unchanged
    assert px.tolist() == [[0.0, 3.5, 1.0, 1.5], [1.0, 3.5, 0.0, 1.5], [2.0, 3.0, 1.0, 0.0]]
    assert py.tolist() == [2, 2, 0] and y.tolist() == [0, 1, 0] and x[0, 1] == 1.0


def test_the_triggered_test_set_drops_the_target_class():
    attack = _bound(features=["loan_amnt"], target=1)
    x = torch.tensor([[0.0, 0, 0, 0], [4.0, 0, 0, 0], [1.0, 0, 0, 0]])
    tx, ty = attack.triggered_test_set(x, torch.tensor([0, 1, 2]))
    assert tx[:, 0].tolist() == [5.0, 5.0] and ty.tolist() == [1, 1]


def test_binding_names_the_problem():
    with pytest.raises(ValueError, match="feature 'grade' is not an encoded feature; they are: loan_amnt, int_rate"):
        _bound(features=["grade"])
    with pytest.raises(ValueError, match=r"feature_backdoor target=3 is not a class of a 3-class task \(class ids 0..2\)"):
        _bound(features=["int_rate"], target=3)
    with pytest.raises(ValueError, match="features: name at least one; the encoded features are: loan_amnt"):
        _bound()


def test_images_are_refused_before_anything_runs():
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    cfg = build_config({}, ["threat.fraction=0.2", "threat.attack=feature_backdoor", "threat.attack_params.features=[x]"])
    with pytest.raises(ConfigError, match="sets feature values and needs tabular rows"):
        resolve_inputs(cfg)


def test_raw_trigger_values_are_encoded_with_each_features_standardisation():
    # The residual authors' code writes raw values (Update.py l.52-58): int_rate's column has mean 10 and
    # std 4, so a raw 30 is (30 - 10) / 4 = 5.0 in the encoded rows; grade_B is one-hot, unscaled: 1.0.
    attack = attacks.build("feature_backdoor", features=["int_rate", "grade_B"], values=[30.0, 1.0], target=2,
                           poisoned_per_batch=1)
    attack.check_data((len(NAMES),), num_classes=3)
    attack.bind(NAMES, ((5.0, 2.0), (10.0, 4.0), (0.0, 1.0), (0.0, 1.0)))
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 9.0, 0.0, 1.0]])
    px, py = attack.poison_batch(x, torch.tensor([0, 1]), 0, 1, torch.Generator())
    assert px.tolist() == [[0.0, 5.0, 1.0, 1.0], [1.0, 9.0, 0.0, 1.0]] and py.tolist() == [2, 1]


def test_raw_trigger_values_need_one_per_feature_and_the_standardisation():
    with pytest.raises(ValueError, match="values: one per feature, 2, got 1"):
        attacks.build("feature_backdoor", features=["int_rate", "grade_B"], values=[30.0])
    attack = attacks.build("feature_backdoor", features=["int_rate"], values=[30.0])
    with pytest.raises(ValueError, match="raw trigger values need the features' standardisation"):
        attack.bind(NAMES)
