import re

import pytest

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.config import ExperimentConfig, build_config, flatten, load_config, run_id


def test_defaults_are_the_quickstart():
    cfg = ExperimentConfig()
    assert cfg.data.dataset == "digits"
    assert cfg.clients.num_clients == 10 and cfg.clients.clients_per_round == 10
    assert cfg.partition.scheme == "dirichlet" and cfg.partition.beta == 0.5
    assert cfg.run.rounds == 20
    assert cfg.model.name == "mlp"  # auto resolves to the dataset's default
    assert cfg.server.aggregator_params == {"weighting": "samples"}  # defaults filled in


def test_resolved_config_leaves_out_other_schemes_parameters():
    partition = ExperimentConfig().to_dict()["partition"]
    assert partition == {"scheme": "dirichlet", "beta": 0.5, "min_samples": 10}
    assert build_config({}, ["partition.scheme=shards"]).partition.parameters() == {"classes_per_client": 2}


def test_overrides_parse_yaml_values():
    cfg = build_config({}, ["partition.beta=0.3", "clients.prox_mu=1e-2", "tracking.enabled=false",
                            "server.aggregator_params.weighting=uniform", "data.data_root=null"])
    assert cfg.partition.beta == 0.3 and cfg.clients.prox_mu == 0.01
    assert cfg.tracking.enabled is False
    assert cfg.server.aggregator_params["weighting"] == "uniform"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.dataset=imagenet"], "data.dataset: Input should be 'digits', 'fashion-mnist', 'mnist', 'emnist'"),
        (["partition.beta=0"], "partition.beta: Input should be greater than 0 (got 0)"),
        (["partition.beta=-1"], "partition.beta: Input should be greater than 0 (got -1)"),
        (["threat.fraction=0.5"], "threat.fraction: Input should be less than 0.5 (got 0.5)"),
        (["threat.fraction=-0.1"], "threat.fraction: Input should be greater than or equal to 0"),
        (["clients.clients_per_round=11"], "clients: clients_per_round (11) must be at most num_clients (10)"),
        (["server.aggregator=krumm"], "server: unknown aggregator 'krumm'; known: "),
        (["server.aggregator_params.weighting=size"], "server: aggregator 'fedavg' parameter 'weighting': Input should be 'samples' or 'uniform'"),
        (["server.aggregator_params.beta=1"], "server: aggregator 'fedavg' parameter 'beta': Extra inputs are not permitted"),
        (["partition.scheme=iid", "partition.beta=0.3"], "partition: 'beta' is not a parameter of scheme 'iid' (it takes: none)"),
        (["partition.sheme=iid"], "partition.sheme: unknown field"),
        (["run.device=tpu"], "run.device: Input should be 'auto', 'cpu' or 'cuda'"),
        (["run.client_actors=11"], "run.client_actors (11) must be at most clients.num_clients (10)"),
        (["run.rounds=0"], "run.rounds: Input should be greater than or equal to 1"),
        (["partition.beta"], "override 'partition.beta' must look like section.key=value"),
        (["run.rounds.x=1"], "'run.rounds.x': 'rounds' is a value, not a section"),
    ],
)
def test_bad_input_is_one_clear_line(overrides, expected):
    base = {"run": {"rounds": 5}}
    with pytest.raises(ConfigError) as err:
        build_config(base, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_yaml_file_and_errors(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("partition:\n  scheme: iid\nrun:\n  rounds: 3\n")
    cfg = load_config(path, ["run.seed=7"])
    assert cfg.partition.scheme == "iid" and cfg.run.rounds == 3 and cfg.run.seed == 7
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_run_id_is_the_experiment_not_its_placement():
    base = run_id(ExperimentConfig())
    assert run_id(build_config({}, ["run.output_dir=/elsewhere", "run.client_actors=2",
                                    "tracking.experiment=other", "run.checkpoint_every=1"])) == base
    assert run_id(build_config({}, ["run.seed=1"])) != base
    assert run_id(build_config({}, ["partition.beta=0.3"])) != base
    # explicit defaults are the same experiment as implicit ones
    assert run_id(build_config({}, ["partition.beta=0.5", "model.name=mlp"])) == base


def test_an_attack_variant_added_later_keeps_the_ids_of_runs_stored_before_it():
    byzmean = ["threat.attack=byzmean", "threat.fraction=0.2"]
    paper = run_id(build_config({}, byzmean))
    assert run_id(build_config({}, [*byzmean, "threat.attack_params.variant=paper"])) == paper
    assert build_config({}, byzmean).to_dict()["threat"]["attack_params"]["variant"] == "paper"  # still recorded
    assert run_id(build_config({}, [*byzmean, "threat.attack_params.variant=lasa_code"])) != paper


def test_a_defense_variant_added_later_keeps_the_ids_of_runs_stored_before_it():
    """The id this Sageflow run had before Sageflow had a ``variant`` (computed with commit b3447e0)."""
    sageflow = ["server.aggregator=sageflow", "threat.attack=sign_flip", "threat.fraction=0.2"]
    assert run_id(build_config({}, sageflow)) == "865163607e73"
    assert build_config({}, sageflow).to_dict()["server"]["aggregator_params"]["variant"] == "paper"
    assert run_id(build_config({}, [*sageflow, "server.aggregator_params.variant=sdea_code"])) != "865163607e73"


def test_the_label_flippers_recipe_added_later_keeps_their_ids():
    """The id this label-flipping run had before label_flip took local_epochs and lr (commit b3447e0)."""
    flip = ["threat.attack=label_flip", "threat.fraction=0.2", "threat.attack_params.source=1",
            "threat.attack_params.target=7"]
    assert run_id(build_config({}, flip)) == "4f596d318cd2"
    assert run_id(build_config({}, [*flip, "threat.attack_params.local_epochs=10"])) != "4f596d318cd2"


def test_the_success_rates_images_added_later_keep_the_backdoor_ids():
    """The id this backdoor run had before ``asr_images`` and the trigger's ``variant`` (commit b3447e0)."""
    backdoor = ["threat.attack=backdoor", "threat.fraction=0.2"]
    assert run_id(build_config({}, backdoor)) == "93ff61e187c9"
    assert run_id(build_config({}, [*backdoor, "threat.attack_params.asr_images=all"])) != "93ff61e187c9"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


@pytest.mark.parametrize("overrides, message", [
    (["server.aggregator=krum", "threat.fraction=0.4"], "server.aggregator 'krum': krum needs n > 2f + 2 updates per round: n=10, f=4"),
    (["server.aggregator=bulyan", "threat.fraction=0.2"], "server.aggregator 'bulyan': bulyan needs n >= 4f + 3 updates per round: n=10, f=2"),
    (["server.aggregator=trimmed_mean", "server.aggregator_params.trim=5"], "trimming more than half"),
    # the declared count, not the true one, is what the defense is configured with
    (["server.aggregator=krum", "threat.fraction=0.2", "threat.declared_byzantine=4"], "n=10, f=4"),
    # with client sampling, the expected number of malicious clients per round: ceil(2 * 5 / 10) = 1
    (["server.aggregator=bulyan", "threat.fraction=0.2", "clients.clients_per_round=5"], "n=5, f=1"),
])
def test_impossible_defense_settings_fail_at_validation(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({}, overrides)
    assert build_config({}, ["server.aggregator=krum", "threat.fraction=0.3"]).expected_byzantine() == 3


def test_model_parameters_are_flat_keys_and_defaults_stay_out_of_the_run_id():
    from byzlab.orchestrator.config import run_id

    plain = build_config({})
    explicit = build_config({}, ["model.dropout=0.0", "model.hidden=[200, 200]"])
    assert run_id(plain) == run_id(explicit) and plain.to_dict()["model"] == {"name": "mlp"}
    loan = build_config({}, ["model.hidden=[46, 23]", "model.dropout=0.2"])
    assert loan.model.parameters() == {"hidden": (46, 23), "dropout": 0.2} and run_id(loan) != run_id(plain)
    with pytest.raises(ConfigError, match=r"model: 'hidden' is not a parameter of model 'cnn' \(it takes: dropout\)"):
        build_config({}, ["data.dataset=fashion-mnist", "model.hidden=[10]"])
