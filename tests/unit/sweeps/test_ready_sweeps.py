"""The ready-to-run sweep files in sweeps/*.yaml: every one expands and validates, documents itself, and the
paper reproductions cover the settings their tables report. Expansion only: nothing is run."""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path

import pytest

from byzlab.sweeps.spec import PACKAGED_SWEEPS, Sweep, load_sweep

SWEEP_FILES = sorted(PACKAGED_SWEEPS.glob("*.yaml"))

# The paper reproductions: their header states the number of trials on a "# Trials: N ..." line.
PAPER_SWEEPS = [
    "sdea_table4_cifar10",
    "sdea_table7_mnist",
    "sdea_table8_fashion_mnist",
    "lasa_table1",
    "lasa_tables5_6",
    "lasa_table4",
    "lasa_table1_paper",
    "lasa_tables5_6_paper",
    "lasa_table4_paper",
    "sdea_table4_cifar10_paper",
    "sdea_table7_mnist_paper",
    "sdea_table8_fashion_mnist_paper",
    "residual_table6",
    "residual_tables1_3",
    "residual_table6_paper",
    "residual_tables1_3_paper",
    "fedra_quantity",
    "fedra_table3",
    "pawbrofl_mu",
    "pawbrofl_mu_paper",
]

SDEA_ATTACKS = {"pair_flip", "symmetric_flip", "random", "lie", "min_max", "min_sum"}
LASA_ATTACKS = {"none", "random", "noise", "sign_flip", "tailored_trmean", "min_max", "min_sum", "lie", "byzmean"}
LASA_CODE_ATTACKS = {"tailored_trmean", "min_max", "min_sum", "lie", "byzmean"}  # the code departs from the text
# Each LASA sweep runs the authors' code of the attacks (what produced the published numbers); its twin, the
# paper's definitions.
LASA_TWINS = {"": "lasa_code", "_paper": "paper"}
# The residual sweeps run the authors' code of the rule (its line and tau set explicitly); the twins, Algorithm 1.
RESIDUAL_TWINS = {
    "": {"variant": "residual_code", "intercept": "median", "eps": 1e-7},
    "_paper": {"variant": "paper", "intercept": "separate", "eps": 1e-30},
}


def _assert_lasa_attacks(sweep: Sweep, variant: str) -> None:
    """App. 7.3's settings (N(0, 0.5²) noise; Lie with z = 0.5, ByzMean over it) in the paper's variant, the
    authors' code (its own z = 0.5 and ByzMean) in the other."""
    for t in sweep.trials:
        attack, p = t.config.threat.attack, t.config.threat.attack_params
        if attack in LASA_CODE_ATTACKS:
            assert p["variant"] == variant, (attack, p)
        if attack in ("random", "noise"):
            assert p["sigma"] == 0.5
        if variant == "paper" and attack == "lie":
            assert p["z"] == 0.5
        if variant == "paper" and attack == "byzmean":
            assert (p["base"], p["base_params"]) == ("lie", {"z": 0.5})


@functools.cache
def _sweep(name: str) -> Sweep:
    return load_sweep(PACKAGED_SWEEPS / f"{name}.yaml")


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _values(sweep: Sweep, get) -> set:
    return {get(t.config) for t in sweep.trials}


def test_there_are_ready_sweeps():
    names = {p.stem for p in SWEEP_FILES}
    assert set(PAPER_SWEEPS) <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_expands_and_documents_itself(path):
    sweep = _sweep(path.stem)
    assert sweep.trials
    assert sweep.spec.description.strip()
    assert _header(path), f"{path.name} must start with a comment block saying what it runs"


@pytest.mark.parametrize("name", PAPER_SWEEPS)
def test_paper_sweep_header_states_trials_and_compute(name):
    header = "\n".join(_header(PACKAGED_SWEEPS / f"{name}.yaml"))
    match = re.search(r"^# Trials: (\d+)", header, re.MULTILINE)
    assert match, f"{name}: no '# Trials: N' line in the header"
    assert int(match.group(1)) == len(_sweep(name).trials)
    assert "Compute" in header and "GPU-hours" in header
    assert "differs from the paper" in header


SDEA_CODE_ATTACKS = {"lie", "min_max", "min_sum"}  # where the MarsFL code departs from the text


