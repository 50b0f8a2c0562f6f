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
    "residual_table6",
    "fedra_quantity",
    "pawbrofl_mu",
]

SDEA_ATTACKS = {"pair_flip", "symmetric_flip", "random", "lie", "min_max", "min_sum"}
LASA_ATTACKS = {"none", "random", "noise", "sign_flip", "tailored_trmean", "min_max", "min_sum", "lie", "byzmean"}


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


@pytest.mark.parametrize(
    "name, dataset, clients, rounds",
    [
        ("sdea_table4_cifar10", "cifar10", 10, 100),
        ("sdea_table7_mnist", "mnist", 20, 50),
        ("sdea_table8_fashion_mnist", "fashion-mnist", 20, 50),
    ],
)
def test_sdea_sweeps_cover_the_table(name, dataset, clients, rounds):
    sweep = _sweep(name)
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


def test_lasa_table1_is_iid_with_a_quarter_attackers_and_nine_attacks():
    sweep = _sweep("lasa_table1")
    assert _values(sweep, lambda c: c.partition.scheme) == {"iid"}
    assert _values(sweep, lambda c: c.threat.fraction) == {0.25}
    assert _values(sweep, lambda c: c.threat.attack) == LASA_ATTACKS
    assert _values(sweep, lambda c: c.run.seed) == {0, 1, 2}
    assert _values(sweep, lambda c: (c.clients.lr, c.clients.momentum, c.clients.lr_decay)) == {(0.1, 0.9, 0.99)}
    assert _values(sweep, lambda c: c.server.aggregator) == {
        "fedavg", "trimmed_mean", "geomed", "multi_krum", "dnc", "signguard", "sparsefed", "lasa",
    }
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
    lie_z = {t.config.threat.attack_params["z"] for t in sweep.trials if t.config.threat.attack == "lie"}
    assert lie_z == {0.5}
    # every (dataset, defense) pair meets every attack with every seed
    per_pair = Counter((t.config.data.dataset, t.config.server.aggregator) for t in sweep.trials)
    assert set(per_pair.values()) == {10 * 3}  # 9 attacks, Min-Sum with two bounds, 3 seeds


def test_lasa_tables5_6_cover_sparsity_levels_and_radii():
    sweep = _sweep("lasa_tables5_6")
    assert _values(sweep, lambda c: c.server.aggregator) == {"lasa"}
    assert _values(sweep, lambda c: c.data.dataset) == {"mnist", "fashion-mnist"}
    assert _values(sweep, lambda c: c.threat.fraction) == {0.25}
    assert _values(sweep, lambda c: c.clients.lr_decay) == {0.99}
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


def test_residual_table6_covers_the_lambda_delta_grid():
    sweep = _sweep("residual_table6")
    assert _values(sweep, lambda c: c.server.aggregator) == {"residual"}
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
    assert {t.config.partition.classes_per_client for t in sweep.trials if t.config.partition.scheme == "shards"} == {2}


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


def test_pawbrofl_sweep_varies_mu():
    sweep = _sweep("pawbrofl_mu")
    pawbrofl = [t.config for t in sweep.trials if t.config.server.aggregator == "pawbrofl"]
    mus = {c.server.aggregator_params["mu"] for c in pawbrofl}
    assert None in mus  # the vanilla Byzantine-robust baseline
    assert len(mus - {None}) >= 4
    assert {c.server.aggregator_params["estimator"] for c in pawbrofl} == {"no_regret", "filtering"}
    assert "fedavg" in _values(sweep, lambda c: c.server.aggregator)
    attacked = {t.config.threat.fraction for t in sweep.trials if t.config.threat.attack == "dba"}
    assert attacked == {0.1, 0.2, 0.3, 0.4}
    assert {t.config.threat.fraction for t in sweep.trials if t.config.threat.attack == "none"} == {0.0}
    # every μ with every estimator in every threat setting on both datasets
    per_setting = Counter(
        (c.data.dataset, c.threat.fraction, c.server.aggregator_params["estimator"], c.server.aggregator_params["mu"])
        for c in pawbrofl
    )
    assert len(per_setting) == 2 * 5 * 2 * len(mus)
