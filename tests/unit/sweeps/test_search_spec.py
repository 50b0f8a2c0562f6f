"""Search spaces in sweep files (sweeps/search.py, sweeps/spec.py): distributions map onto Tune's own, every
searched setting is validated at both ends of each distribution before anything runs, with one clear line
for what does not fit; the running search metric; a sampled trial's config."""

from __future__ import annotations

import pytest
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.sweeps.search import Distribution, RunningObjective, SearchSpec, as_distribution
from byzlab.sweeps.spec import expand, parse_spec
from byzlab.sweeps.trainable import sampled_config

BASE = {"data": {"dataset": "digits"}, "run": {"rounds": 3}, "threat": {"fraction": 0.2}}
LASA = {"lasa": {"lambda_m": {"uniform": [0.5, 3.0]}, "sparsity": {"uniform": [0.1, 0.9]}}}


def _sweep(**spec):
    return expand(parse_spec({"base": BASE, **spec}, "test"))


@pytest.mark.parametrize(("written", "domain", "extremes"), [
    ({"uniform": [0.5, 3]}, Float, [0.5, 3]),
    ({"loguniform": [1e-4, 0.1]}, Float, [1e-4, 0.1]),
    ({"randint": [1, 10]}, Integer, [1, 9]),  # Tune's upper bound is exclusive
    ({"choice": ["std", "sign"]}, Categorical, ["std", "sign"]),
])
def test_distributions_are_tunes_own(written, domain, extremes):
    distribution = as_distribution(written, "x")
    assert isinstance(distribution.domain(), domain)
    assert distribution.extremes() == extremes
    assert as_distribution([0.5, 3], "x") is None and as_distribution({"z": 1}, "x") is None  # lists, params


@pytest.mark.parametrize(("written", "message"), [
    ({"uniform": [3, 1]}, "x: uniform needs low < high"),
    ({"loguniform": [0, 1]}, "x: loguniform needs 0 < low < high"),
    ({"randint": [1.5, 4]}, "x: randint needs two integers"),
    ({"uniform": [1]}, r"x: uniform needs \[low, high\]"),
    ({"choice": []}, "x: choice needs a non-empty list"),
])
def test_a_malformed_distribution_is_one_line_naming_it(written, message):
    with pytest.raises(ValueError, match=message):
        as_distribution(written, "x")


def test_a_searched_setting_knows_its_parameters_and_their_defaults():
    """LASA's defaults (λ_m 1, sparsity 0.3) are what each sample starts from and the search's first point."""
    (trial,) = _sweep(defenses=LASA, attacks={"byzmean": {}}, search={"num_samples": 4}).trials
    assert {name: (s.key, str(s.distribution), s.default) for name, s in trial.searched.items()} == {
        "lasa:server.aggregator_params.lambda_m": ("server.aggregator_params.lambda_m", "uniform(0.5, 3.0)", 1.0),
        "lasa:server.aggregator_params.sparsity": ("server.aggregator_params.sparsity", "uniform(0.1, 0.9)", 0.3),
    }
    assert (trial.config.server.aggregator_params["lambda_m"], trial.config.server.aggregator_params["sparsity"]) == (
        1.0, 0.3)


def test_a_worst_case_search_may_search_the_attacks_schedule():
    sweep = _sweep(grid={"threat.start_round": {"randint": [1, 3]}}, defenses={"median": {}},
                   attacks={"sign_flip": {}}, search={"num_samples": 2}, objective="worst_attack")
    assert [s.key for s in sweep.trials[0].searched.values()] == ["threat.start_round"]


def test_grid_and_search_mix_and_a_parameter_without_default_value_is_none():
    sweep = _sweep(grid={"partition.beta": [0.3, 0.5]}, defenses={"median": {}},
                   attacks={"lie": {"z": {"uniform": [0.1, 3.0]}}}, search={"num_samples": 2},
                   objective="worst_attack")
    assert [t.labels["β"] for t in sweep.trials] == ["0.3", "0.5"]
    assert [s.default for t in sweep.trials for s in t.searched.values()] == [None, None]  # LIE's z_max