@pytest.mark.parametrize("twin, variant", [("", "sdea_code"), ("_paper", "paper")])
@pytest.mark.parametrize(
    "name, dataset, clients, rounds",
    [
        ("sdea_table4_cifar10", "cifar10", 10, 100),
        ("sdea_table7_mnist", "mnist", 20, 50),
        ("sdea_table8_fashion_mnist", "fashion-mnist", 20, 50),
    ],
)
def test_sdea_sweeps_cover_the_table(name, dataset, clients, rounds, twin, variant):
    """Each SDEA sweep runs the authors' MarsFL code of LIE, MiMa and MiSu (what produced the published
    numbers; MiSu with that code's bound, the smallest sum); its twin, the paper's definitions."""
    sweep = _sweep(name + twin)
    for t in sweep.trials:
        attack, p = t.config.threat.attack, t.config.threat.attack_params
        if attack in SDEA_CODE_ATTACKS:
            assert p["variant"] == variant, (attack, p)
        if attack == "min_sum" and variant == "sdea_code":
            assert p["bound"] == "min"
        if attack == "random":
            assert p["variant"] == "initial_model"  # RanN: the code's re-initialised network
    assert _values(sweep, lambda c: c.data.dataset) == {dataset}
    assert _values(sweep, lambda c: c.partition.scheme) == {"dirichlet"}
    assert _values(sweep, lambda c: c.clients.num_clients) == {clients}
    assert _values(sweep, lambda c: c.clients.clients_per_round) == {clients}  # everyone, every round
    assert _values(sweep, lambda c: c.run.rounds) == {rounds}
    assert _values(sweep, lambda c: c.clients.local_epochs) == {10}
    assert _values(sweep, lambda c: c.clients.prox_mu) != {0.0}  # FedProx local objective
    # SDEA itself runs in every cell of β {0.3, 0.5} × Φ {0.2, 0.4} × the six attacks
    cells = {
        (t.config.partition.beta, t.config.threat.fraction, t.config.threat.attack)
        for t in sweep.trials
        if t.config.server.aggregator == "sdea"
    }
    assert cells == {(b, p, a) for b in (0.3, 0.5) for p in (0.2, 0.4) for a in SDEA_ATTACKS}
    sdea = [t.config.server.aggregator_params for t in sweep.trials if t.config.server.aggregator == "sdea"]
    assert {(p["lr"], p["epochs"], p["batch_size"]) for p in sdea} == {(0.005, 20, 64)}
    for attack in ("pair_flip", "symmetric_flip"):
        assert {t.config.threat.attack_params["epsilon"] for t in sweep.trials if t.config.threat.attack == attack} == {
            0.5
        }
    aggregators = _values(sweep, lambda c: c.server.aggregator)
    assert {"multi_krum", "trimmed_mean", "foolsgold", "dnc", "rfa", "sdea"} <= aggregators
    if clients == 20:  # Bulyan fits n = 20 at Φ = 0.2 (19 <= 20), not at Φ = 0.4
        assert {t.config.threat.fraction for t in sweep.trials if t.config.server.aggregator == "bulyan"} == {0.2}
    else:  # n = 10: Bulyan fits neither Φ, Multi-Krum only Φ = 0.2
        assert "bulyan" not in aggregators
        assert {t.config.threat.fraction for t in sweep.trials if t.config.server.aggregator == "multi_krum"} == {
            0.2
        }


@pytest.mark.parametrize("twin, variant", LASA_TWINS.items())
def test_lasa_table1_is_iid_with_a_quarter_attackers_and_nine_attacks(twin, variant):
    sweep = _sweep("lasa_table1" + twin)
    _assert_lasa_attacks(sweep, variant)
    assert _values(sweep, lambda c: c.partition.scheme) == {"iid"}
    assert _values(sweep, lambda c: c.threat.fraction) == {0.25}
    assert _values(sweep, lambda c: c.threat.attack) == LASA_ATTACKS
    assert _values(sweep, lambda c: c.run.seed) == {0, 1, 2}
    defenses = {"fedavg", "trimmed_mean", "geomed", "multi_krum", "dnc", "signguard", "sparsefed", "lasa"}
    # Bulyan runs only with the code's own count of 5: the true ~25 of 100 is beyond n >= 4f + 3
    assert _values(sweep, lambda c: c.server.aggregator) == (defenses | {"bulyan"} if twin == "" else defenses)
    federations = _values(
        sweep, lambda c: (c.data.dataset, c.model.name, c.clients.num_clients, c.clients.clients_per_round)
    )
    assert federations == {
        ("fashion-mnist", "cnn", 6000, 100),
        ("cifar10", "resnet18", 100, 25),
        ("cifar100", "resnet18", 100, 25),
    }
    lasa = {
        (t.config.data.dataset, t.config.server.aggregator_params["sparsity"],
         t.config.server.aggregator_params["lambda_d"], t.config.server.aggregator_params["lambda_m"])
        for t in sweep.trials
        if t.config.server.aggregator == "lasa"
    }
    assert lasa == {("fashion-mnist", 0.3, 1.0, 2.0), ("cifar10", 0.3, 1.0, 1.0), ("cifar100", 0.3, 1.0, 1.0)}
    # every (dataset, defense) pair meets every attack with every seed
    per_pair = Counter((t.config.data.dataset, t.config.server.aggregator) for t in sweep.trials)
    assert set(per_pair.values()) == {10 * 3}  # 9 attacks, Min-Sum with two bounds, 3 seeds


