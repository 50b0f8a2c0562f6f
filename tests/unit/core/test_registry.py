"""The one registry mechanism behind aggregators, pre-aggregators, attacks, datasets, partition schemes and
models: classes and functions by name, each with a parameter schema that validates and describes it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from byzlab import aggregators, attacks
from byzlab.orchestrator.core.registry import NoParams, Registry
from byzlab.orchestrator.data.datasets import DATASETS
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.learning.models import MODELS
from byzlab.orchestrator.learning.server_optimizers import SERVER_OPTIMIZERS


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = Field(2.0, gt=0, description="multiplier")


def _toy_registry() -> Registry:
    registry = Registry("toy", keep_order=True)

    @registry.register_function("scale", ScaleParams, unit="x")
    def scale(value: float, params: ScaleParams) -> float:
        """Multiply by a factor.

        Longer text that the listing leaves out."""
        return value * params.factor

    @registry.register_function("identity")
    def identity(value: float, params: NoParams) -> float:
        """Return the value unchanged."""
        return value

    return registry


def test_functions_register_with_their_schema_and_attributes():
    registry = _toy_registry()
    scale = registry.get("scale")
    assert (scale.name, scale.Params, scale.unit) == ("scale", ScaleParams, "x")
    assert scale(3.0, registry.validate_params("scale", {"factor": 0.5})) == 1.5
    assert registry.get("identity").Params is NoParams


def test_names_keep_registration_order_or_sort():
    registry = _toy_registry()
    assert registry.names() == ["scale", "identity"]
    sorted_registry = Registry("toy")
    for name in ("b", "a"):
        sorted_registry.register_function(name)(lambda params: None)
    assert sorted_registry.names() == ["a", "b"]


def test_errors_name_the_entry_the_parameter_and_the_known_names():
    registry = _toy_registry()
    with pytest.raises(ValueError, match="unknown toy 'cube'; known: scale, identity"):
        registry.get("cube")
    with pytest.raises(ValueError, match="toy 'scale' parameter 'factor': Input should be greater than 0"):
        registry.validate_params("scale", {"factor": -1})
    with pytest.raises(ValueError, match="toy 'identity' parameter 'factor': Extra inputs are not permitted"):
        registry.validate_params("identity", {"factor": 1})
    with pytest.raises(ValueError, match="toy 'scale' is registered twice"):
        registry.register_function("scale")(lambda params: None)


def test_describe_is_the_first_paragraph_and_one_line_per_parameter():
    registry = _toy_registry()
    assert registry.describe("scale", "(heading)") == "(heading)\nMultiply by a factor.\nfactor=2.0: multiplier"
    assert registry.describe("identity") == "Return the value unchanged."


@pytest.mark.parametrize("registry", [aggregators.AGGREGATORS, aggregators.PRE_AGGREGATORS, attacks.ATTACKS, DATASETS,
                                      PARTITION_SCHEMES, MODELS, SERVER_OPTIMIZERS], ids=lambda r: r.what)
def test_every_component_has_a_summary_and_described_parameters(registry):
    assert registry.names()
    for name in registry.names():
        entry = registry.get(name)
        assert entry.name == name and (entry.__doc__ or "").strip(), name
        assert all(info.description for info in entry.Params.model_fields.values()), name
