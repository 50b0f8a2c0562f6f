"""sweeps.spec: parsing a sweep file and expanding it into validated trials (no Ray, nothing is run)."""

from __future__ import annotations

import pytest
import yaml

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.config import run_id
from byzlab.sweeps.spec import PACKAGED_SWEEPS, load_sweep, parse_spec, expand, resolve_path

# Φ = 0.2 of 10 clients = 2 malicious: every aggregator used below accepts that, attacks need fraction > 0.
BASE = {"threat": {"fraction": 0.2}, "run": {"rounds": 2}}


def _expand(raw: dict, name: str = "t"):
    return expand(parse_spec(raw, name))


def _error(raw: dict, name: str = "t") -> str:
    with pytest.raises(ConfigError) as info:
        _expand(raw, name)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


# 2 beta x (none + sign_flip with 2 scales = 3 attack variants) x (fedavg + lasa with 2 sparsities = 3 defense
# variants) x 2 seeds = 2 * 3 * 3 * 2 = 36 trials. clients.lr has one value: fixed, not swept.
FULL = {
    "base": BASE,
    "grid": {"partition.beta": [0.3, 0.5], "clients.lr": [0.1]},
    "attacks": {"none": {}, "sign_flip": {"scale": [2, 4]}},
    "defenses": {"fedavg": {}, "lasa": {"sparsity": [0.1, 0.3], "lambda_m": 2}},
    "seeds": [0, 1],
}


def _key(trial) -> tuple:
    return trial.labels["β"], trial.labels["attack"], trial.labels["defense"], trial.labels["seed"]


# --- counting and order --------------------------------------------------------------------------------


def test_trial_count_is_the_product():
    sweep = _expand(FULL)
    assert len(sweep.trials) == 36
    assert [t.index for t in sweep.trials] == list(range(36))
    assert sweep.spec.name == "t"


def test_order_is_grid_point_then_attack_then_defense_then_seed():
    trials = _expand(FULL).trials
    # A block's variant replaces the base's parameters ({}), then sets its own.
    fixed = {"partition.beta": 0.3, "clients.lr": 0.1}
    none = {"threat.attack": "none", "threat.attack_params": {}}
    fedavg = {"server.aggregator": "fedavg", "server.aggregator_params": {}}
    lasa = {"server.aggregator": "lasa", "server.aggregator_params": {}, "server.aggregator_params.lambda_m": 2}
    assert [t.overrides for t in trials[:6]] == [
        {**fixed, **none, **fedavg, "run.seed": 0},
        {**fixed, **none, **fedavg, "run.seed": 1},
        {**fixed, **none, **lasa, "server.aggregator_params.sparsity": 0.1, "run.seed": 0},
        {**fixed, **none, **lasa, "server.aggregator_params.sparsity": 0.1, "run.seed": 1},
        {**fixed, **none, **lasa, "server.aggregator_params.sparsity": 0.3, "run.seed": 0},
        {**fixed, **none, **lasa, "server.aggregator_params.sparsity": 0.3, "run.seed": 1},
    ]
    # index = 18 * beta + 6 * attack + 2 * defense + seed
    assert trials[6].overrides == {
        **fixed, "threat.attack": "sign_flip", "threat.attack_params": {}, "threat.attack_params.scale": 2,
        **fedavg, "run.seed": 0,
    }
    assert _key(trials[6]) == ("0.3", "sign_flip (scale=2)", "fedavg", "0")
    assert _key(trials[13]) == ("0.3", "sign_flip (scale=4)", "fedavg", "1")
    assert _key(trials[18]) == ("0.5", "none", "fedavg", "0")
    assert _key(trials[35]) == ("0.5", "sign_flip (scale=4)", "lasa (sparsity=0.3)", "1")
    assert len({_key(t) for t in trials}) == 36


def test_exclude_drops_matching_trials():
    # beta 0.3 with either sign_flip: 2 attack variants x 3 defenses x 2 seeds = 12 dropped.
    one = _expand({**FULL, "exclude": [{"partition.beta": 0.3, "threat.attack": "sign_flip"}]}).trials
    assert len(one) == 24
    assert not any(t.labels["β"] == "0.3" and t.labels["attack"].startswith("sign_flip") for t in one)
    assert [t.index for t in one] == list(range(24))
    # plus sparsity 0.1: 2 beta x 3 attacks x 2 seeds = 12, of which 2 x 1 x 2 = 4 already dropped: 36 - 20.
    two = _expand({**FULL, "exclude": [
        {"partition.beta": 0.3, "threat.attack": "sign_flip"},
        {"server.aggregator_params.sparsity": 0.1},
    ]}).trials
    assert len(two) == 16
    assert "lasa (sparsity=0.1)" not in {t.labels["defense"] for t in two}
    # excluding one seed halves it
    assert len(_expand({**FULL, "exclude": [{"run.seed": 1}]}).trials) == 18