def test_lasa_table1_paper_twin_keeps_the_papers_recipe_and_the_true_count():
    sweep = _sweep("lasa_table1_paper")
    assert _values(sweep, lambda c: (c.clients.lr, c.clients.momentum, c.clients.lr_decay, c.clients.local_epochs,
                                     c.clients.batch_size, c.run.rounds)) == {(0.1, 0.9, 0.99, 2, 32, 100)}
    assert _values(sweep, lambda c: (c.threat.declared_byzantine, c.clients.update_clip, c.model.dropout)) == {
        (None, None, None)}
    assert _values(sweep, lambda c: c.server.aggregator_params.get("variant", "paper")) == {"paper"}


def test_lasa_table1_code_twin_runs_the_authors_configs_and_baselines():
    """Each dataset's row of config/attack/<dataset>/basee.yaml, the engine's client-side clip and its calls of
    the baselines (JiiahaoXU/LASA, algorithms/engine/fedavg_all.py)."""
    sweep = _sweep("lasa_table1")
    recipes = _values(sweep, lambda c: (c.data.dataset, c.model.dropout, c.clients.local_epochs, c.clients.batch_size,
                                        c.clients.lr, c.clients.lr_decay, c.run.rounds, c.threat.declared_byzantine))
    assert recipes == {("fashion-mnist", 0.5, 5, 10, 0.0999, 0.999, 180, 25),
                       ("cifar10", None, 3, 64, 0.099, 0.99, 200, 6), ("cifar100", None, 3, 64, 0.099, 0.99, 200, 6)}
    clipped = {(t.config.data.dataset, t.config.server.aggregator) for t in sweep.trials if t.config.clients.update_clip}
    assert {t.config.clients.update_clip for t in sweep.trials} == {None, 1.0}
    assert clipped == {("fashion-mnist", name) for name in ("fedavg", "trimmed_mean", "geomed", "sparsefed", "bulyan")}
    code = {"variant": "lasa_code"}
    expected = {
        "trimmed_mean": {"trim": 10}, "multi_krum": {**code, "f": 10}, "bulyan": {**code, "f": 5},
        "dnc": {"niters": 1, "subsample_dim": 1000}, "signguard": code, "sparsefed": {**code, "topk_fraction": 0.7},
    }
    for trial in sweep.trials:
        dataset, name, params = trial.config.data.dataset, trial.config.server.aggregator, trial.config.server.aggregator_params
        if name == "geomed":  # the exp(-distance) passes off CIFAR only (byzantine_robust_aggregation.py l.221)
            assert (params["variant"], params["weighting"]) == ("lasa_code" if dataset == "fashion-mnist" else "paper",
                                                                "uniform")
        elif name in expected:
            assert {k: params.get(k) for k in expected[name]} == expected[name], (dataset, name)
    assert sweep.spec.report.defense_keys == ["clients.update_clip"]


