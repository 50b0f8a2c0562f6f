"""Fidelity: a reduced row of LASA Table 1 run by byzlab beside the published numbers, with the attacks both as
the LASA authors' code runs them (variant ``lasa_code``) and as the paper writes them (variant ``paper``)
(issue 14, item 3).

Xu, Zhang & Hu, "Achieving Byzantine-Resilient Federated Learning via Layer-Adaptive Sparsified Model
Aggregation", Table 1, FMNIST (CNN) row: IID, 6,000 clients of 10 images, 100 sampled per round, 25% attackers,
local SGD with momentum 0.9; metric acc_best. The trials are those of the ready sweeps ``sweeps/lasa_table1.yaml``
(the authors' code: their attacks, baselines, client-side clip and FMNIST recipe) and
``sweeps/lasa_table1_paper.yaml`` (paper text), restricted to the FMNIST row, the defenses FedAvg, TrMean,
Multi-Krum and LASA, the attacks none, TailoredTrMean, Lie and ByzMean, seed 0, and shortened to ``--rounds``
rounds (the sweeps run 180 and 100). Everything else is the sweeps' own config, expanded by the sweep machinery,
except the placement: this machine's default (``byzlab run``'s) instead of the sweeps' 6-CPU trials. A trial
both sweeps have (none since the code twin took the code's recipe) would run once.

Each finished trial is kept in ``--store`` (JSON, keyed by run id), so an interrupted benchmark continues where
it stopped; the table is written from the store. Run it alone on the machine (flock -x /tmp/byzlab-cpu.lock):

    python benchmarks/fidelity.py [--rounds 20] [--defenses fedavg,trimmed_mean,multi_krum,lasa]
                                  [--attacks none,tailored_trmean,lie,byzmean] [--output ...] [--store ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from byzlab.sweeps.spec import Sweep, Trial, coupled_keys, drop_stale_excludes, expand, parse_spec, resolve_path

RESULTS = Path(__file__).parent / "results" / "fidelity.md"
STORE = Path(__file__).parent / "results" / "fidelity.json"
SWEEPS = {"lasa_code": "lasa_table1", "paper": "lasa_table1_paper"}
DEFENSES = ["fedavg", "trimmed_mean", "multi_krum", "lasa"]
ATTACKS = ["none", "tailored_trmean", "lie", "byzmean"]
DATASET = "fashion-mnist"

# LASA Table 1, FMNIST (CNN): test accuracy (%) averaged over three seeds, the full run.
PAPER_TABLE_1_FMNIST = {
    "fedavg": {"none": 86.28, "tailored_trmean": 10.08, "lie": 83.47, "byzmean": 11.22},
    "trimmed_mean": {"none": 84.05, "tailored_trmean": 10.59, "lie": 77.78, "byzmean": 10.54},
    "multi_krum": {"none": 86.91, "tailored_trmean": 10.00, "lie": 80.43, "byzmean": 11.80},
    "lasa": {"none": 87.62, "tailored_trmean": 87.97, "lie": 87.54, "byzmean": 87.65},
}
LABELS = {"fedavg": "FedAvg", "trimmed_mean": "TrMean", "multi_krum": "Multi-Krum", "lasa": "LASA",
          "none": "no attack", "tailored_trmean": "TailoredTrMean", "lie": "Lie", "byzmean": "ByzMean"}


def reduced_sweep(name: str, *, rounds: int, defenses: list[str], attacks: list[str], output_dir: str) -> Sweep:
    """The ready sweep ``name`` cut to one dataset's row, the given defenses and attacks, seed 0 and ``rounds``
    rounds, on this machine's default placement, without MLflow or downloads, writing under ``output_dir``."""
    raw = yaml.safe_load(resolve_path(name).read_text())
    raw["grid"] = {key: _rows_of(key, values, rounds) for key, values in raw["grid"].items()}
    raw["defenses"] = {k: v for k, v in raw["defenses"].items() if k in defenses}
    raw["attacks"] = {k: v for k, v in raw["attacks"].items() if k in attacks}
    raw["seeds"] = [0]
    raw["base"]["run"] = {"rounds": rounds, "eval_every": 1, "checkpoint_every": rounds, "output_dir": output_dir}
    raw["base"]["data"] = {"download": False}
    raw["base"]["tracking"] = {"enabled": False}
    missing = sorted(set(defenses) - set(raw["defenses"]) | set(attacks) - set(raw["attacks"]))
    if missing:
        sys.exit(f"{name}: no defense or attack named {', '.join(missing)}")
    return expand(parse_spec(drop_stale_excludes(raw), name))


def _rows_of(key: str, values: list, rounds: int) -> list:
    """A grid entry cut to the FMNIST row: a coupled entry keeps the rows of that dataset, with ``rounds``
    rounds where it sets run.rounds; data.dataset alone keeps that dataset."""
    parts = coupled_keys(key)
    if parts == ["data.dataset"]:
        return [DATASET]
    if "data.dataset" not in parts:
        return values
    rows = [list(row) for row in values if row[parts.index("data.dataset")] == DATASET]
    if "run.rounds" in parts:
        for row in rows:
            row[parts.index("run.rounds")] = rounds
    return rows


def run_trial(trial: Trial) -> dict:
    from byzlab.orchestrator.run.experiment import run_experiment

    started = time.perf_counter()
    result = run_experiment(trial.config)
    params = trial.config.server.aggregator_params
    return {
        "defense": trial.config.server.aggregator,
        "attack": trial.config.threat.attack,
        "variant": trial.config.threat.attack_params.get("variant", "paper"),
        "defense_params": {k: params[k] for k in ("trim", "f", "variant") if params.get(k) is not None},
        "local_epochs": trial.config.clients.local_epochs,
        "update_clip": trial.config.clients.update_clip,
        "acc_best": result.summary["acc_best"],
        "acc_final": result.summary["acc_final"],
        "seconds": time.perf_counter() - started,
    }


