"""benchmarks/fidelity.py without running a trial: it runs the ready LASA Table 1 sweeps' own FMNIST trials
(only shortened and placed on this machine), each once, and its table puts both variants beside the paper."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def trials(fidelity, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("fidelity"))
    return {
        variant: fidelity.reduced_sweep(sweep, rounds=20, defenses=fidelity.DEFENSES, attacks=fidelity.ATTACKS,
                                        output_dir=output).trials
        for variant, sweep in fidelity.SWEEPS.items()
    }


def test_the_reduced_row_is_the_sweeps_fmnist_trials(trials):
    """16 trials per sweep (4 defenses x 4 attacks, seed 0), FMNIST as LASA Table 1 and App. 7.2 set it up."""
    for variant, reduced in trials.items():
        assert len(reduced) == 16
        for trial in reduced:
            cfg = trial.config
            assert (cfg.data.dataset, cfg.model.name, cfg.partition.scheme) == ("fashion-mnist", "cnn", "iid")
            assert (cfg.clients.num_clients, cfg.clients.clients_per_round) == (6000, 100)
            assert (cfg.clients.lr, cfg.clients.momentum, cfg.threat.fraction) == (0.1, 0.9, 0.25)
            assert (cfg.run.rounds, cfg.run.eval_every, cfg.run.seed) == (20, 1, 0)
            assert not cfg.tracking.enabled and not cfg.data.download
            if cfg.server.aggregator == "lasa":  # FMNIST's λ_m (§5: 2.0 except on CIFAR)
                assert cfg.server.aggregator_params["lambda_m"] == 2.0
            if cfg.threat.attack != "none":
                assert cfg.threat.attack_params.get("variant", "paper") == variant


def test_no_attack_is_one_trial_of_both_sweeps_and_the_attacks_are_not(trials):
    ids = {variant: {t.run_id: t.config.threat.attack for t in reduced} for variant, reduced in trials.items()}
    shared = set(ids["paper"]) & set(ids["lasa_code"])
    assert len(shared) == 4 and {ids["paper"][i] for i in shared} == {"none"}
    assert len(set(ids["paper"]) | set(ids["lasa_code"])) == 28


def test_the_table_puts_code_and_paper_beside_the_published_number(fidelity):
    store = {
        "a": {"defense": "fedavg", "attack": "none", "variant": "paper", "acc_best": 0.734, "seconds": 150, "rounds": 20},
        "b": {"defense": "fedavg", "attack": "byzmean", "variant": "lasa_code", "acc_best": 0.1, "seconds": 160,
              "rounds": 20},
        "c": {"defense": "fedavg", "attack": "byzmean", "variant": "paper", "acc_best": 0.62, "seconds": 170,
              "rounds": 20},
        "d": {"defense": "fedavg", "attack": "byzmean", "variant": "paper", "acc_best": 0.5, "seconds": 9, "rounds": 1},
    }
    text = fidelity.table(store, rounds=20, defenses=["fedavg", "lasa"], attacks=["none", "byzmean"], command="cmd")
    assert "| FedAvg | 73.4 (86.28) | 10.0 / 62.0 (11.22) |" in text
    assert "| LASA | … (87.62) | … / … (87.65) |" in text  # not run yet
    assert "Trials: 3, 8.0 min in all" in text  # the 1-round trial belongs to another table
