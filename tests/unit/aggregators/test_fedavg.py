import pytest
import torch

from byzlab import aggregators
from byzlab.aggregators import RoundContext

UPDATES = torch.tensor([[1.0, 0.0], [3.0, 2.0], [8.0, -4.0]])


def test_sample_weighted_reference_values():
    # counts 1, 1, 2 -> weights 1/4, 1/4, 1/2: (1 + 3 + 16) / 4 = 5, (0 + 2 - 8) / 4 = -1.5
    result = aggregators.build("fedavg")(UPDATES, RoundContext(num_samples=torch.tensor([1.0, 1.0, 2.0])))
    assert torch.allclose(result.update, torch.tensor([5.0, -1.5]))
    assert torch.allclose(result.weights, torch.tensor([0.25, 0.25, 0.5]))
    assert result.accepted is None


def test_uniform_weighting_ignores_claimed_counts():
    rule = aggregators.build("fedavg", weighting="uniform")
    result = rule(UPDATES, RoundContext(num_samples=torch.tensor([1.0, 1.0, 100.0])))
    assert torch.allclose(result.update, torch.tensor([4.0, -2.0 / 3.0]))


def test_permutation_invariance_and_identical_inputs():
    rule = aggregators.build("fedavg")
    counts = torch.tensor([1.0, 2.0, 3.0])
    base = rule(UPDATES, RoundContext(num_samples=counts))
    perm = torch.tensor([2, 0, 1])
    permuted = rule(UPDATES[perm], RoundContext(num_samples=counts[perm]))
    assert torch.allclose(permuted.update, base.update)
    assert torch.allclose(permuted.weights, base.weights[perm])
    same = torch.tensor([0.5, -2.0]).repeat(4, 1)
    assert torch.allclose(rule(same, RoundContext()).update, same[0])


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown aggregator 'krumm'; known: .*fedavg"):
        aggregators.build("krumm")
    with pytest.raises(ValueError, match="parameter 'weighting'"):
        aggregators.build("fedavg", weighting="size")
    with pytest.raises(ValueError, match="stateless"):
        aggregators.build("fedavg").load_state_dict({"x": torch.zeros(1)})