# --- defense / attack parameter grids ------------------------------------------------------------------


def test_parameter_lists_are_swept_and_scalars_fixed():
    trials = _expand(FULL).trials
    by_defense = {}
    for t in trials:
        by_defense.setdefault(t.labels["defense"], []).append(t)
    assert set(by_defense) == {"fedavg", "lasa (sparsity=0.1)", "lasa (sparsity=0.3)"}
    for label, sparsity in (("lasa (sparsity=0.1)", 0.1), ("lasa (sparsity=0.3)", 0.3)):
        for t in by_defense[label]:
            assert t.config.server.aggregator == "lasa"
            assert t.config.server.aggregator_params["sparsity"] == sparsity
            assert t.config.server.aggregator_params["lambda_m"] == 2  # fixed scalar, not in the label
            assert t.config.server.aggregator_params["lambda_d"] == 1.0  # the rule's default
    for t in by_defense["fedavg"]:
        assert t.config.server.aggregator == "fedavg"
        assert t.config.server.aggregator_params == {"weighting": "samples"}
    scales = {t.labels["attack"]: t.config.threat.attack_params.get("scale") for t in trials}
    assert scales == {"none": None, "sign_flip (scale=2)": 2.0, "sign_flip (scale=4)": 4.0}


def test_labels_name_only_swept_parameters():
    trials = _expand({
        "base": BASE,
        "defenses": {"median": {}, "lasa": {"sparsity": [0.1, 0.5], "lambda_m": [1, 2], "lambda_d": 1.5}},
    }).trials
    assert [t.labels["defense"] for t in trials] == [
        "median",
        "lasa (sparsity=0.1, lambda_m=1)",
        "lasa (sparsity=0.1, lambda_m=2)",
        "lasa (sparsity=0.5, lambda_m=1)",
        "lasa (sparsity=0.5, lambda_m=2)",
    ]
    assert all(t.config.server.aggregator_params["lambda_d"] == 1.5 for t in trials[1:])


def test_single_value_parameter_list_is_fixed_and_unlabelled():
    (trial,) = _expand({"base": BASE, "defenses": {"lasa": {"sparsity": [0.2]}}}).trials
    assert trial.labels["defense"] == "lasa"
    assert trial.config.server.aggregator_params["sparsity"] == 0.2


def test_mapping_valued_parameter_is_one_fixed_value():
    # No aggregator or attack has a list-valued parameter (byzlab list aggregators / attacks); byzmean's
    # base_params is the only non-scalar one: a mapping, passed through whole, not swept.
    (trial,) = _expand({"base": BASE, "attacks": {"byzmean": {"base_params": {"z": 2}}}}).trials
    assert trial.labels["attack"] == "byzmean"
    assert trial.overrides["threat.attack_params.base_params"] == {"z": 2}
    assert trial.config.threat.attack_params["base_params"] == {"z": 2}


def test_empty_parameter_list_is_an_error():
    with pytest.raises(ConfigError, match="sparsity"):
        _expand({"base": BASE, "defenses": {"fedavg": {}, "lasa": {"sparsity": []}}})


# --- labels -------------------------------------------------------------------------------------------


def test_grid_labels_use_short_names_for_swept_keys_only():
    trials = _expand({
        "base": BASE,
        "grid": {
            "partition.beta": [0.3, 1.0],
            "threat.fraction": [0.1, 0.2],
            "clients.local_epochs": [1, 3],
            "clients.lr": [0.02],
            "run.rounds": [5],
        },
    }).trials
    assert len(trials) == 8
    assert trials[0].labels == {
        "β": "0.3", "Φ": "0.1", "local_epochs": "1", "attack": "none", "defense": "fedavg", "seed": "0",
    }
    assert trials[7].labels == {
        "β": "1.0", "Φ": "0.2", "local_epochs": "3", "attack": "none", "defense": "fedavg", "seed": "0",
    }
    assert trials[7].config.clients.lr == 0.02 and trials[7].config.run.rounds == 5


def test_grid_swept_aggregator_is_the_defense_label():
    trials = _expand({"base": BASE, "grid": {"server.aggregator": ["fedavg", "median"]}}).trials
    assert [t.config.server.aggregator for t in trials] == ["fedavg", "median"]
    assert [t.labels["defense"] for t in trials] == ["fedavg", "median"]


