"""The user's own components named by import path in a config: admitted before validation, validated like
the built-ins (their parameters are flat keys of their section), and run by the same code."""

from __future__ import annotations

import numpy as np
import pytest

from byzlab import aggregators, attacks
from byzlab.orchestrator.config import ExperimentConfig, build_config, run_id
from byzlab.orchestrator.config.plugins import loaded_plugin_modules, plugin_modules
from byzlab.orchestrator.config.schema import experiment_schema
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.plugins import code_roots
from byzlab.orchestrator.learning.models import MODELS
from byzlab.orchestrator.specs.inputs import resolve_inputs

P = "byzlab_fixture_plugins.components:"
EVERY_KIND = {
    "data": {"dataset": f"{P}blobs", "samples": 200},
    "partition": {"scheme": f"{P}round_robin", "offset": 3},
    "server": {"aggregator": f"{P}TrimmedMeanRule", "aggregator_params": {"trim": 2}},
    "threat": {"attack": f"{P}ShiftAttack", "attack_params": {"shift": 2.5}, "fraction": 0.2},
    "model": {"width": 8},
}


def test_every_kind_validates_by_import_path_with_its_parameters_as_config_keys():
    cfg = build_config(EVERY_KIND)
    resolved = cfg.to_dict()
    assert resolved["data"]["dataset"] == f"{P}blobs" and resolved["data"]["samples"] == 200
    assert "blob_seed" not in resolved["data"]  # a plug-in's defaults stay out, like csv's
    assert resolved["partition"] == {"scheme": f"{P}round_robin", "offset": 3}
    assert resolved["model"] == {"name": f"{P}tiny_mlp", "width": 8}  # auto: the dataset's default model
    assert resolved["server"]["aggregator_params"] == {"trim": 2}
    assert resolved["threat"]["attack_params"] == {"shift": 2.5}
    assert isinstance(cfg, ExperimentConfig) and type(cfg) is experiment_schema()
    assert aggregators.AGGREGATORS.origin(f"{P}TrimmedMeanRule") == "import path"
    assert attacks.attack_class(f"{P}ShiftAttack", "model").name == f"{P}ShiftAttack"


def test_plugin_parameters_are_checked_like_a_builtins():
    with pytest.raises(ConfigError, match=r"model.width: Input should be greater than or equal to 1 \(got 0\)"):
        build_config({"model": {"name": f"{P}tiny_mlp", "width": 0}})
    with pytest.raises(ConfigError, match=f"'hidden' is not a parameter of model '{P}tiny_mlp' .it takes: width."):
        build_config({"model": {"name": f"{P}tiny_mlp", "hidden": [3]}})
    with pytest.raises(ConfigError, match="'width' is not a parameter of model 'mlp'"):
        build_config({"model": {"name": f"{P}tiny_mlp"}}, ["model.name=mlp", "model.width=4"])
    with pytest.raises(ConfigError, match="partition.offset: Input should be greater than or equal to 0"):
        build_config({"partition": {"scheme": f"{P}round_robin", "offset": -1}})
    with pytest.raises(ConfigError, match=f"aggregator '{P}TrimmedMeanRule' parameter 'trim'"):
        build_config({"server": {"aggregator": f"{P}TrimmedMeanRule", "aggregator_params": {"trim": -1}}})
    with pytest.raises(ConfigError, match=f"attack '{P}ShiftAttack' parameter 'scale': Extra inputs"):
        build_config({"threat": {"attack": f"{P}ShiftAttack", "attack_params": {"scale": 1}, "fraction": 0.2}})


def test_existing_configs_keep_their_schema_and_run_ids_once_plugins_are_admitted():
    plain = build_config({}, ["partition.beta=0.3", "model.hidden=[46, 23]"])
    before = run_id(plain)
    build_config(EVERY_KIND)
    again = build_config({}, ["partition.beta=0.3", "model.hidden=[46, 23]"])
    assert type(again) is experiment_schema() and run_id(again) == before
    assert ExperimentConfig().to_dict() == build_config({}).to_dict()
    assert "width" not in ExperimentConfig.model_fields["model"].annotation.model_fields


def test_resolved_inputs_use_the_plugin_dataset_partition_model_and_attack():
    cfg = build_config(EVERY_KIND, ["clients.num_clients=5"])
    inputs = resolve_inputs(cfg)
    assert inputs.dataset.name == "blobs" and len(inputs.dataset.train_y) == 150
    expected = [np.flatnonzero((np.arange(150) + 3) % 5 == c) for c in range(5)]
    assert all(np.array_equal(part, want) for part, want in zip(inputs.parts, expected))
    model = inputs.server.model.build()
    assert model.fc1.out_features == 8 and model.fc2.out_features == 4
    assert type(inputs.server.aggregator).__name__ == "TrimmedMeanRule"
    assert type(inputs.threat.model_attack).__name__ == "ShiftAttack"


def test_the_modules_a_run_ships_to_its_workers():
    cfg = build_config(EVERY_KIND)
    assert plugin_modules(cfg) == ["byzlab_fixture_plugins.components"]
    assert plugin_modules(build_config({})) == []
    assert loaded_plugin_modules() == ["byzlab_fixture_plugins.components"]
    [root] = code_roots(plugin_modules(cfg))
    assert root.endswith("tests/fixtures/byzlab_fixture_plugins")
    assert code_roots(["numpy.linalg", "byzlab.aggregators.mean"]) == []  # installed code is never shipped


def test_a_registry_admits_an_import_path_on_first_use():
    """As in a Ray worker, which builds the model by name without having seen the config."""
    name = f"{P}tiny_mlp"
    MODELS._entries.pop(name, None)
    MODELS._origins.pop(name, None)
    assert MODELS.get(name).Params.model_fields["width"].default == 16


def test_an_import_path_to_a_registered_component_is_that_component():
    rule, builder = aggregators.aggregator_class("fedavg"), MODELS.get("mlp")
    cfg = build_config({}, [f"server.aggregator={rule.__module__}:{rule.__qualname__}",
                            f"model.name={builder.__module__}:{builder.__qualname__}"])
    assert cfg.server.aggregator == "fedavg" and cfg.model.name == "mlp"
    assert run_id(cfg) == run_id(build_config({}))