@pytest.mark.parametrize("twin, variant", LASA_TWINS.items())
def test_lasa_table4_covers_mnist_femnist_and_shakespeare(twin, variant):
    sweep = _sweep("lasa_table4" + twin)
    _assert_lasa_attacks(sweep, variant)
    assert _values(sweep, lambda c: c.threat.fraction) == {0.25}
    assert _values(sweep, lambda c: c.threat.attack) == LASA_ATTACKS
    assert _values(sweep, lambda c: c.clients.clients_per_round) == {100}  # h = 100 on all three (App. 7.2)
    assert _values(sweep, lambda c: c.run.seed) == {0, 1, 2}
    # Bulyan runs only with the code's own count of 5: the true f = 25 of n = 100 is beyond n >= 4f + 3
    defenses = {"fedavg", "trimmed_mean", "geomed", "multi_krum", "dnc", "signguard", "sparsefed", "lasa"}
    assert _values(sweep, lambda c: c.server.aggregator) == (defenses | {"bulyan"} if twin == "" else defenses)
    federations = _values(sweep, lambda c: (
        c.data.dataset, c.partition.scheme, c.model.name, c.clients.num_clients, c.clients.momentum, c.data.max_rows))
    assert federations == {
        ("mnist", "iid", "cnn", 6000, 0.9, None),
        ("femnist", "natural", "cnn", 1827, 0.9, None),  # 1,827 LEAF writers
        ("shakespeare", "natural", "char_lstm", 715, 0.5, 80000),  # 715 roles, as Reddi et al.'s
    }
    recipes = _values(sweep, lambda c: (c.data.dataset, c.clients.local_epochs, c.clients.batch_size, c.clients.lr,
                                        c.clients.lr_decay, c.model.dropout, c.run.rounds))
    if twin == "":  # config/attack/{mnist,femnist,shakespeare}/basee.yaml, their every-10-rounds decay per round
        assert recipes == {("mnist", 5, 10, 0.0999, 0.999, 0.5, 180), ("femnist", 1, 64, 0.1, 0.9999, 0.5, 300),
                           ("shakespeare", 1, 4, 1.0, 0.999, None, 1000)}
        clipped = {(t.config.data.dataset, t.config.clients.update_clip) for t in sweep.trials
                   if t.config.server.aggregator in ("fedavg", "trimmed_mean", "geomed", "sparsefed", "bulyan")}
        assert clipped == {("mnist", 1.0), ("femnist", 2.0), ("shakespeare", 1.0)}
        assert {t.config.clients.update_clip for t in sweep.trials
                if t.config.server.aggregator in ("multi_krum", "dnc", "signguard", "lasa")} == {None}
        assert _values(sweep, lambda c: c.threat.declared_byzantine) == {25}
    else:  # App. 7.2's lr, momentum and decay; byzlab's recipe where the paper is silent
        assert recipes == {("mnist", 2, 32, 0.1, 0.99, None, 100), ("femnist", 2, 32, 0.1, 0.99, None, 100),
                           ("shakespeare", 2, 32, 1.0, 0.999, None, 100)}
    lasa = {
        (t.config.data.dataset, t.config.server.aggregator_params["sparsity"],
         t.config.server.aggregator_params["lambda_d"], t.config.server.aggregator_params["lambda_m"])
        for t in sweep.trials
        if t.config.server.aggregator == "lasa"
    }
    # λ_m = 2.0 everywhere but CIFAR (§5); λ_d = 1.5 for FEMNIST and Shakespeare (App. 7.4)
    assert lasa == {("mnist", 0.3, 1.0, 2.0), ("femnist", 0.3, 1.5, 2.0), ("shakespeare", 0.3, 1.5, 2.0)}
    # the stealthy Min-Sum (minimum bound) on every dataset but MNIST (App. 7.3)
    bounds = {(t.config.data.dataset, t.config.threat.attack_params["bound"])
              for t in sweep.trials if t.config.threat.attack == "min_sum"}
    assert bounds == {("mnist", "max"), ("femnist", "max"), ("femnist", "min"), ("shakespeare", "max"),
                      ("shakespeare", "min")}
    per_pair = Counter((t.config.data.dataset, t.config.server.aggregator) for t in sweep.trials)
    assert {n for (d, _), n in per_pair.items() if d == "mnist"} == {9 * 3}  # every attack with every seed
    assert {n for (d, _), n in per_pair.items() if d != "mnist"} == {10 * 3}  # Min-Sum with two bounds


@pytest.mark.parametrize("twin, variant", LASA_TWINS.items())
def test_lasa_tables5_6_cover_sparsity_levels_and_radii(twin, variant):
    sweep = _sweep("lasa_tables5_6" + twin)
    _assert_lasa_attacks(sweep, variant)
    assert _values(sweep, lambda c: c.server.aggregator) == {"lasa"}
    assert _values(sweep, lambda c: c.data.dataset) == {"mnist", "fashion-mnist"}
    assert _values(sweep, lambda c: c.threat.fraction) == {0.25}
    # the code's config/attack/{mnist,fmnist}/basee.yaml; the twin: the paper's decay, byzlab's recipe where it is silent
    recipe = (5, 10, 0.0999, 0.999, 0.5, 180) if variant == "lasa_code" else (2, 32, 0.1, 0.99, None, 100)
    assert _values(sweep, lambda c: (c.clients.local_epochs, c.clients.batch_size, c.clients.lr, c.clients.lr_decay,
                                     c.model.dropout, c.run.rounds)) == {recipe}
    cells = Counter()
    for t in sweep.trials:
        p = t.config.server.aggregator_params
        cells[(t.config.data.dataset, t.config.threat.attack, p["sparsity"], p["lambda_d"], p["lambda_m"])] += 1
    assert set(cells.values()) == {3}  # three seeds each
    levels = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99)
    radii = [(1.0, 1.0), (1.0, 1.5), (1.0, 2.0), (1.0, 4.0), (1.5, 2.0), (2.0, 2.0), (3.0, 2.0)]
    table5 = {(d, a, s, 1.0, 2.0) for d in ("mnist", "fashion-mnist") for a in ("noise", "byzmean", "min_max")
              for s in levels}
    table6 = {(d, a, 0.3, ld, lm) for d in ("mnist", "fashion-mnist") for a in ("noise", "byzmean")
              for ld, lm in radii}
    assert set(cells) == table5 | table6


