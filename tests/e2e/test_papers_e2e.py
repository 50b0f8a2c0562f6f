"""End to end on digits (beta = 0.5, Phi = 0.2): the five papers' rules keep their accuracy under
sign_flip and byzmean (acc_last5_mean within 10 points of their own no-attack run)."""

import pytest

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import run_experiment

PAPERS = ["sdea", "lasa", "residual", "fedra", "pawbrofl"]
SDEA_SIGN_FLIP = pytest.mark.xfail(
    strict=True,
    reason="SDEA weighs clients by the entropy of the mixed model's predictions on public data; a sign-flipped "
    "update does not make those predictions less confident, so its weight is not reduced (SDEA §3.3): "
    "0.745 under attack vs 0.914 without",
)
# SDEA learns its weights for 20 epochs every round: its two cases take 65-70 s each, so both run with
# -m slow (sign flip is a documented limitation); SDEA's rule is unit-tested in the default suite.
# The other rules' byzmean cases (9-12 s each) run with -m slow too, to keep the default suite under 15
# minutes: it keeps each rule's sign-flip case, FedAvg collapsing under byzmean (test_threat_e2e) and LASA's
# stored run under byzmean (test_behaviour_unchanged).
SLOW = {("sdea", "sign_flip"): [SDEA_SIGN_FLIP, pytest.mark.slow]}
CASES = [
    pytest.param(rule, attack, marks=SLOW.get((rule, attack), [pytest.mark.slow] if attack == "byzmean" else []))
    for rule in PAPERS
    for attack in ("sign_flip", "byzmean")
]


def _run(output_dir, rule, *overrides):
    cfg = build_config({}, [f"run.output_dir={output_dir}", "tracking.enabled=false", f"server.aggregator={rule}",
                            "threat.fraction=0.2", *overrides])
    return run_experiment(cfg)


@pytest.fixture(scope="module")
def clean_accuracy(tmp_path_factory, ray_cluster):
    """Each rule's acc_last5_mean without attack, computed once per rule."""
    cache: dict[str, float] = {}

    def accuracy(rule: str) -> float:
        if rule not in cache:
            cache[rule] = _run(tmp_path_factory.mktemp(rule), rule).summary["acc_last5_mean"]
        return cache[rule]

    return accuracy


@pytest.mark.parametrize("rule, attack", CASES)
def test_papers_rules_keep_accuracy_under_attack(tmp_path, rule, attack, clean_accuracy):
    clean = clean_accuracy(rule)
    attacked = _run(tmp_path, rule, f"threat.attack={attack}").summary["acc_last5_mean"]
    assert attacked >= clean - 0.10, f"{rule} under {attack}: {attacked:.3f} vs {clean:.3f} without attack"


@pytest.mark.usefixtures("ray_cluster")
def test_fedra_excludes_attackers_that_enlarge_their_claimed_quantity(tmp_path):
    result = _run(tmp_path, "fedra", "threat.attack=sign_flip", "threat.quantity_attack=enlarge_quantity",
                  "threat.quantity_params.alpha_q=10")
    columns = result.metrics.to_pydict()
    assert all(tpr == 1.0 for tpr in columns["detection_tpr"])  # both attackers rejected in every round
    assert all(w == 0.0 for w in columns["malicious_weight"])
