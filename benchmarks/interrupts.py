"""Ctrl-C at many moments of a real `byzlab run`, and identical runs started together: the counts of
benchmarks/reliability.md (issue 12).

For each delay, a `byzlab run` (digits, 12 rounds, a checkpoint every 5) gets SIGINT that many seconds
after it starts; it must exit with 130, and the run, resumed (or rerun when it had not written anything),
must end with the metrics of an undisturbed run, bit for bit, with one FINISHED MLflow run. Then pairs of
identical runs start together in a fresh directory: neither may crash, and MLflow must hold one run.

    python benchmarks/interrupts.py [--delays 1 2 3 ...] [--pairs 3]   # writes benchmarks/results/interrupts.md
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from mlflow import MlflowClient

RESULTS = Path(__file__).parent / "results" / "interrupts.md"
BYZLAB = [sys.executable, "-m", "byzlab.orchestrator"]
SETTING = ["-o", "run.rounds=12", "-o", "run.checkpoint_every=5"]


def _byzlab(*args: str) -> subprocess.Popen:
    # Started from a script's background job, a child inherits SIGINT ignored and Python never raises
    # KeyboardInterrupt (every "Ctrl-C" would be ignored): give it the default disposition, as in a terminal.
    return subprocess.Popen([*BYZLAB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _start(output_dir: Path) -> subprocess.Popen:
    return _byzlab("run", *SETTING, "-o", f"run.output_dir={output_dir}")


def _resume(run_dir: Path) -> subprocess.Popen:
    return _byzlab("run", "--resume", str(run_dir))


def _numbers(output_dir: Path) -> dict:
    run_dir = next(p for p in output_dir.iterdir() if (p / "run.json").is_file())
    table = pq.read_table(run_dir / "metrics.parquet")
    return {k: v for k, v in table.to_pydict().items() if not k.endswith("_seconds")}


def _mlflow_statuses(output_dir: Path) -> list[str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("byzlab")
    return [] if experiment is None else [r.info.status for r in client.search_runs([experiment.experiment_id])]


def interrupt_at(delay: float, reference: dict, root: Path) -> dict:
    output_dir = root / f"sigint-{delay:g}"
    process = _start(output_dir)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    code = process.returncode
    run_dirs = [p for p in output_dir.glob("*") if (p / "run.json").is_file()] if output_dir.exists() else []
    (_resume(run_dirs[0]) if run_dirs else _start(output_dir)).communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip() and "Token authentication is enabled" not in line]
    return {"delay": delay, "exit": code, "traceback": "Traceback" in err, "equal": _numbers(output_dir) == reference,
            "mlflow": _mlflow_statuses(output_dir), "printed": lines[-3:]}


def pair(root: Path, index: int) -> dict:
    output_dir = root / f"pair-{index}"
    processes = [_start(output_dir) for _ in range(2)]
    outcomes = [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in processes]
    return {"codes": sorted(code for code, _ in outcomes), "crash": any("Traceback" in err for _, err in outcomes),
            "mlflow": _mlflow_statuses(output_dir)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delays", type=float, nargs="*", default=[x / 2 for x in range(1, 29)])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    reference_dir = root / "reference"
    reference_process = _start(reference_dir)
    _, err = reference_process.communicate(timeout=300)
    if reference_process.returncode != 0:
        raise SystemExit(f"the undisturbed run failed (exit {reference_process.returncode}):\n{err}")
    reference = _numbers(reference_dir)
    interrupts = [interrupt_at(delay, reference, root) for delay in args.delays]
    pairs = [pair(root, index) for index in range(args.pairs)]
    lines = [
        "# Interrupts and concurrent starts (`python benchmarks/interrupts.py`)", "",
        "Digits, 12 rounds, a checkpoint every 5 rounds; SIGINT sent the given seconds after `byzlab run` starts",
        "(Ray's start-up included), then the run resumed (or rerun if nothing was written).", "",
        "| SIGINT after (s) | exit code | traceback | resumed run equals an undisturbed one | MLflow runs |",
        "| ---: | ---: | --- | --- | --- |",
        *(f"| {r['delay']:g} | {r['exit']} | {'yes' if r['traceback'] else 'no'} | {'yes' if r['equal'] else 'NO'} | "
          f"{', '.join(r['mlflow']) or 'none'} |" for r in interrupts), "",
        f"Ctrl-C's: {len(interrupts)}; exit 130: {sum(r['exit'] == 130 for r in interrupts)}; resumed bitwise-equal: "
        f"{sum(r['equal'] for r in interrupts)}; orphan or duplicate MLflow runs: "
        f"{sum(r['mlflow'] != ['FINISHED'] for r in interrupts)}.", "",
        *(f"- after {r['delay']:g} s, exit {r['exit']}; its last lines: `{' / '.join(r['printed'])}`"
          for r in interrupts if r["exit"] != 130), "",
        "| pair | exit codes | crash | MLflow runs |", "| ---: | --- | --- | --- |",
        *(f"| {i} | {p['codes']} | {'yes' if p['crash'] else 'no'} | {', '.join(p['mlflow'])} |" for i, p in enumerate(pairs)),
        "", f"Concurrent starts: {len(pairs)} pairs; crashes: {sum(p['crash'] for p in pairs)}; duplicate MLflow runs: "
        f"{sum(len(p['mlflow']) != 1 for p in pairs)}.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