@pytest.mark.parametrize("twin, reading", RESIDUAL_TWINS.items())
def test_residual_table6_covers_the_lambda_delta_grid(twin, reading):
    sweep = _sweep("residual_table6" + twin)
    assert _values(sweep, lambda c: c.server.aggregator) == {"residual"}
    assert _values(sweep, lambda c: tuple(c.server.aggregator_params[k] for k in reading)) == {tuple(reading.values())}
    assert _values(sweep, lambda c: c.data.dataset) == {"mnist"}
    assert _values(sweep, lambda c: c.model.name) == {"residual_cnn"}  # the paper's Table 5 CNN
    assert _values(sweep, lambda c: c.clients.num_clients) == {100}
    assert _values(sweep, lambda c: c.clients.clients_per_round) == {100}
    assert _values(sweep, lambda c: c.run.rounds) == {200}
    grid = Counter()
    for t in sweep.trials:
        c = t.config
        attackers = int(round(c.threat.fraction * c.clients.num_clients))
        grid[(c.partition.scheme, attackers, c.threat.attack, c.server.aggregator_params["lam"],
              c.server.aggregator_params["delta"])] += 1
    assert set(grid.values()) == {3}  # three seeds
    expected = {
        (scheme, attackers, "none" if attackers == 0 else "label_flip", lam, delta)
        for scheme in ("iid", "shards")
        for attackers in (0, 5, 9)
        for lam in (0.5, 1.0, 2.0, 3.0, 5.0)
        for delta in (0.01, 0.05, 0.1, 0.2)
    }
    assert set(grid) == expected
    flips = {(t.config.threat.attack_params["source"], t.config.threat.attack_params["target"])
             for t in sweep.trials if t.config.threat.attack == "label_flip"}
    assert flips == {(1, 7)}
    # 5 epochs more than the others (App. A.3, Fig. 3); the code's README also gives them 10x the lr
    recipes = {(t.config.threat.attack_params["local_epochs"], t.config.threat.attack_params["lr"])
               for t in sweep.trials if t.config.threat.attack == "label_flip"}
    assert recipes == {(10, 0.1 if reading["variant"] == "residual_code" else None)}
    assert {t.config.partition.classes_per_client for t in sweep.trials if t.config.partition.scheme == "shards"} == {2}


