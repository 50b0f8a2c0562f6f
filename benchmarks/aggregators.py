"""Time and peak memory of every registered aggregator on CPU.

Each (rule, n, d) runs in a fresh subprocess, so peak memory is that run's alone: the reported figure is
the growth of the process's peak resident set during the call (VmHWM after a reset, minus VmRSS before),
in MiB and in multiples of the input matrix U (n x d float32). Inputs are clustered Gaussian updates with 20% far outliers; f = 20% of n is declared. A
combination whose input would not fit in the memory budget, or that runs past the time limit, is skipped
and the table says so.

    python benchmarks/aggregators.py [--timeout 300] [--memory-gib 20] [--rules krum,median]

``--byzfl`` instead measures, for the rules EPFL's ByzFL also has, byzlab and ByzFL's torch and numpy
backends side by side in one process on the same inputs (n = 50 and 100, d = 1e6; 1 and 2 threads) and how far
their outputs are apart; ByzFL must be importable (``pip install byzfl`` with its dependencies, or on
``PYTHONPATH``). It rewrites only the ByzFL section of the results file.

``--before REV --rules ... --cells 100:1e6,...`` measures each cell with this code and with git revision REV's
(checked out in a temporary worktree), one after the other in the same run: speed-ups as ratios taken side by
side. It rewrites only the "Before and after" section of those cells.

Results: ``benchmarks/results/aggregators.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
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


# byzlab rule -> ByzFL class and its constructor arguments given f (ByzFL 0.0.11, byzfl.aggregators)
BYZFL_RULES = {
    "fedavg": ("Average", lambda f: {}),
    "median": ("Median", lambda f: {}),
    "trimmed_mean": ("TrMean", lambda f: {"f": f}),
    "krum": ("Krum", lambda f: {"f": f}),
    "multi_krum": ("MultiKrum", lambda f: {"f": f}),
    "geomed": ("GeometricMedian", lambda f: {}),
}
BYZFL_CELLS = ((50, 1_000_000, 1), (100, 1_000_000, 2))  # (n, d, torch threads)
BYZFL_HEADING = "## Side by side with ByzFL"
BEFORE_HEADING = "## Before and after (issue 13)"


def _inputs(n: int, d: int):
    import torch

    g = torch.Generator().manual_seed(0)
    updates = 0.01 * torch.randn(n, d, generator=g) + 0.05 * torch.randn(d, generator=g)
    byzantine = max(1, n // 5)
    updates[:byzantine] *= -10
    return g, updates, byzantine


def measure_byzfl(rule: str, n: int, d: int, threads: int) -> dict[str, float]:
    """Seconds of byzlab's ``rule`` and of ByzFL's torch and numpy backends on the same inputs in this process,
    and the largest difference of ByzFL's outputs from byzlab's relative to byzlab's largest entry."""
    import byzfl
    import torch

    from byzlab import aggregators
    from byzlab.aggregators import RoundContext

    torch.set_num_threads(threads)
    _, updates, byzantine = _inputs(n, d)
    ctx = RoundContext(num_samples=torch.ones(n), num_byzantine=byzantine)
    rule_fn = aggregators.build(rule)
    name, kwargs = BYZFL_RULES[rule]
    theirs = getattr(byzfl, name)(**kwargs(byzantine))
    result = {}
    for label, call in (("byzlab", lambda: rule_fn(updates, ctx).update),
                        ("byzfl_torch", lambda: theirs(updates)),
                        ("byzfl_numpy", lambda: torch.from_numpy(theirs(updates.numpy())))):
        started = time.perf_counter()
        out = call()
        result[label] = time.perf_counter() - started
        if label == "byzlab":
            ours = out
        else:
            result[label + "_diff"] = float((out.float() - ours).abs().max() / ours.abs().max())
    return result


