"""Hostile rows: how often each registered rule's output is non-finite or overflows when some rows of a
round are arbitrary *finite* values up to float32's largest (issue 12, item 2), within the declared
Byzantine count f and past it. The counts go into ``benchmarks/results/hostile_rows.md`` (and from there
into benchmarks/reliability.md).

Every matrix is seeded (``--seed``): n in [5, 15] clients, d in [1, 64] coordinates (d = 3 (k + 1) for k in
[1, 20] for the rules that evaluate models: a linear 3-class model on k features whose weights and biases are
exactly the d coordinates), honest rows ``s (c + 0.01 z_i)`` with c ~ N(0, 0.05^2), z_i ~ N(0, 1) and a
scale s = 10^U(-2, 2); a declared f drawn from the f >= 1 with 2f < n that the rule's ``check_setting``
accepts; then h hostile rows replace random rows:

* ``h <= f``: h in 1 .. f (within the declared count);
* ``h > f``: h in f + 1 .. n - 1 (past it; at least one honest row is left);
* ``h <= tolerated``: the matrices of both with h at most the rule's documented breakdown,
  ``tolerated_rows(params, n, f)``: the target there is zero in every failure column.

A hostile row is one of: ``nan`` (one coordinate or all NaN), ``inf`` (+-Inf), ``big`` (+-1e30, one sign
or random signs), ``sign_flip`` / ``boost`` (-+1e30 / ||honest mean||_inf times the honest mean: the scaled
sign flip, and the honest direction scaled up), ``fmax`` (+-3.4028235e38 everywhere, one sign or random
signs), ``huge_norm`` (a random direction with L2 norm 10^U(19, 39), clamped to float32's range), ``spike``
(an honest row with one coordinate at +-fmax), ``dup_honest`` (an exact copy of an honest row); with
probability 1/2 every hostile row is an exact copy of the first (colluding duplicates).

Failure columns:

* ``non-finite``: the output has a NaN or Inf. Only ``fedavg`` keeps NaN/Inf rows (the server refuses its
  non-finite aggregate); the cell says how many of those matrices had a NaN/Inf row.
* ``overflowing``: the output is finite but some coordinate exceeds ``1e6 x`` the honest rows' largest
  |coordinate| (above float32's max is already non-finite).
* ``errors``: the rule raised.

Every client claims 50 samples (the rows are hostile, not the claims: quantity attacks are
``attacks.quantity``'s). The global model is a teacher whose labels the server's data carries, so honest
models predict confidently (as Sageflow's entropy filter expects). Rules run with their defaults, a fresh
rule per matrix (stateful rules start from their initial state). tests/unit/aggregators/test_hostile_rows.py
checks the same properties with hypothesis.

    python benchmarks/hostile_rows.py [--trials 200] [--seed 0] [--rules geomed,krum]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from pathlib import Path

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit" / "aggregators"))

import numpy as np
import torch

from byzlab import aggregators
from hostile_setting import CLASSES, FMAX, MODEL_RULES, OVERFLOW_FACTOR, context, declared_range, tolerated

RESULTS = Path(__file__).parent / "results" / "hostile_rows.md"
KINDS = ("nan", "inf", "big", "sign_flip", "boost", "fmax", "huge_norm", "spike", "dup_honest")
FINITE_KINDS = frozenset(KINDS) - {"nan", "inf"}
FEATURES = (1, 20)
DIMENSIONS = (1, 64)


def hostile_row(kind: str, honest: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One hostile row of ``kind`` (see the module docstring) next to the honest rows [k, d]."""
    d = honest.shape[1]
    signs = torch.from_numpy(rng.choice([-1.0, 1.0], size=d)).float()
    one_sign = float(rng.choice([-1.0, 1.0]))
    if kind == "nan":
        row = honest[rng.integers(len(honest))].clone()
        row[rng.integers(d) if rng.random() < 0.5 else slice(None)] = float("nan")
        return row
    if kind == "inf":
        return torch.full((d,), one_sign * float("inf"))
    if kind in ("big", "fmax"):
        value = 1e30 if kind == "big" else FMAX
        return value * (signs if rng.random() < 0.5 else torch.full((d,), one_sign))
    if kind in ("sign_flip", "boost"):
        mean = honest.mean(dim=0)
        return (-1e30 if kind == "sign_flip" else 1e30) * mean / mean.abs().max().clamp_min(1e-30)
    if kind == "huge_norm":
        direction = torch.from_numpy(rng.standard_normal(d)).double()
        row = direction / direction.norm() * 10 ** rng.uniform(19, 39)
        return row.clamp(-FMAX, FMAX).float()
    if kind == "spike":
        row = honest[rng.integers(len(honest))].clone()
        row[rng.integers(d)] = one_sign * FMAX
        return row
    if kind == "dup_honest":
        return honest[rng.integers(len(honest))].clone()
    raise ValueError(kind)