@pytest.mark.parametrize(("spec", "message"), [
    ({"defenses": LASA}, "'server.aggregator_params.lambda_m' is a distribution: add a `search:` section"),
    ({"defenses": {"median": {}}, "search": {"num_samples": 2}}, "search: no value of the sweep is a distribution"),
    ({"defenses": {"lasa": {"sparsity": {"uniform": [0.1, 1.5]}}}, "search": {"num_samples": 2}},
     r"server.aggregator_params.sparsity=1.5, in its distribution uniform\(0.1, 1.5\)"),
    ({"grid": {"run.rounds": {"randint": [1, 5]}}, "search": {"num_samples": 2}},
     "'run.rounds': run.\\*, data.\\* and tracking.\\* keys are not searched"),
    ({"defenses": LASA, "attacks": {"lie": {}}, "search": {"num_samples": 2}, "objective": "worst_attack"},
     "objective worst_attack searches the parameters of the `attacks` block and the attack's schedule"),
    ({"defenses": {"median": {}, "lasa": {"sparsity": {"uniform": [0.1, 0.5]}}},
      "search": {"num_samples": 2, "algorithm": "optuna"}}, "a model-based searcher searches one setting"),
    ({"defenses": LASA, "search": {"num_samples": 2, "metric": "accuracy"}},
     "search.metric: 'accuracy' is not one of: acc_last5_mean"),
])
def test_what_cannot_be_searched_is_one_line_before_anything_runs(spec, message):
    with pytest.raises(ConfigError, match=message):
        _sweep(**spec)


def test_search_algorithms_are_tunes():
    assert SearchSpec(num_samples=2, algorithm="optuna").algorithm == "optuna"
    with pytest.raises(ValueError, match="'tpe' is not one of: random, "):
        SearchSpec(num_samples=2, algorithm="tpe")


def test_a_grid_sweep_has_no_search():
    sweep = _sweep(defenses={"median": {}, "fedavg": {}})
    assert not sweep.searching and all(not t.searched for t in sweep.trials)


def test_the_running_objective_is_the_summary_of_the_rounds_so_far():
    rows = [{"test_accuracy": a, "backdoor_asr": b} for a, b in
            [(0.5, 0.9), (None, None), (0.7, 0.8), (0.6, 0.1), (0.8, 0.1), (0.9, 0.2), (0.4, 0.3)]]
    assert RunningObjective("acc_best", rows).add({}) == 0.9
    assert RunningObjective("acc_final", rows).add({}) == 0.4
    assert RunningObjective("acc_last5_mean", rows).add({}) == pytest.approx((0.7 + 0.6 + 0.8 + 0.9 + 0.4) / 5)
    assert RunningObjective("backdoor_asr", rows).add({}) == pytest.approx((0.8 + 0.1 + 0.1 + 0.2 + 0.3) / 5)
    running = RunningObjective("acc_best")
    assert running.add({"test_accuracy": None}) is None and running.add({"test_accuracy": 0.3}) == 0.3


def test_a_sample_sets_the_parameters_its_setting_searches_and_is_validated():
    (trial,) = _sweep(defenses=LASA, search={"num_samples": 2}).trials
    config = {"config": trial.config.to_dict(), "searched": {n: s.key for n, s in trial.searched.items()}}
    cfg = sampled_config(config, {"lasa:server.aggregator_params.lambda_m": 2.5,
                                  "lasa:server.aggregator_params.sparsity": 0.4, "other:x": 1})
    assert (cfg.server.aggregator_params["lambda_m"], cfg.server.aggregator_params["sparsity"]) == (2.5, 0.4)
    with pytest.raises(ConfigError, match="sampled server.aggregator_params.lambda_m=-1.0"):
        sampled_config(config, {"lasa:server.aggregator_params.lambda_m": -1.0})


def test_distribution_contains():
    assert Distribution("uniform", (0.5, 3.0)).contains(3.0) and not Distribution("uniform", (0.5, 3.0)).contains(None)
    assert not Distribution("randint", (1, 4)).contains(4) and Distribution("choice", ("a", "b")).contains("b")
    assert isinstance(Distribution("choice", ("a",)).domain(), type(tune.choice(["a"])))


def test_a_worst_case_search_maximises_a_backdoors_success_rate_and_minimises_accuracy_otherwise():
    from byzlab.sweeps.runner import backdoor_metric, search_objective
    from byzlab.sweeps.search import is_backdoor

    assert is_backdoor("backdoor") and is_backdoor("dba") and not is_backdoor("lie") and not is_backdoor("label_flip")
    sweep = _sweep(defenses={"median": {}}, objective="worst_attack", search={"num_samples": 2},
                   attacks={"lie": {"z": {"uniform": [0.1, 3.0]}},
                            "backdoor": {"poisoned_per_batch": {"randint": [1, 20]}}})
    assert search_objective(sweep.spec) == ("acc_last5_mean", "min")
    by_attack = {t.config.threat.attack: t.index for t in sweep.trials}
    assert backdoor_metric(sweep) == {by_attack["backdoor"]: "backdoor_asr"}
    tuning = _sweep(defenses=LASA, search={"num_samples": 2})
    assert search_objective(tuning.spec) == ("acc_last5_mean", "max") and backdoor_metric(tuning) == {}