def table(store: dict, twins: dict[str, set[str]], *, rounds: int, defenses: list[str], attacks: list[str],
          command: str) -> str:
    """The row's cells by sweep twin (``twins``: run id -> the sweeps that have that trial); stored runs of
    this length that no sweep has any longer (an earlier reading of the code) are listed after the table."""
    cells = {(r["defense"], r["attack"], twin): r for run_id, r in store.items() if r.get("rounds") == rounds
             for twin in twins.get(run_id, ())}
    current = [r for run_id, r in store.items() if r.get("rounds") == rounds and run_id in twins]
    earlier = [r for run_id, r in store.items() if r.get("rounds") == rounds and run_id not in twins]
    lines = [
        f"# Fidelity: LASA Table 1, FMNIST row, {rounds} rounds, seed 0 (issue 14, item 3)",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d')}, {platform.machine()}, CPU. Trials: {len(current)}, "
        f"{sum(r['seconds'] for r in current) / 60:.1f} min in all (each trial's wall time, Ray's start excluded).",
        "",
        "Cells: best test accuracy (%) of the run (acc_best), byzlab as the LASA authors' code runs it "
        "(`sweeps/lasa_table1.yaml`: their FMNIST recipe of 5 local epochs of batch 10, dropout 0.5, lr decay "
        "0.999, the client-side clip to norm 1 for FedAvg and TrMean, the attacks' `lasa_code`, TrMean and "
        "Multi-Krum with the code's count of 10) / as the paper writes it (`lasa_table1_paper.yaml`: App. 7.3's "
        "attacks, byzlab's 2 local epochs of batch 32 where the paper is silent, the true count), then the "
        "paper's Table 1 (three seeds, the full run). One number: the same run in both.",
        "",
        "| defense | " + " | ".join(LABELS.get(a, a) for a in attacks) + " |",
        "| --- | " + " | ".join("---:" for _ in attacks) + " |",
    ]

    def accuracy(defense: str, attack: str, twin: str) -> str:
        row = cells.get((defense, attack, twin))
        return f"{100 * row['acc_best']:.1f}" if row else "…"

    for defense in defenses:
        row = []
        for attack in attacks:
            paper = PAPER_TABLE_1_FMNIST.get(defense, {}).get(attack)
            code, text = accuracy(defense, attack, "lasa_code"), accuracy(defense, attack, "paper")
            code_row = cells.get((defense, attack, "lasa_code"))
            shared = code_row is not None and code_row is cells.get((defense, attack, "paper"))
            row.append((code if shared else f"{code} / {text}") + (f" ({paper:.2f})" if paper is not None else ""))
        lines.append(f"| {LABELS.get(defense, defense)} | " + " | ".join(row) + " |")
    if earlier:
        lines += ["", "Runs of earlier readings of the code, no longer in the sweeps: the attacks' code against "
                  "baselines told the true count (no `trim` or `f`), and the attacks' and baselines' code in "
                  "byzlab's recipe (2 local epochs of batch 32, no dropout, no client-side clip) before the code "
                  "twin took the code's own:", "",
                  "| defense | attack | variant | defense params | local epochs | acc_best |",
                  "| --- | --- | --- | --- | ---: | ---: |"]
        lines += [f"| {r['defense']} | {r['attack']} | {r['variant']} | "
                  f"{', '.join(f'{k}={v}' for k, v in r.get('defense_params', {}).items()) or '–'} | "
                  f"{r.get('local_epochs', 2)} | {100 * r['acc_best']:.1f} |"
                  for r in sorted(earlier, key=lambda r: (r["defense"], r["attack"], r["variant"]))]
    lines += ["", "| trial | sweeps | seconds |", "| --- | --- | ---: |"]
    for run_id, r in sorted(store.items(), key=lambda item: (item[1]["defense"], item[1]["attack"])):
        if r.get("rounds") == rounds and run_id in twins:
            lines.append(f"| {r['defense']}, {r['attack']} | {', '.join(sorted(twins[run_id]))} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--defenses", default=",".join(DEFENSES))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--store", type=Path, default=STORE, help="finished trials, JSON; reused when present")
    args = parser.parse_args(argv)
    defenses, attacks = args.defenses.split(","), args.attacks.split(",")
    command = "python benchmarks/fidelity.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    store = json.loads(args.store.read_text()) if args.store.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        trials: dict[str, Trial] = {}
        twins: dict[str, set[str]] = {}
        for twin, sweep in SWEEPS.items():
            reduced = reduced_sweep(sweep, rounds=args.rounds, defenses=defenses, attacks=attacks, output_dir=tmp)
            for trial in reduced.trials:
                trials.setdefault(trial.run_id, trial)  # a trial both sweeps have runs once
                twins.setdefault(trial.run_id, set()).add(twin)
        todo = [t for run_id, t in trials.items() if run_id not in store]
        print(f"{len(trials)} trials, {len(trials) - len(todo)} already in {args.store}", flush=True)
        if todo:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
            try:
                for position, trial in enumerate(todo, 1):
                    row = {**run_trial(trial), "rounds": args.rounds}
                    store[trial.run_id] = row
                    args.store.parent.mkdir(parents=True, exist_ok=True)
                    args.store.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
                    print(f"[{position}/{len(todo)}] {row['defense']} {row['attack']} {row['variant']}: "
                          f"acc_best {row['acc_best']:.4f} in {row['seconds']:.0f} s", flush=True)
            finally:
                ray.shutdown()
    text = table(store, twins, rounds=args.rounds, defenses=defenses, attacks=attacks, command=command)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