def measure_one(rule: str, n: int, d: int) -> dict[str, float]:
    """Run one aggregation in this process and report seconds and peak-memory growth."""
    import torch

    from byzlab import aggregators
    from byzlab.aggregators import RoundContext

    torch.set_num_threads(2)
    g, updates, byzantine = _inputs(n, d)
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
    parser.add_argument("--byzfl", action="store_true", help="byzlab beside ByzFL on the rules both have")
    parser.add_argument("--byzfl-one", nargs=4, metavar=("RULE", "N", "D", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--before", metavar="REV", help="measure --cells of --rules with this and REV's code")
    parser.add_argument("--cells", default="100:1e6", help="with --before: comma-separated n:d")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        rule, n, d = args.one
        print(json.dumps(measure_one(rule, int(n), int(d))))
        return
    if args.byzfl_one:
        rule, n, d, threads = args.byzfl_one
        print(json.dumps(measure_byzfl(rule, int(n), int(d), int(threads))))
        return
    if args.byzfl:
        compare_with_byzfl(args)
        return
    if args.before:
        compare_with_before(args)
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
        f"'timeout': over {args.timeout:g} s. A cell includes what the rule does once per process on its first "
        "call: FedRA imports scipy.stats there (~1.2 s, kept out of the actors' start-up), so its small cells "
        "read ~1 s.",
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
    _write_section(args.output, "\n".join(lines), None)


def _write_section(path: Path, text: str, heading: str | None) -> None:
    """Replace one part of the results file: the main table (``heading`` None) or the section that starts
    with the line ``heading``; the other parts stay as they were."""
    old = path.read_text() if path.is_file() else ""
    parts = re.split(r"(?m)^(?=## )", old)
    main, sections = parts[0], {part.splitlines()[0]: part for part in parts[1:]}
    if heading is None:
        main = text
    else:
        sections[heading] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(part.rstrip("\n") + "\n" for part in (main, *sections.values())))
    print(text)


def _measure_cell(args: argparse.Namespace, flag: str, values: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, flag, *values], capture_output=True, text=True,
                         timeout=args.timeout, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_with_before(args: argparse.Namespace) -> None:
    """Each cell measured with this tree's code and with ``args.before``'s (a git revision, checked out in a
    temporary worktree and imported from there), one after the other in this run."""
    repo = Path(__file__).resolve().parents[1]
    cells = [tuple(int(float(v)) for v in cell.split(":")) for cell in args.cells.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tree, package = Path(tmp) / "tree", Path(tmp) / "package"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), args.before],
                       check=True, capture_output=True)
        try:
            package.mkdir()
            (package / "byzlab").symlink_to(tree)
            before_env = {**os.environ, "PYTHONPATH": str(package)}
            revision, head = (subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", rev],
                                             capture_output=True, text=True, check=True).stdout.strip()
                              for rev in (args.before, "HEAD"))
            # named by both revisions: an earlier comparison of the same cells stays in the file
            heading = f"{BEFORE_HEADING}, {revision} to {head}: " + ", ".join(f"n={n}, d={d:.3g}" for n, d in cells)
            lines = [
                heading, "",
                f"`python benchmarks/aggregators.py --before {args.before} --rules {args.rules} --cells {args.cells}`, "
                f"{time.strftime('%Y-%m-%d')}: every cell measured with this code (after) and with {revision}'s "
                "(before, from a git worktree), one after the other in one run, as in the table above. Each "
                "cell: seconds after / before (speed-up), peak memory growth after / before in multiples of the "
                "input.", "",
                "| rule | " + " | ".join(f"n={n}, d={d:.3g}" for n, d in cells) + " |",
                "| --- | " + " | ".join("---" for _ in cells) + " |",
            ]
            for rule in args.rules.split(","):
                row = []
                for n, d in cells:
                    try:
                        after = _measure_cell(args, "--one", [rule, str(n), str(d)])
                        before = _measure_cell(args, "--one", [rule, str(n), str(d)], before_env)
                        row.append(f"{after['seconds']:.2f} / {before['seconds']:.2f} s "
                                   f"({before['seconds'] / after['seconds']:.1f}x), "
                                   f"{after['peak_over_input']:.1f}x / {before['peak_over_input']:.1f}x")
                    except subprocess.TimeoutExpired:
                        row.append(f"timeout (over {args.timeout:g} s)")
                    print(rule, n, d, row[-1], flush=True)
                lines.append(f"| {rule} | " + " | ".join(row) + " |")
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
    _write_section(args.output, "\n".join(lines), heading)


def compare_with_byzfl(args: argparse.Namespace) -> None:
    import byzfl  # noqa: F401  (fail before measuring anything when ByzFL is missing)

    rules = [r for r in (args.rules.split(",") if args.rules else BYZFL_RULES) if r in BYZFL_RULES]
    lines = [
        BYZFL_HEADING, "",
        f"`python benchmarks/aggregators.py --byzfl`, {time.strftime('%Y-%m-%d')}, ByzFL {_byzfl_version()}. Each "
        "cell: seconds of byzlab / ByzFL torch / ByzFL numpy, one process per cell, the same inputs as above; then "
        "the largest difference of ByzFL's outputs from byzlab's, relative to byzlab's largest entry (torch, "
        "numpy). ByzFL's geometric median runs a fixed number of smoothed Weiszfeld steps, byzlab's to a "
        "tolerance, so those two differ by design.", "",
        "| rule | " + " | ".join(f"n={n}, d={d:.0e}, {t} thread{'s' * (t > 1)}" for n, d, t in BYZFL_CELLS) + " |",
        "| --- | " + " | ".join("---" for _ in BYZFL_CELLS) + " |",
    ]
    for rule in rules:
        cells = []
        for n, d, threads in BYZFL_CELLS:
            out = subprocess.run([sys.executable, __file__, "--byzfl-one", rule, str(n), str(d), str(threads)],
                                 capture_output=True, text=True, timeout=args.timeout, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            cells.append(f"{r['byzlab']:.3f} / {r['byzfl_torch']:.3f} / {r['byzfl_numpy']:.3f} s "
                         f"({r['byzlab'] / min(r['byzfl_torch'], r['byzfl_numpy']):.2f}x the faster ByzFL; "
                         f"diff {r['byzfl_torch_diff']:.0e}, {r['byzfl_numpy_diff']:.0e})")
            print(rule, n, d, threads, cells[-1], flush=True)
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    _write_section(args.output, "\n".join(lines), BYZFL_HEADING)


def _byzfl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("byzfl")
    except PackageNotFoundError:
        return "(version unknown)"


if __name__ == "__main__":
    main()
