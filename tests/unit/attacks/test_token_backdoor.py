"""The token-pattern backdoor on text (attacks/data.py, TokenBackdoor): bound to vocabulary ids once the
data is loaded, it overwrites a fixed stretch of the poisoned rows and relabels them."""

import pytest
import torch

from byzlab import attacks
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.errors import ConfigError

VOCABULARY = ("<pad>", "<unk>", "book", "good", "bad", "cf")


def _bound(row_length=6, **params):
    attack = attacks.build("token_backdoor", **params)
    attack.check_data((row_length,), 2)
    attack.bind(VOCABULARY, row_length)
    return attack


def test_the_trigger_overwrites_its_stretch_of_the_first_rows_and_relabels_them():
    attack = _bound(tokens=["cf", "bad"], position=1, target=1, poisoned_per_batch=2)
    x = torch.tensor([[2, 3, 3, 0, 0, 0], [3, 2, 0, 0, 0, 0], [4, 4, 2, 0, 0, 0]])
    y = torch.tensor([0, 0, 0])
    poisoned_x, poisoned_y = attack.poison_batch(x, y, 0, 1, torch.Generator())
    assert poisoned_x.tolist() == [[2, 5, 4, 0, 0, 0], [3, 5, 4, 0, 0, 0], [4, 4, 2, 0, 0, 0]]
    assert poisoned_y.tolist() == [1, 1, 0] and x[0].tolist() == [2, 3, 3, 0, 0, 0]  # inputs untouched


def test_a_negative_position_counts_from_the_end_and_the_test_set_drops_the_target_class():
    attack = _bound(tokens=["cf"], position=-1, target=1)
    x = torch.tensor([[0, 0, 0, 0, 2, 3], [0, 0, 0, 3, 3, 3]])
    triggered, labels = attack.triggered_test_set(x, torch.tensor([0, 1]))
    assert triggered.tolist() == [[0, 0, 0, 0, 2, 5]] and labels.tolist() == [1]


@pytest.mark.parametrize("params, message", [
    ({}, "tokens: name at least one trigger token"),
    ({"tokens": ["zebra"]}, "token 'zebra' is not in the training vocabulary"),
    ({"tokens": ["<pad>"]}, "token '<pad>' is not in the training vocabulary"),
    ({"tokens": ["cf", "bad"], "position": 5}, "position 5: 2 trigger tokens do not fit rows of 6 tokens there"),
    ({"tokens": ["cf"], "target": 2}, "token_backdoor target=2 is not a class of a 2-class task (class ids 0..1)"),
])
def test_binding_errors_name_what_is_wrong(params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _bound(**params)


def test_a_token_trigger_is_refused_on_images_before_anything_runs():
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    cfg = build_config({}, ["threat.fraction=0.2", "threat.attack=token_backdoor", "threat.attack_params.tokens=[cf]"])
    with pytest.raises(ConfigError, match="threat.attack 'token_backdoor' sets a token trigger and needs text; digits holds images"):
        resolve_inputs(cfg)