def hostile_matrix(n: int, d: int, h: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(updates [n, d], hostile mask [n], the hostile rows' kinds)."""
    scale = 10 ** rng.uniform(-2, 2)
    centre = rng.normal(0, 0.05, size=d)
    honest = torch.from_numpy(scale * (centre + 0.01 * rng.standard_normal((n, d)))).float()
    hostile = torch.zeros(n, dtype=torch.bool)
    hostile[torch.from_numpy(rng.choice(n, size=h, replace=False))] = True
    rows = honest.clone()
    kinds = [str(rng.choice(KINDS)) for _ in range(h)]
    collude = rng.random() < 0.5
    if collude:
        kinds = kinds[:1] * h
    first = hostile_row(kinds[0], honest[~hostile], rng)
    for j, i in enumerate(hostile.nonzero().squeeze(1).tolist()):
        rows[i] = first if (collude or j == 0) else hostile_row(kinds[j], honest[~hostile], rng)
    return rows, hostile, kinds


def classify(update: torch.Tensor, honest: torch.Tensor) -> str:
    """``non-finite``, ``overflowing`` (|x| > 1e6 x the honest rows' largest |coordinate|) or ``ok``."""
    if not bool(torch.isfinite(update).all()):
        return "non-finite"
    bound = OVERFLOW_FACTOR * float(honest.abs().max())
    return "overflowing" if float(update.abs().max()) > bound else "ok"


def run_rule(name: str, trials: int, seed: int) -> dict[str, Counter]:
    """Counters of outcomes per regime: ``within`` (h <= declared f), ``past`` (h > f), and ``tolerated``
    (the matrices of either regime with h <= the rule's ``tolerated_rows``)."""
    counts = {"within": Counter(), "past": Counter(), "tolerated": Counter()}
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    for regime in ("within", "past"):
        for trial in range(trials):
            n = int(rng.integers(5, 16))
            if name in MODEL_RULES:
                d = CLASSES * (int(rng.integers(FEATURES[0], FEATURES[1] + 1)) + 1)
            else:
                d = int(rng.integers(DIMENSIONS[0], DIMENSIONS[1] + 1))
            feasible = declared_range(name, n)
            if not feasible:
                counts[regime]["skipped"] += 1
                continue
            f = int(rng.choice(feasible))
            h = int(rng.integers(1, f + 1)) if regime == "within" else int(rng.integers(f + 1, n))
            updates, hostile, kinds = hostile_matrix(n, d, h, rng)
            rule = aggregators.build(name)
            try:
                outcome = classify(rule(updates, context(name, n, d, f, seed + trial)).update, updates[~hostile])
            except Exception as err:  # noqa: BLE001 -- every failure is counted, not raised
                outcome = "error"
                counts[regime][f"error:{type(err).__name__}: {err}"[:160]] += 1
            groups = [regime] + (["tolerated"] if h <= tolerated(name, n, f) else [])
            for group in groups:
                counts[group]["tried"] += 1
                counts[group][outcome] += 1
                if outcome == "non-finite" and not rule.drops_nonfinite and not set(kinds) <= FINITE_KINDS:
                    counts[group]["non-finite with NaN/Inf input"] += 1
    return counts


def _cells(c: Counter) -> list[str]:
    nonfinite = str(c["non-finite"])
    if c["non-finite with NaN/Inf input"]:
        nonfinite += f" ({c['non-finite with NaN/Inf input']} with NaN/Inf rows)"
    return [str(c["tried"]), nonfinite, str(c["overflowing"]), str(c["error"])]


def table(results: dict[str, dict[str, Counter]]) -> list[str]:
    lines = [
        "| rule | h <= f: tried | non-finite | overflowing | errors | h > f: tried | non-finite | overflowing "
        "| errors | h <= tolerated: tried | non-finite | overflowing | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, counts in results.items():
        cells = _cells(counts["within"]) + _cells(counts["past"]) + _cells(counts["tolerated"])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def tolerated_table(names: list[str]) -> list[str]:
    """Each rule's ``tolerated_rows`` for a few (n, f)."""
    settings = [(5, 1), (7, 2), (10, 2), (10, 4), (15, 3), (15, 7)]
    lines = ["| rule | " + " | ".join(f"n={n}, f={f}" for n, f in settings) + " |",
             "| --- |" + " ---: |" * len(settings)]
    for name in names:
        cells = []
        for n, f in settings:
            cells.append(str(tolerated(name, n, f)) if f in declared_range(name, n) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="matrices per rule and regime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", default="", help="comma-separated rules (default: every registered rule)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [r for r in args.rules.split(",") if r] or aggregators.names()
    started = time.perf_counter()
    results = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = run_rule(name, args.trials, args.seed)
        errors = sorted({k for regime in results[name].values() for k in regime if k.startswith("error:")})
        print(f"{name}: {time.perf_counter() - t0:.1f} s", *errors[:3], sep="\n  " if errors else " ", flush=True)
    header = [
        "# Hostile rows: non-finite and overflowing outputs per rule",
        "",
        f"`python benchmarks/hostile_rows.py --trials {args.trials} --seed {args.seed}` on {platform.machine()} "
        f"(torch {torch.__version__}, CPU, 1 thread), {time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - started:.0f} s. The matrices are described in the script's docstring.",
        "",
        "Per rule, random rounds (n in 5..15, d in 1..64, every client claiming 50 samples) with h hostile rows "
        "and a declared f drawn from what the rule's `check_setting` accepts with 2f < n: `h <= f` draws h in "
        "1..f, `h > f` draws h in f+1..n-1 (at least one honest row is left). `h <= tolerated` regroups the "
        "matrices of both with h at most the rule's documented breakdown, `tolerated_rows(params, n, f)` "
        "(the second table): the target there is zero in every failure column. Non-finite: NaN or Inf in the "
        "output (only `fedavg` keeps NaN/Inf rows: the server refuses its aggregate). Overflowing: finite, but "
        "some |coordinate| > 1e6 x the honest rows' largest |coordinate|. Errors: the rule raised.",
        "",
        "Failures with h <= f come only from rules whose documented breakdown lies below the declared f, each "
        "faithful to its paper and described in its docstring: `fedavg`, `foolsgold`, `sageflow`, `sdea` "
        "(none tolerated: `foolsgold`, `sdea` and `dnc` report `agg_update_norm_ratio`), `dnc` (one: a smaller "
        "hostile row next to a larger one survives the one-direction filter), `fedra` (Krum's n > 2f + 2, which "
        "its `check_setting` does not require), `repeated_median` and `residual` ((n - 2) // 2). Past the "
        "breakdown point the selecting, averaging and coordinate-wise rules return outputs as large as the "
        "hostile rows, finite and within the rows' coordinate range; the clipping rules and `fltrust` stay "
        "within their radius; `repeated_median`, `residual` and `pawbrofl` may exceed float32 there (+-inf, "
        "refused by the server).",
        "",
    ]
    text = "\n".join(header + table(results) + ["", "## tolerated_rows (documented breakdown) per setting", "",
                                                  "`-`: the rule's `check_setting` refuses that f.", ""]
                     + tolerated_table(names)) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