def test_grid_swept_attack_is_the_attack_label():
    trials = _expand({"base": BASE, "grid": {"threat.attack": ["none", "sign_flip"]}}).trials
    assert [t.config.threat.attack for t in trials] == ["none", "sign_flip"]
    assert [t.labels["attack"] for t in trials] == ["none", "sign_flip"]


# --- seeds --------------------------------------------------------------------------------------------


def test_seeds_default_to_the_base_seed():
    (trial,) = _expand({"base": {**BASE, "run": {"rounds": 2, "seed": 7}}}).trials
    assert trial.overrides == {"run.seed": 7}
    assert trial.labels["seed"] == "7"
    assert trial.config.run.seed == 7


def test_seeds_list_sets_run_seed():
    trials = _expand({"base": BASE, "seeds": [3, 11, 5]}).trials
    assert [t.config.run.seed for t in trials] == [3, 11, 5]
    assert [t.labels["seed"] for t in trials] == ["3", "11", "5"]


def test_run_seed_in_grid_points_to_seeds():
    assert _error({"base": BASE, "grid": {"run.seed": [0, 1]}}) == (
        "grid: 'run.seed' is swept with the top-level `seeds` list"
    )


def test_empty_seeds_list_is_an_error():
    assert _error({"base": BASE, "seeds": []}).startswith("seeds: ")


# --- errors -------------------------------------------------------------------------------------------


def test_empty_grid_list():
    assert _error({"base": BASE, "grid": {"partition.beta": []}}) == "grid: 'partition.beta' has no values"


def test_the_report_metric_is_one_of_the_summaries():
    assert parse_spec({"base": BASE}, "t").report.metric == "acc_last5_mean"
    assert parse_spec({"base": BASE, "report": {"metric": "acc_best"}}, "t").report.metric == "acc_best"
    assert _error({"base": BASE, "report": {"metric": "accuracy"}}) == (
        "report.metric: 'accuracy' is not one of: acc_last5_mean, acc_best, acc_final, backdoor_asr")


def test_unknown_grid_key_is_named():
    message = _error({"base": BASE, "grid": {"partition.betta": [0.3, 0.5]}})
    assert message.startswith("2 of 2 trials are invalid")
    assert "partition.betta: unknown field" in message


def test_invalid_combination_counts_and_suggests_exclude():
    # krum needs n > 2f + 2: with 10 clients Φ = 0.4 gives f = 4 (10 > 10 fails), Φ = 0.2 gives f = 2.
    # Order: Φ 0.2 -> median s0, s1, krum s0, s1 (0-3); Φ 0.4 -> median 4, 5, krum 6, 7: trials 6 and 7 fail.
    raw = {
        "base": BASE,
        "grid": {"threat.fraction": [0.2, 0.4]},
        "defenses": {"median": {}, "krum": {}},
        "seeds": [0, 1],
    }
    message = _error(raw)
    assert message.startswith("2 of 8 trials are invalid (drop invalid combinations with `exclude`); first: trial 6 (")
    assert "threat.fraction=0.4" in message and "server.aggregator=krum" in message
    assert "krum needs n > 2f + 2" in message
    fixed = _expand({**raw, "exclude": [{"server.aggregator": "krum", "threat.fraction": 0.4}]})
    assert len(fixed.trials) == 6
    assert not any(t.config.server.aggregator == "krum" and t.config.threat.fraction == 0.4 for t in fixed.trials)


def test_exclude_with_key_the_sweep_does_not_set():
    message = _error({"base": BASE, "grid": {"partition.beta": [0.3, 0.5]}, "exclude": [
        {"partition.beta": 0.3}, {"data.dataset": "digits"},
    ]})
    assert message == "exclude[1]: 'data.dataset' is not a key this sweep sets"


def test_exclude_server_aggregator_without_defenses_block_is_not_set():
    message = _error({"base": BASE, "exclude": [{"server.aggregator": "fedavg"}]})
    assert message == "exclude[0]: 'server.aggregator' is not a key this sweep sets"


def test_everything_excluded():
    assert _error({"base": BASE, "exclude": [{"run.seed": 0}]}) == "the sweep has no trials left after `exclude`"


def test_duplicate_trials_are_the_same_experiment():
    message = _error({"base": BASE, "defenses": {"lasa": {"sparsity": [0.3, 0.3]}}})
    assert message.startswith("trials 0 and 1 are the same experiment (")
    assert "server.aggregator_params.sparsity=0.3" in message and "remove the duplicate value" in message


