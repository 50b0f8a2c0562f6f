"""Time and peak memory of every registered aggregator on CPU.

Each (rule, n, d) runs in a fresh subprocess, so peak memory is that run's alone: the reported figure is
the growth of the process's peak resident set during the call (VmHWM after a reset, minus VmRSS before),
in MiB and in multiples of the input matrix U (n x d float32). Inputs are clustered Gaussian updates with 20% far outliers; f = 20% of n is declared. A
combination whose input would not fit in the memory budget, or that runs past the time limit, is skipped
and the table says so.

    python benchmarks/aggregators.py [--timeout 300] [--memory-gib 20] [--rules krum,median]

Results: ``benchmarks/results/aggregators.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

# This script shares its name with the package it measures: keep its own folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

RESULTS = Path(__file__).parent / "results" / "aggregators.md"
CLIENTS = (10, 25, 100)
DIMENSIONS = (100_000, 1_000_000, 11_000_000)  # 11M ~ ResNet-18
CLASSES = 10
PROXY_SAMPLES = 32  # labeled server data (fltrust, sageflow)
PUBLIC_SAMPLES = 256  # unlabeled server data (sdea), the rule's passes and batches as configured


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def measure_one(rule: str, n: int, d: int) -> dict[str, float]:
    """Run one aggregation in this process and report seconds and peak-memory growth."""
    import torch

    from byzlab import aggregators
    from byzlab.aggregators import RoundContext

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    updates = 0.01 * torch.randn(n, d, generator=g) + 0.05 * torch.randn(d, generator=g)
    byzantine = max(1, n // 5)
    updates[:byzantine] *= -10
    features = (d - CLASSES) // CLASSES

    def model_fn(flat, x):  # a linear model whose parameter vector has exactly d entries
        return x @ flat[: features * CLASSES].view(features, CLASSES) + flat[features * CLASSES : features * CLASSES + CLASSES]

    proxy = (torch.randn(PROXY_SAMPLES, features, generator=g), torch.randint(0, CLASSES, (PROXY_SAMPLES,), generator=g))
    public = torch.randn(PUBLIC_SAMPLES, features, generator=g)
    ctx = RoundContext(
        client_ids=torch.arange(n), num_samples=torch.randint(20, 200, (n,), generator=g).float(),
        loss_gaps=torch.rand(n, generator=g), global_params=torch.zeros(d), num_byzantine=byzantine,
        generator=torch.Generator().manual_seed(1), model_fn=model_fn, proxy_data=proxy, public_data=public, round=1,
    )
    rule_fn = aggregators.build(rule)
    _reset_peak()
    baseline = _status_bytes("VmRSS")
    started = time.perf_counter()
    rule_fn(updates, ctx)
    seconds = time.perf_counter() - started
    growth = _status_bytes("VmHWM") - baseline
    return {"seconds": seconds, "peak_mib": growth / 2**20, "peak_over_input": growth / (updates.numel() * 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300, help="seconds per (rule, n, d)")
    parser.add_argument("--memory-gib", type=float, default=20, help="skip inputs that leave less than 3x room")
    parser.add_argument("--rules", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--one", nargs=3, metavar=("RULE", "N", "D"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        rule, n, d = args.one
        print(json.dumps(measure_one(rule, int(n), int(d))))
        return

    from byzlab import aggregators

    rules = args.rules.split(",") if args.rules else aggregators.names()
    # Rows measured earlier stay (a run with --rules re-measures those rules only).
    rows = {}
    if args.output.is_file():
        for line in args.output.read_text().splitlines():
            name = line.split("|")[1].strip() if line.startswith("| ") else ""
            if name in aggregators.names():
                rows[name] = line
    header = "| rule | " + " | ".join(f"n={n}, d={d:.0e}" for d in DIMENSIONS for n in CLIENTS) + " |"
    lines = [
        "# Aggregator time and peak memory (CPU)",
        "",
        f"`python benchmarks/aggregators.py` on {platform.machine()} ({platform.processor() or 'cpu'}), 2 torch "
        f"threads, {time.strftime('%Y-%m-%d')}. Each cell: seconds for one aggregation / peak memory growth "
        "during the call in MiB and in multiples of the input matrix (n x d float32; a few MiB are library "
        "start-up noise). One fresh process per cell. Rules that evaluate models (fltrust, sageflow, sdea) see a "
        f"linear model with exactly d parameters, {PROXY_SAMPLES} labeled and {PUBLIC_SAMPLES} unlabeled server samples. "
        f"'skip (memory)': the input alone would exceed a third of {args.memory_gib:g} GiB; "
        f"'timeout': over {args.timeout:g} s.",
        "",
        header,
        "| --- | " + " | ".join("---:" for _ in DIMENSIONS for _ in CLIENTS) + " |",
    ]
    for rule in rules:
        cells = []
        for d in DIMENSIONS:
            for n in CLIENTS:
                if n * d * 4 * 3 > args.memory_gib * 2**30:
                    cells.append("skip (memory)")
                    continue
                try:
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", rule, str(n), str(d)],
                        capture_output=True, text=True, timeout=args.timeout, check=True,
                    )
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    cells.append(
                        f"{result['seconds']:.3f} s / {result['peak_mib']:.0f} MiB ({result['peak_over_input']:.1f}x)"
                    )
                except subprocess.TimeoutExpired:
                    cells.append("timeout")
                except subprocess.CalledProcessError as err:
                    cells.append("error: " + (err.stderr.strip().splitlines() or ["?"])[-1][:60])
                print(rule, n, d, cells[-1], flush=True)
        rows[rule] = f"| {rule} | " + " | ".join(cells) + " |"
    lines += [rows[rule] for rule in sorted(rows)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