@pytest.mark.parametrize("twin, reading", RESIDUAL_TWINS.items())
def test_residual_tables1_3_cover_label_flipping_and_backdoors(twin, reading):
    sweep = _sweep("residual_tables1_3" + twin)
    assert _values(sweep, lambda c: c.clients.num_clients) == {10}
    assert _values(sweep, lambda c: c.clients.clients_per_round) == {10}  # everyone, every round
    recipe = _values(sweep, lambda c: (c.clients.local_epochs, c.clients.batch_size, c.clients.momentum))
    assert recipe == {(5, 64, 0.0)}  # 5 local epochs, batch 64 (App. A.5), plain SGD
    assert _values(sweep, lambda c: c.run.seed) == {0, 1, 2}
    assert _values(sweep, lambda c: c.server.aggregator) == {
        "fedavg", "median", "trimmed_mean", "repeated_median", "foolsgold", "residual",
    }
    residual = [t.config.server.aggregator_params for t in sweep.trials if t.config.server.aggregator == "residual"]
    assert {(p["estimator"], p["weighting"], p["lam"], p["delta"]) for p in residual} == {
        ("repeated_median", "irls", 2.0, 0.01)}
    assert {tuple(p[k] for k in reading) for p in residual} == {tuple(reading.values())}
    # the code's trimmed mean trims int(0.2 K) = 2 at each end (averaging.py, --alpha 0.2); the twin the true count
    trims = {t.config.server.aggregator_params["trim"] for t in sweep.trials
             if t.config.server.aggregator == "trimmed_mean"}
    assert trims == ({2} if twin == "" else {None})
    foolsgold = {t.config.server.aggregator_params["variant"] for t in sweep.trials
                 if t.config.server.aggregator == "foolsgold"}
    assert foolsgold == ({"residual_code"} if twin == "" else {"paper"})
    federations = _values(sweep, lambda c: (
        c.data.dataset, c.model.name, c.partition.scheme, c.partition.beta, c.clients.lr, c.run.rounds))
    assert federations == {
        ("cifar10", "resnet18", "dirichlet", 0.9, 0.01, 100),
        ("amazon-kindle", "fasttext", "dirichlet", 0.9, 0.5, 10),
        ("mnist", "residual_cnn", "dirichlet", 0.9, 0.01, 200),  # the paper's Table 5 CNN
        ("lending-club", "mlp", "natural", None, 0.01, 100),  # one client per state
    }
    assert {t.config.model.hidden for t in sweep.trials if t.config.model.name == "mlp"} == {(46, 23)}
    assert {t.config.data.test_fraction for t in sweep.trials if t.config.data.dataset == "amazon-kindle"} == {0.2}
    cells = Counter()
    for t in sweep.trials:
        c = t.config
        cells[(c.data.dataset, int(round(c.threat.fraction * c.clients.num_clients)), c.threat.attack)] += 1
    assert set(cells.values()) == {6 * 3}  # every defense, three seeds
    flips = {(d, k, "none" if k == 0 else "label_flip") for d in ("cifar10", "amazon-kindle") for k in range(5)}
    backdoors = {(d, 1, a) for d in ("mnist", "cifar10") for a in ("backdoor", "model_replacement")}
    assert set(cells) == flips | backdoors | {("lending-club", 1, "feature_backdoor")}
    flipped = {(t.config.data.dataset, t.config.threat.attack_params["source"], t.config.threat.attack_params["target"])
               for t in sweep.trials if t.config.threat.attack == "label_flip"}
    assert flipped == {("cifar10", 3, 5), ("amazon-kindle", None, None)}  # cat -> dog; every label
    recipes = {(t.config.data.dataset, t.config.threat.attack_params["local_epochs"], t.config.threat.attack_params["lr"])
               for t in sweep.trials if t.config.threat.attack == "label_flip"}
    cifar = (10, 0.1) if reading["variant"] == "residual_code" else (None, None)  # the code's README; the text: none
    assert recipes == {("cifar10", *cifar), ("amazon-kindle", 10, None)}  # Table 2: "5 more epochs"
    for t in sweep.trials:
        p = t.config.threat.attack_params
        if t.config.threat.attack in ("backdoor", "model_replacement"):  # App. A.5
            assert (p["target"], p["poisoned_per_batch"], p["local_epochs"], p["lr"]) == (2, 20, 10, 0.1)
            code = reading["variant"] == "residual_code"  # the code's trigger and success rate
            assert (p["variant"], p["value"], p["asr_images"]) == (
                ("residual_code", 1.0, "all") if code else ("paper", None, "other_classes"))
        if t.config.threat.attack == "model_replacement":  # §4.3: round 6 only, scaled by 100
            assert (p["boost_round"], p["boost"]) == (6, 100.0)
            threat = t.config.threat
            attacked = [r for r in range(1, t.config.run.rounds + 1) if threat.active(r)]
            assert attacked == [6]
        elif t.config.threat.attack != "none":
            assert (t.config.threat.start_round, t.config.threat.every) == (1, 1)
        if t.config.threat.attack == "feature_backdoor":
            assert len(p["features"]) == 6 and "tax_liens" in p["features"]
            assert (p["target"], p["poisoned_per_batch"], p["local_epochs"], p["lr"]) == (4, 20, 10, 0.002)
            # the code's raw values (Update.py l.52-58); the paper twin: just above each feature's maximum
            raw = {"num_tl_120dpd_2m": 10, "num_tl_90g_dpd_24m": 80, "pub_rec_bankruptcies": 20, "pub_rec": 100,
                   "acc_now_delinq": 20, "tax_liens": 100}
            values = p.get("values")
            assert (dict(zip(p["features"], values)) == raw) if twin == "" else values is None


def test_fedra_table3_covers_four_datasets_without_attacks():
    sweep = _sweep("fedra_table3")
    assert _values(sweep, lambda c: (c.threat.attack, c.threat.fraction, c.threat.quantity_attack)) == {
        ("none", 0.0, "none")}
    assert _values(sweep, lambda c: c.threat.declared_byzantine) == {5}  # m = ⌈nM/N⌉ with M/N = 0.1, n = 50
    assert _values(sweep, lambda c: (c.partition.scheme, c.partition.sigma)) == {("lognormal", 3.0)}
    assert _values(sweep, lambda c: c.partition.label_skew) == {"iid", "one_class"}
    assert _values(sweep, lambda c: c.clients.clients_per_round) == {50}
    assert _values(sweep, lambda c: (c.server.optimizer, c.model.dropout)) == {("fedadam", 0.2)}
    federations = _values(sweep, lambda c: (
        c.data.dataset, c.model.name, c.clients.num_clients, c.server.lr, c.run.rounds))
    assert federations == {  # §5.1 and Table 2
        ("mnist", "cnn", 3025, 0.0001, 10000),
        ("cifar10", "cifar_cnn", 3115, 0.001, 10000),
        ("adult", "mlp", 1671, 0.001, 2000),
        ("mind", "text_cnn", 2880, 0.0001, 15000),
    }
    assert _values(sweep, lambda c: getattr(c.model, "embeddings_path", None)) == {None}  # no file assumed
    columns = Counter(
        (t.config.data.dataset, t.config.partition.label_skew, t.config.server.aggregator,
         t.config.server.aggregator_params.get("weighting"))
        for t in sweep.trials
    )
    assert set(columns.values()) == {1}
    expected = {("fedavg", "uniform"), ("median", None), ("trimmed_mean", None), ("krum", None),
                ("multi_krum", None), ("bulyan", None), ("fedavg", "samples"), ("norm_bound", "samples"),
                ("rfa", "samples")}  # Uniform ... RFA, Table 3's nine columns
    assert {key[2:] for key in columns} == expected
    assert len(columns) == 4 * 2 * len(expected)