def test_duplicate_seeds_are_the_same_experiment():
    assert _error({"base": BASE, "seeds": [4, 4]}).startswith("trials 0 and 1 are the same experiment (")


@pytest.mark.parametrize("block, variants, key, values", [
    ("defenses", {"lasa": {}}, "server.aggregator", ["lasa", "median"]),
    ("defenses", {"lasa": {}}, "server.aggregator_params.sparsity", [0.1, 0.2]),
    ("attacks", {"lie": {}}, "threat.attack", ["lie", "noise"]),
    ("attacks", {"lie": {}}, "threat.attack_params.z", [1, 2]),
])
def test_grid_key_owned_by_a_block(block, variants, key, values):
    message = _error({"base": BASE, block: variants, "grid": {key: values}})
    assert message == f"grid.{key}: set by the `{block}` block; sweep it there"


def test_block_owned_keys_allowed_in_grid_without_the_block():
    trials = _expand({"base": {**BASE, "server": {"aggregator": "lasa"}},
                      "grid": {"server.aggregator_params.sparsity": [0.1, 0.2]}}).trials
    assert [t.config.server.aggregator_params["sparsity"] for t in trials] == [0.1, 0.2]
    assert [t.labels["sparsity"] for t in trials] == ["0.1", "0.2"]


def test_unknown_top_level_key():
    assert _error({"base": BASE, "grids": {"partition.beta": [0.3]}}) == "grids: unknown field"


@pytest.mark.parametrize("name", ["my sweep", "a/b", "sweep!", ""])
def test_bad_name_characters(name):
    message = _error({"name": name, "base": BASE})
    assert message.startswith("name: String should match pattern")
    assert repr(name) in message


def test_dot_dot_name_is_rejected():
    with pytest.raises(ConfigError, match="name"):
        _expand({"name": "..", "base": BASE})


def test_good_name_is_kept():
    assert _expand({"name": "lasa_v2.1-b", "base": BASE}).spec.name == "lasa_v2.1-b"


@pytest.mark.parametrize("block", ["defenses", "attacks"])
def test_empty_variant_block(block):
    assert _error({"base": BASE, block: {}}) == (
        f"{block}: lists no entry; leave it out to keep the base config's choice"
    )


def test_invalid_base_is_reported():
    assert _error({"base": {"partition": {"beta": -1}}}) == (
        "partition.beta: Input should be greater than 0 (got -1)"
    )


# --- run ids ------------------------------------------------------------------------------------------


def test_run_id_is_the_config_hash_and_unique():
    trials = _expand(FULL).trials
    for t in trials:
        assert t.run_id == run_id(t.config)
        assert len(t.run_id) == 12
    assert len({t.run_id for t in trials}) == 36


def test_run_id_ignores_output_dir(tmp_path):
    a = _expand(FULL).trials
    moved = {**FULL, "base": {**BASE, "run": {**BASE["run"], "output_dir": str(tmp_path / "elsewhere")}}}
    b = _expand(moved).trials
    assert [t.config.run.output_dir for t in b] == [str(tmp_path / "elsewhere")] * 36
    assert a[0].config.run.output_dir == "byzlab-results"
    assert [t.run_id for t in a] == [t.run_id for t in b]


def test_run_id_changes_with_a_number_changing_field():
    a = _expand({"base": BASE}).trials[0].run_id
    b = _expand({"base": {**BASE, "run": {"rounds": 3}}}).trials[0].run_id
    assert a != b


# --- files --------------------------------------------------------------------------------------------


def test_resolve_path_existing_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: {}\n")
    assert resolve_path(path) == path
    assert resolve_path(str(path)) == path


def test_resolve_path_packaged_name():
    assert resolve_path("quickstart") == PACKAGED_SWEEPS / "quickstart.yaml"
    assert resolve_path("quickstart").is_file()


def test_resolve_path_unknown_lists_ready_sweeps():
    with pytest.raises(ConfigError) as info:
        resolve_path("no_such_sweep")
    message = str(info.value)
    assert message.startswith("sweep file 'no_such_sweep' does not exist (ready sweeps: ")
    ready = message.split("(ready sweeps: ", 1)[1].rstrip(")").split(", ")
    assert ready == sorted(ready)
    assert {"quickstart", "lasa_table1", "sdea_table7_mnist", "pawbrofl_mu"} <= set(ready)


def test_load_sweep_without_name_uses_the_stem(tmp_path):
    path = tmp_path / "beta_scan.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "grid": {"partition.beta": [0.1, 0.9]}}))
    sweep = load_sweep(path)
    assert sweep.spec.name == "beta_scan"
    assert [t.config.partition.beta for t in sweep.trials] == [0.1, 0.9]


