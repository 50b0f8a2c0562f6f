"""End to end on digits (beta = 0.5, Phi = 0.2): filtering rules withstand a sign-flip attack that
collapses FedAvg."""

import pytest

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import run_experiment

ATTACK = ["threat.fraction=0.2", "threat.attack=sign_flip", "threat.attack_params.scale=4"]
FILTERING = ["krum", "multi_krum", "bulyan", "median", "trimmed_mean", "geomed", "dnc", "signguard", "fltrust"]
# Bulyan needs n >= 4f + 3: with 10 clients it can be told at most f = 1 (the run has 2 attackers).
EXTRA = {"bulyan": ["threat.declared_byzantine=1"]}


def _final_accuracy(tmp_path, rule):
    cfg = build_config({}, [f"run.output_dir={tmp_path}", "tracking.enabled=false", f"server.aggregator={rule}",
                            *ATTACK, *EXTRA.get(rule, [])])
    return run_experiment(cfg).summary["acc_final"]


@pytest.fixture(scope="module")
def fedavg_accuracy(tmp_path_factory, ray_cluster):
    return _final_accuracy(tmp_path_factory.mktemp("fedavg"), "fedavg")


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("rule", FILTERING)
def test_filtering_rule_beats_fedavg_under_sign_flip(tmp_path, rule, fedavg_accuracy):
    assert fedavg_accuracy < 0.3  # the attack does collapse the mean
    assert _final_accuracy(tmp_path, rule) > fedavg_accuracy + 0.4


@pytest.mark.usefixtures("ray_cluster")
def test_an_adaptive_server_optimizer_steps_along_the_robust_aggregate(tmp_path):
    """FedYogi (Reddi et al., 2021) on the aggregate: behind the median it still learns under the attack,
    behind the mean it collapses as plain FedAvg does."""
    yogi = ["server.optimizer=fedyogi", "server.lr=0.03", "run.rounds=10", "tracking.enabled=false", *ATTACK]
    median, mean = (
        run_experiment(build_config({}, [f"run.output_dir={tmp_path / rule}", f"server.aggregator={rule}", *yogi]))
        for rule in ("median", "fedavg")
    )
    assert median.summary["acc_last5_mean"] > 0.8
    assert mean.summary["acc_last5_mean"] < 0.3