def test_fedra_sweep_covers_the_quantity_enlarging_factors():
    sweep = _sweep("fedra_quantity")
    assert _values(sweep, lambda c: c.threat.quantity_attack) == {"enlarge_quantity"}
    assert _values(sweep, lambda c: c.threat.quantity_params["alpha_q"]) == {0, 1, 2, 5, 10}
    assert _values(sweep, lambda c: (c.partition.scheme, c.partition.sigma)) == {("lognormal", 3.0)}
    assert _values(sweep, lambda c: (c.data.dataset, c.clients.num_clients)) == {("mnist", 3025), ("cifar10", 3115)}
    # FedAdam for every method, its learning rate per dataset (§5.1), dropout 0.2 in both CNNs
    assert _values(sweep, lambda c: (c.data.dataset, c.server.optimizer, c.server.lr)) == {
        ("mnist", "fedadam", 0.0001), ("cifar10", "fedadam", 0.001)}
    assert _values(sweep, lambda c: (c.model.name, c.model.dropout)) == {("cnn", 0.2), ("cifar_cnn", 0.2)}
    assert _values(sweep, lambda c: c.clients.clients_per_round) == {50}
    assert _values(sweep, lambda c: c.threat.fraction) == {0.1}
    assert _values(sweep, lambda c: c.threat.attack) == {"label_flip", "lie"}
    aggregators = _values(sweep, lambda c: c.server.aggregator)
    assert aggregators == {"median", "trimmed_mean", "krum", "multi_krum", "bulyan", "norm_bound", "rfa", "truncate",
                           "fedra"}
    fedra = [t.config.server.aggregator_params for t in sweep.trials if t.config.server.aggregator == "fedra"]
    assert {(p["gamma"], p["mode"]) for p in fedra} == {(0.1, "dynamic")}
    # every defense meets every α_q under both attacks on both datasets
    per_cell = Counter(
        (t.config.data.dataset, t.config.threat.attack, t.config.threat.quantity_params["alpha_q"])
        for t in sweep.trials
    )
    assert len(per_cell) == 2 * 2 * 5 and set(per_cell.values()) == {len(aggregators)}


@pytest.mark.parametrize("twin", ["", "_paper"])
def test_pawbrofl_sweep_varies_mu(twin):
    sweep = _sweep("pawbrofl_mu" + twin)
    pawbrofl = [t.config for t in sweep.trials if t.config.server.aggregator == "pawbrofl"]
    mus = {c.server.aggregator_params["mu"] for c in pawbrofl}
    assert None in mus  # the vanilla Byzantine-robust baseline
    assert len(mus - {None}) >= 4
    assert {c.server.aggregator_params["estimator"] for c in pawbrofl} == {"no_regret", "filtering"}
    assert "fedavg" in _values(sweep, lambda c: c.server.aggregator)
    attack = "dba" if twin else "backdoor"
    attacked = {t.config.threat.fraction for t in sweep.trials if t.config.threat.attack == attack}
    assert attacked == {0.1, 0.2, 0.3, 0.4}
    assert {t.config.threat.fraction for t in sweep.trials if t.config.threat.attack == "none"} == {0.0}
    # every μ with every estimator in every threat setting on both datasets
    per_setting = Counter(
        (c.data.dataset, c.threat.fraction, c.server.aggregator_params["estimator"], c.server.aggregator_params["mu"])
        for c in pawbrofl
    )
    assert len(per_setting) == 2 * 5 * 2 * len(mus)


