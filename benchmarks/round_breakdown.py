"""Where a round's time goes: local training, transfer, aggregation, evaluation, the rest.

Runs the quickstart (digits, MLP) and Fashion-MNIST with the CNN, each with 1 and 2 client actors, and
splits every round (after the first, which warms up) into

- local training: the slowest client actor's compute (the critical path of the client phase),
- transfer: the rest of the client phase (broadcast of the global model, gathering and stacking updates),
- aggregation, evaluation: as measured on the server,
- server other: the rest of the server's round (sampling, applying the update),
- driver: what the driver adds per round, the gap between two rounds' reports less the round (its MLflow
  logging, Parquet and checkpoint writes overlap the next round, which the server computes meanwhile).

Medians over rounds are written to ``benchmarks/results/round_breakdown.md``.

    python benchmarks/round_breakdown.py [--rounds-digits 20] [--rounds-fashion 4] [--cpus 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import execute, prepare

RESULTS = Path(__file__).parent / "results" / "round_breakdown.md"
PHASES = ("local training", "transfer", "aggregation", "evaluation", "server other", "driver", "round total")


def _workloads(rounds_digits: int, rounds_fashion: int) -> dict[str, list[str]]:
    return {
        "quickstart (digits, mlp, 10 clients, 2 local epochs)": [f"run.rounds={rounds_digits}"],
        "fashion-mnist (cnn, 10 iid clients, 50 local steps of 32)": [
            "data.dataset=fashion-mnist", "partition.scheme=iid", "clients.local_steps=50",
            f"run.rounds={rounds_fashion}",
        ],
    }


def _placement(actors: int, cpus: float) -> list[str]:
    """The server keeps one CPU (half the machine when it has fewer than 2); client actors share the rest."""
    server_cpus = 1.0 if cpus >= 2 else cpus / 2
    client_cpus = (cpus - server_cpus) / actors
    return [f"run.client_actors={actors}", f"run.client_actor_cpus={client_cpus:g}", f"run.server_cpus={server_cpus:g}"]


def measure(overrides: list[str], output_dir: Path) -> dict[str, float]:
    cfg = build_config({}, [f"run.output_dir={output_dir}", "run.checkpoint_every=5", *overrides])
    prepared = prepare(cfg, force=True)
    stamps: list[float] = []
    started = time.perf_counter()
    result = execute(prepared, on_round=lambda metrics: stamps.append(time.perf_counter()))
    rows = result.metrics.to_pylist()
    driver_walls = [b - a for a, b in zip(stamps, stamps[1:])]
    phases: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for row, wall in zip(rows[1:], driver_walls):
        compute = max(v for k, v in row.items() if k.startswith("actor") and k.endswith("_train_seconds"))
        evaluation = row.get("eval_seconds") or 0.0
        phases["local training"].append(compute)
        phases["transfer"].append(row["train_seconds"] - compute)
        phases["aggregation"].append(row["agg_seconds"])
        phases["evaluation"].append(evaluation)
        phases["server other"].append(row["round_seconds"] - row["train_seconds"] - row["agg_seconds"] - evaluation)
        phases["driver"].append(wall - row["round_seconds"])
        phases["round total"].append(wall)
    summary = {phase: statistics.median(values) for phase, values in phases.items()}
    summary["startup"] = stamps[0] - started - rows[0]["round_seconds"]
    summary["accuracy"] = rows[-1]["test_accuracy"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-digits", type=int, default=20)
    parser.add_argument("--rounds-fashion", type=int, default=4)
    parser.add_argument("--cpus", type=float, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    lines = [
        "# Round time breakdown",
        "",
        f"`python benchmarks/round_breakdown.py --cpus {args.cpus:g}` on {platform.machine()}, "
        f"{args.cpus:g} Ray CPUs, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
        f"{time.strftime('%Y-%m-%d')}. Seconds per round, median over rounds 2..R (round 1 warms up); "
        "startup = actor creation and data transfer before round 1; MLflow tracking on.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for workload, overrides in _workloads(args.rounds_digits, args.rounds_fashion).items():
            lines += [f"## {workload}", "", "| phase | " + " | ".join(f"{a} client actor(s)" for a in (1, 2)) + " |",
                      "| --- | ---: | ---: |"]
            results = []
            for actors in (1, 2):
                placement = _placement(actors, args.cpus)
                print(f"{workload}: {actors} actor(s) {placement}", flush=True)
                results.append(measure([*overrides, *placement], Path(tmp) / f"{actors}"))
            for key in (*PHASES, "startup", "accuracy"):
                cells = " | ".join(f"{r[key]:.4f}" if key != "accuracy" else f"{r[key]:.3f}" for r in results)
                lines.append(f"| {key} | {cells} |")
            lines += ["", "placement: " + "; ".join(" ".join(_placement(a, args.cpus)) for a in (1, 2)), ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
