"""The public test helper (byzlab.orchestrator.testing): the user's good plug-ins pass it, each deliberately
broken one is caught with the property it breaks, and every built-in passes the same checks."""

from __future__ import annotations

import pytest

from byzlab import attacks
from byzlab.orchestrator import testing
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.learning.models import MODELS

P = "byzlab_fixture_plugins.components:"
BROKEN = "byzlab_fixture_plugins.broken:"


def test_the_good_plugins_pass_every_check_by_path_or_by_object():
    from byzlab_fixture_plugins import components

    testing.check_aggregator(f"{P}TrimmedMeanRule", {"trim": 2})
    testing.check_aggregator(components.TrimmedMeanRule)  # the class itself, unregistered
    testing.check_attack(f"{P}ShiftAttack", {"shift": 0.5})
    testing.check_model(components.tiny_mlp, {"width": 4}, input_shape=(6,), num_classes=4)
    data = testing.check_dataset(f"{P}blobs", {"samples": 80})
    assert data.input_shape == (6,) and len(data.train_y) == 60
    parts = testing.check_partition(f"{P}round_robin", {"offset": 1}, num_clients=7)
    assert [len(part) for part in parts] == [85, 86, 86, 86, 86, 86, 85]  # sample i goes to (i + 1) mod 7


@pytest.mark.parametrize("check, component, message", [
    (testing.check_aggregator, f"{BROKEN}NanRule", "non-finite aggregate of finite updates"),
    (testing.check_aggregator, f"{BROKEN}FirstRowRule", "the aggregate changes when the clients are permuted"),
    (testing.check_aggregator, f"{BROKEN}NotARule", "must be a subclass of byzlab.aggregators.base.Aggregator"),
    (testing.check_attack, f"{BROKEN}OneRowAttack", "crafted (1, 10) for 3 attackers"),
    (testing.check_partition, f"{BROKEN}lossy_partition", "some sample is lost or assigned twice"),
    (testing.check_model, f"{BROKEN}one_argument_model", "is called as one_argument_model(input_shape"),
    (testing.check_dataset, f"{BROKEN}dataset_without_modality", "needs a modality attribute"),
], ids=lambda value: value.rpartition(":")[2] if isinstance(value, str) else getattr(value, "__name__", ""))
def test_a_broken_plugin_is_caught_with_the_property_it_breaks(check, component, message):
    with pytest.raises(AssertionError) as caught:
        check(component)
    assert message in str(caught.value)


def test_each_property_of_an_aggregator_is_checked_on_its_own():
    testing.check_permutation_invariance(f"{BROKEN}NanRule")  # NaN everywhere, but in any order
    testing.check_identical_updates(f"{BROKEN}FirstRowRule")  # right when every row is the same
    with pytest.raises(AssertionError, match="a NaN / Inf row reached the aggregate"):
        testing.check_nonfinite_rows(f"{BROKEN}NanRule")
    with pytest.raises(AssertionError, match="one outlier moved the aggregate"):
        testing.check_outlier_bounded("fedavg")


@pytest.mark.parametrize("name", attacks.names())
def test_every_builtin_attack_passes_the_helper(name):
    testing.check_attack(name)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_builtin_model_passes_the_helper(name):
    text = getattr(MODELS.get(name), "takes_vocabulary", False)
    testing.check_model(name, input_shape=(20,) if text else (3, 32, 32))


@pytest.mark.parametrize("name", PARTITION_SCHEMES.names())
def test_every_builtin_partition_scheme_passes_the_helper(name):
    testing.check_partition(name)


def test_the_builtin_digits_dataset_passes_the_helper():
    data = testing.check_dataset("digits")
    assert data.input_shape == (1, 8, 8)