def test_pawbrofl_code_twin_runs_what_train_sh_ran():
    """heshandevaka/PAwBRoFL's train.sh: the code's rule, CNN, U(0, 1) client sizes, lr 1e-3, ε = 0.2 without
    attack (the share with one), and a 5 x 5 corner patch set to 0 on every image of an attacker, target 0."""
    sweep = _sweep("pawbrofl_mu")
    pawbrofl = [t.config for t in sweep.trials if t.config.server.aggregator == "pawbrofl"]
    assert {(c.server.aggregator_params["variant"], c.server.aggregator_params["chunk_size"]) for c in pawbrofl} == {
        ("pawbrofl_code", 1000)}
    assert {c.server.aggregator_params["epsilon"] - (c.threat.fraction or 0.2) for c in pawbrofl} == {0.0}
    assert _values(sweep, lambda c: (c.model.name, c.partition.scheme, c.clients.lr, c.clients.batch_size)) == {
        ("pawbrofl_cnn", "uniform_sizes", 0.001, 10)}
    triggers = {(t.config.data.dataset, tuple(sorted(t.config.threat.attack_params.items())))
                for t in sweep.trials if t.config.threat.attack == "backdoor"}
    common = {"size": 5, "row": 0, "col": 0, "target": 0, "poisoned_per_batch": 10, "asr_images": "all"}
    for dataset, params in triggers:
        params = dict(params)
        assert {k: params[k] for k in common} == common
        assert params["value"] == {"mnist": 0.0, "fashion-mnist": -0.8102}[dataset]  # raw 0 on unnormalised FMNIST
    paper = _sweep("pawbrofl_mu_paper")
    assert _values(paper, lambda c: c.server.aggregator_params.get("variant", "paper")) == {"paper"}
    assert _values(paper, lambda c: (c.model.name, c.partition.scheme, c.clients.lr)) == {("cnn", "iid", 0.01)}


@pytest.mark.parametrize("name", ["sdea_table4_cifar10", "sdea_table7_mnist", "sdea_table8_fashion_mnist"])
def test_sdea_sweeps_use_tiny_imagenet_as_public_data(name):
    """SDEA's default public data (§4.1, Table 3), 2,000 images of the hub copy."""
    assert _values(_sweep(name), lambda c: (c.server.public_data.source, c.server.public_data.size)) == {
        ("tiny-imagenet", 2000)}


@pytest.mark.parametrize("name", PAPER_SWEEPS)
def test_a_paper_sweep_reports_the_metric_its_paper_does(name):
    """LASA's tables give a run's best accuracy, SDEA's the mean of the last five rounds, the residual and
    FedRA papers the accuracy at the end of training; PAwBRoFL's figure, accuracy per round (the default)."""
    paper = name.split("_")[0]
    expected = {"lasa": "acc_best", "sdea": "acc_last5_mean", "residual": "acc_final", "fedra": "acc_final",
                "pawbrofl": "acc_last5_mean"}[paper]
    assert _sweep(name).spec.report.metric == expected


@pytest.mark.parametrize("name", ["tune_lasa_digits", "worst_case_digits"])
def test_search_sweeps_state_their_budget_and_time(name):
    header = "\n".join(_header(PACKAGED_SWEEPS / f"{name}.yaml"))
    assert re.search(r"^# Budget: \d+ trials", header, re.MULTILINE)
    assert "Time on 2 CPU cores" in header


def test_tune_lasa_digits_runs_optuna_with_asha_over_lasas_radii_and_sparsity():
    sweep = _sweep("tune_lasa_digits")
    (setting,) = sweep.trials
    assert {s.key.rsplit(".", 1)[-1] for s in setting.searched.values()} == {"lambda_m", "lambda_d", "sparsity"}
    assert setting.config.threat.attack == "byzmean"
    search = sweep.spec.search
    assert (search.algorithm, search.scheduler.name, search.scheduler.metric) == ("optuna", "asha", "test_accuracy")


def test_worst_case_digits_searches_three_families_against_four_defenses():
    sweep = _sweep("worst_case_digits")
    assert sweep.spec.objective == "worst_attack"
    assert {(t.labels["defense"], t.labels["attack"]) for t in sweep.trials} == {
        (d, a) for d in ("median", "trimmed_mean", "lasa", "fedra") for a in ("lie", "sign_flip", "byzmean")}
    searched = {t.labels["attack"]: {s.key for s in t.searched.values()} for t in sweep.trials}
    assert searched == {"lie": {"threat.attack_params.z"}, "sign_flip": {"threat.attack_params.scale"},
                        "byzmean": {"threat.attack_params.base_params.z"}}


@pytest.mark.parametrize("twin", ["", "_paper"])
def test_residual_tables_name_the_model_replacement_round_with_the_attack(twin):
    """Only the model replacement starts at round 6 (§4.3); the report names that with the attack instead of
    splitting the table by start_round."""
    sweep = _sweep("residual_tables1_3" + twin)
    assert {(t.config.threat.attack, t.config.threat.start_round, t.config.threat.every) for t in sweep.trials
            if t.config.threat.start_round != 1} == {("model_replacement", 6, 1000)}
    assert sweep.spec.report.attack_keys == ["threat.start_round", "threat.every"]