def test_load_sweep_name_in_file_wins(tmp_path):
    path = tmp_path / "file_stem.yaml"
    path.write_text(yaml.safe_dump({"name": "given", "base": BASE}))
    assert load_sweep(path).spec.name == "given"


def test_load_sweep_stem_with_bad_characters(tmp_path):
    path = tmp_path / "my sweep.yaml"
    path.write_text(yaml.safe_dump({"base": BASE}))
    with pytest.raises(ConfigError, match="^name: String should match pattern"):
        load_sweep(path)


def test_load_packaged_quickstart():
    sweep = load_sweep("quickstart")
    assert sweep.spec.name == "quickstart"
    # 4 defenses x 3 attacks x 1 seed
    assert len(sweep.trials) == 12
    assert [t.labels["defense"] for t in sweep.trials[:4]] == ["fedavg", "median", "lasa", "fedra"]
    assert [t.labels["attack"] for t in sweep.trials[::4]] == ["none", "sign_flip", "byzmean"]


def test_coupled_grid_keys_move_together_and_are_labelled_by_their_first_key():
    raw = {**FULL, "grid": {"partition.beta": [0.3, 0.5],
                            "clients.lr, clients.local_epochs, threat.fraction": [[0.1, 1, 0.2], [0.05, 3, 0.3]]},
           "attacks": {"none": {}}, "defenses": {"fedavg": {}}, "seeds": [0]}
    sweep = _expand(raw)
    settings = [(t.config.partition.beta, t.config.clients.lr, t.config.clients.local_epochs,
                 t.config.threat.fraction) for t in sweep.trials]
    assert settings == [(0.3, 0.1, 1, 0.2), (0.3, 0.05, 3, 0.3), (0.5, 0.1, 1, 0.2), (0.5, 0.05, 3, 0.3)]
    assert [t.labels["lr"] for t in sweep.trials] == ["0.1", "0.05", "0.1", "0.05"]
    assert not {"local_epochs", "Φ"} & set(sweep.trials[0].labels)


@pytest.mark.parametrize("rows", [[[0.1, 1], [0.05]], [0.1, 0.05], {"uniform": [0.01, 0.1]}])
def test_coupled_grid_keys_need_rows_of_one_value_per_key(rows):
    message = _error({**FULL, "grid": {"clients.lr, clients.local_epochs": rows}})
    assert "coupled keys take a list of rows, each a list of 2 values" in message


def test_coupled_grid_keys_are_grid_keys_for_exclude_and_the_report():
    raw = {**FULL, "grid": {"clients.lr, clients.local_epochs": [[0.1, 1], [0.05, 3]]},
           "exclude": [{"clients.local_epochs": 3, "server.aggregator": "lasa"}],
           "report": {"defense_keys": ["clients.local_epochs"]}}
    sweep = _expand(raw)
    assert {(t.config.server.aggregator, t.config.clients.local_epochs) for t in sweep.trials} == {
        ("fedavg", 1), ("fedavg", 3), ("lasa", 1)}
    message = _error({**raw, "report": {"attack_keys": ["clients.momentum"]}})
    assert "report.attack_keys: 'clients.momentum' is not a grid key of this sweep" in message


def test_a_sweep_cut_to_fewer_defenses_drops_the_excludes_that_no_longer_apply():
    from byzlab.sweeps.spec import drop_stale_excludes

    raw = yaml.safe_load(resolve_path("lasa_table1").read_text())
    raw["defenses"] = {"lasa": raw["defenses"]["lasa"]}
    with pytest.raises(ConfigError, match="'server.aggregator_params.variant' is not a key this sweep sets"):
        expand(parse_spec(raw, "cut"))
    cut = drop_stale_excludes(raw)
    # GeoMed's variant and the clipped defenses' entries go; λ_m's and the clip's dataset entries stay
    assert all("server.aggregator_params.variant" not in e for e in cut["exclude"])
    assert {"data.dataset": "fashion-mnist", "server.aggregator_params.lambda_m": 1.0} in cut["exclude"]
    assert {"clients.update_clip": 1.0, "server.aggregator": "lasa"} in cut["exclude"]
    assert not any(e.get("server.aggregator") == "fedavg" for e in cut["exclude"])
    sweep = expand(parse_spec(cut, "cut"))
    assert {(t.config.data.dataset, t.config.server.aggregator_params["lambda_m"], t.config.clients.update_clip)
            for t in sweep.trials} == {("fashion-mnist", 2.0, None), ("cifar10", 1.0, None), ("cifar100", 1.0, None)}
