"""What a sweep costs besides its rounds: fresh processes per trial (``reuse_workers: false``, the path of
before worker reuse) against trials that borrow the previous trial's trainable and actors, side by side.

Runs the quickstart sweep (sweeps/quickstart.yaml: 12 trials on digits, each reserving 1 CPU) once per mode
and repeat, alternating the modes, on one local Ray cluster, with MLflow tracking on as by default. A Tune
callback stamps every trial's start, results and end on the driver; each trial's rounds are the sum of its
``round_seconds`` (the server's own measure of a round, metrics.parquet). Per trial:

- wall: from the moment its slot was free (the sweep's start for the first ``c`` trials, ``c`` = trials at a
  time; after that the completion that freed a slot) to its completion; overhead = wall - its rounds;
- start: from its slot being free to its first result, less round 1; per round: the gaps between results
  less their rounds (driver-side logging, checkpoints, Tune's round trip); finish: after the last round.

Per sweep: the wall time of ``launch`` (pre-flight, MLflow parent run, Tune, report) and of the trials
alone (Tune's start to the last completion), each as a ratio to (sum of rounds / c). Every trial's
computed metrics must be equal in every mode (the benchmark fails otherwise).

``--before REV`` adds a third mode, reused workers with git revision REV's code (checked out in a temporary
worktree), so that a change is measured against the code before it side by side, in the same run. Each sweep
runs in a process of its own, with a Ray cluster of its own whose workers import that mode's code.

Process start-up: each kind of process a trial starts (Tune's trainable, a client and a server actor) is
timed alone first, as the CPU seconds of importing what it imports in a new interpreter (the floor of a
slot's first trial: on c slots and c cores those imports run c at a time).

    flock -x /tmp/byzlab-cpu.lock python benchmarks/sweep_overhead.py [--repeats 2] [--cpus 2] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
from ray import tune

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from byzlab.orchestrator.config import read_yaml
from byzlab.sweeps import runner
from byzlab.sweeps.placement import ClusterShape, concurrent_trials, plan_trial
from byzlab.sweeps.spec import PACKAGED_SWEEPS, expand, parse_spec

RESULTS = Path(__file__).parent / "results" / "sweep_overhead.md"
TIMING_COLUMNS = ("seconds",)  # metric names containing this depend on the clock, not on the computation
MODES = {"fresh processes per trial": False, "reused workers": True}
BEFORE_MODE = "reused workers, {revision}'s code"
# What each process a trial starts imports: its module's import, as Ray's worker does when it unpickles the
# trainable or the actor class.
PROCESS_IMPORTS = {
    "Tune's trainable": "byzlab.sweeps.trainable",
    "client actor": "byzlab.actors.client",
    "server actor": "byzlab.actors.server",
}


class Timeline(tune.Callback):
    """Driver-side stamps: the experiment's start, each trial's start, results and completion."""

    def __init__(self) -> None:
        self.started = 0.0
        self.trials: dict[str, dict[str, Any]] = {}

    def setup(self, **info: Any) -> None:
        self.started = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.trials[trial.trial_id] = {"start": time.monotonic(), "results": [], "run_id": trial.config["trial"]["run_id"]}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.trials[trial.trial_id]["results"].append((time.monotonic(), result.get("round_seconds", 0.0)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.trials[trial.trial_id].update(end=time.monotonic(), pid=trial.last_result.get("pid"))


@dataclass
class TrialTimes:
    run_id: str
    pid: int
    rounds: float
    wall: float
    start: float
    per_round: float
    finish: float
    first_round: float
    first_on_slot: bool

    @property
    def overhead(self) -> float:
        return self.wall - self.rounds


@dataclass
class SweepTimes:
    mode: str
    launch_wall: float
    trials_wall: float
    concurrent: int
    trials: list[TrialTimes] = field(default_factory=list)
    metrics: dict[str, dict[str, list]] = field(default_factory=dict)

    @property
    def rounds(self) -> float:
        return sum(t.rounds for t in self.trials)


def _computed_metrics(run_dir: Path) -> dict[str, list]:
    """The metrics that do not depend on the clock; NaN as a string so that equal runs compare equal."""
    table = pq.read_table(run_dir / "metrics.parquet").to_pydict()
    return {key: ["nan" if isinstance(x, float) and math.isnan(x) else x for x in values]
            for key, values in table.items() if not any(word in key for word in TIMING_COLUMNS)}


def _trial_times(timeline: Timeline, runs: Path, concurrent: int) -> list[TrialTimes]:
    """Each trial's times on the slot model above (every trial of the quickstart reserves the same)."""
    by_start = sorted(timeline.trials.values(), key=lambda t: t["start"])
    completions = sorted(t["end"] for t in by_start)
    seen_pids: set[int] = set()
    times = []
    for index, trial in enumerate(by_start):
        slot_free = timeline.started if index < concurrent else completions[index - concurrent]
        rounds = pq.read_table(runs / trial["run_id"] / "metrics.parquet").column("round_seconds").to_pylist()
        stamps = [stamp for stamp, _ in trial["results"]]
        between = [b - a - r for a, b, r in zip(stamps, stamps[1:], rounds[1:])]
        times.append(TrialTimes(
            run_id=trial["run_id"], pid=trial["pid"], rounds=sum(rounds), wall=trial["end"] - slot_free,
            start=stamps[0] - slot_free - rounds[0], per_round=statistics.fmean(between),
            finish=trial["end"] - stamps[-1], first_round=rounds[0], first_on_slot=trial["pid"] not in seen_pids,
        ))
        seen_pids.add(trial["pid"])
    return times


def run_sweep(mode: str, reuse: bool, root: Path) -> SweepTimes:
    raw = read_yaml(PACKAGED_SWEEPS / "quickstart.yaml")
    raw["base"]["run"]["output_dir"] = str(root)
    raw["reuse_workers"] = reuse
    sweep = expand(parse_spec(raw, "quickstart"))
    cluster = ClusterShape.current()
    concurrent = min(concurrent_trials(plan_trial(trial.config, cluster), cluster) for trial in sweep.trials)
    timeline = Timeline()
    started = time.monotonic()
    outcome = runner.launch(sweep, force=True, callbacks=[timeline])
    launch_wall = time.monotonic() - started
    assert outcome.complete, outcome.failed
    runs = outcome.directory / runner.RUNS_DIR
    result = SweepTimes(mode, launch_wall, max(t["end"] for t in timeline.trials.values()) - timeline.started,
                        concurrent, _trial_times(timeline, runs, concurrent))
    result.metrics = {t.run_id: _computed_metrics(runs / t.run_id) for t in result.trials}
    return result


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _split(r: SweepTimes) -> tuple[list[TrialTimes], list[TrialTimes]]:
    """The first trial on each slot and the later ones. With reuse a slot is a trainable process; with fresh
    processes every trial has its own, and the first ``c`` to start are the first on their slots."""
    later = [t for t in r.trials if not t.first_on_slot]
    if not later:
        return r.trials[: r.concurrent], r.trials[r.concurrent:]
    return [t for t in r.trials if t.first_on_slot], later


def _table(results: list[SweepTimes]) -> list[str]:
    lines = [
        "| mode | launch wall (s) | trials wall (s) | Σ rounds (s) | launch wall / (Σ rounds / c) | trials wall / "
        "(Σ rounds / c) | first trial per slot: overhead (s) | later trials: overhead, mean / max (s) | "
        "later trials: start / per round / finish | later trials: round 1 (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ideal = r.rounds / r.concurrent
        first, later = _split(r)
        lines.append(
            f"| {r.mode} | {r.launch_wall:.1f} | {r.trials_wall:.1f} | {r.rounds:.1f} | {r.launch_wall / ideal:.2f}× | "
            f"{r.trials_wall / ideal:.2f}× | {_mean([t.overhead for t in first]):.2f} | "
            f"{_mean([t.overhead for t in later]):.2f} / {max(t.overhead for t in later):.2f} | "
            f"{_mean([t.start for t in later]):.2f} s / {_mean([t.per_round for t in later]) * 1e3:.0f} ms / "
            f"{_mean([t.finish for t in later]):.2f} s | {_mean([t.first_round for t in later]):.2f} |"
        )
    return lines


def _summary(results: list[SweepTimes]) -> list[str]:
    """The issue's two targets, per mode over the repeats."""
    lines = []
    for mode in dict.fromkeys(r.mode for r in results):
        runs = [r for r in results if r.mode == mode]
        later = [t.overhead for r in runs for t in _split(r)[1]]
        first = [t.overhead for r in runs for t in _split(r)[0]]
        ratios = [r.launch_wall / (r.rounds / r.concurrent) for r in runs]
        steady = [(r.trials_wall - _mean([t.overhead for t in _split(r)[0]])) / (r.rounds / r.concurrent) for r in runs]
        lines.append(
            f"- {mode}: overhead of a trial after the first on its slot {_mean(later):.2f} s mean, {max(later):.2f} s "
            f"max (target ≤ 1 s); the first trial on a slot {_mean(first):.1f} s; sweep wall "
            f"{', '.join(f'{x:.2f}×' for x in ratios)} (Σ rounds / c) (target ≤ 1.1×), "
            f"{', '.join(f'{x:.2f}×' for x in steady)} without the first trial per slot's overhead."
        )
    return lines


def _check_same_numbers(results: list[SweepTimes]) -> None:
    reference = results[0].metrics
    for r in results[1:]:
        if r.metrics != reference:
            differing = [run for run in reference if r.metrics.get(run) != reference[run]]
            raise AssertionError(f"{r.mode}: trials {differing} computed other numbers than {results[0].mode}")


def _from_json(text: str) -> SweepTimes:
    raw = json.loads(text)
    trials = [TrialTimes(**trial) for trial in raw.pop("trials")]
    return SweepTimes(**raw, trials=trials)


def _sweep_in_own_process(mode: str, reuse: bool, root: Path, cpus: int, env: dict[str, str]) -> SweepTimes:
    """One sweep in a new process with a Ray cluster of its own, whose workers import ``env``'s byzlab."""
    out = root.with_suffix(".json")
    subprocess.run([sys.executable, __file__, "--cpus", str(cpus), "--one-sweep", mode, str(int(reuse)), str(root),
                    str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
    return _from_json(out.read_text())


def _one_sweep(mode: str, reuse: bool, root: Path, out: Path, cpus: int) -> None:
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    result = run_sweep(mode, reuse, root)
    ray.shutdown()
    out.write_text(json.dumps(asdict(result)))


def _import_seconds(module: str, repeats: int = 3) -> tuple[float, float]:
    """CPU and wall seconds of importing ``module`` in a new interpreter, median of ``repeats`` after one
    warm-up (the files in the page cache, as for a sweep's later processes)."""
    code = (f"import time; c, w = time.process_time(), time.perf_counter(); import {module}; "
            "print(time.process_time() - c, time.perf_counter() - w)")
    timings = []
    for _ in range(repeats + 1):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        timings.append(tuple(float(x) for x in out.stdout.split()))
    cpu, wall = zip(*timings[1:])
    return statistics.median(cpu), statistics.median(wall)


def _worktree_env(repo: Path, revision: str, tmp: Path) -> dict[str, str]:
    """An environment whose ``byzlab`` is ``revision``'s, checked out in a worktree under ``tmp``."""
    tree, package = tmp / "tree", tmp / "package"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), revision],
                   check=True, capture_output=True)
    package.mkdir()
    (package / "byzlab").symlink_to(tree)
    return {**os.environ, "PYTHONPATH": str(package)}


def _start_up_lines(imports: dict[str, tuple[float, float]], concurrent: int, cpus: int) -> list[str]:
    per_slot = sum(cpu for cpu, _ in imports.values())
    return [
        "Process start-up, each kind timed alone (CPU / wall seconds of its imports in a new interpreter): "
        + ", ".join(f"{kind} {cpu:.2f} / {wall:.2f} s" for kind, (cpu, wall) in imports.items())
        + f". A slot's first trial starts all three: {per_slot:.1f} CPU seconds; the first {concurrent} trials "
        f"start {3 * concurrent} processes at once on {cpus} cores, at least {concurrent * per_slot / cpus:.1f} s "
        "before the first round, however the work is ordered.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per mode, the modes alternating")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--before", metavar="REV", help="also reused workers with git revision REV's code")
    parser.add_argument("--one-sweep", nargs=4, metavar=("MODE", "REUSE", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_sweep:
        mode, reuse, root, out = args.one_sweep
        _one_sweep(mode, bool(int(reuse)), Path(root), Path(out), args.cpus)
        return
    repo = Path(__file__).resolve().parents[1]
    imports = {kind: _import_seconds(module) for kind, module in PROCESS_IMPORTS.items()}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        modes = {mode: (reuse, dict(os.environ)) for mode, reuse in MODES.items()}
        if args.before:
            revision = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", args.before],
                                      capture_output=True, text=True, check=True).stdout.strip()
            modes[BEFORE_MODE.format(revision=revision)] = (True, _worktree_env(repo, args.before, Path(tmp)))
        try:
            for repeat in range(args.repeats):
                for index, (mode, (reuse, env)) in enumerate(modes.items()):
                    root = Path(tmp) / f"sweep-{repeat}-{index}"
                    results.append(_sweep_in_own_process(mode, reuse, root, args.cpus, env))
                    print("\n".join(_table(results[-1:])), flush=True)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(Path(tmp) / "tree")],
                               check=False, capture_output=True)
    _check_same_numbers(results)
    fresh = [r for r in results if r.mode == "fresh processes per trial"]
    reused = [r for r in results if r.mode == "reused workers"]
    speedups = [f.launch_wall / r.launch_wall for f, r in zip(fresh, reused)]
    before_lines = []
    if args.before:
        before = [r for r in results if r.mode not in MODES]
        before_lines = [
            f"Later trials' overhead per round, this code / {before[0].mode}: "
            + ", ".join(f"{_mean([t.per_round for t in _split(a)[1]]) * 1e3:.0f} / "
                        f"{_mean([t.per_round for t in _split(b)[1]]) * 1e3:.0f} ms" for a, b in zip(reused, before))
            + " (same repeat); sweep wall, before / this code: "
            + ", ".join(f"{b.launch_wall / a.launch_wall:.2f}×" for a, b in zip(reused, before)) + ".",
            "",
        ]
    command = ("flock -x /tmp/byzlab-cpu.lock python benchmarks/sweep_overhead.py "
               f"--repeats {args.repeats} --cpus {args.cpus}" + (f" --before {args.before}" if args.before else ""))
    text = [
        "# Sweep overhead: fresh processes per trial vs reused workers",
        "",
        f"`{command}` on {platform.machine()}, {args.cpus} CPUs for Ray, torch threads as the trials reserve, "
        f"{time.strftime('%Y-%m-%d')}. The quickstart sweep (12 trials, digits, 20 rounds, one 0.5-CPU client actor "
        f"and a 0.5-CPU server per trial, MLflow on), each mode run {args.repeats}× in one run of the benchmark, "
        f"alternating, each sweep in a process and a Ray cluster of its own. c = {results[0].concurrent} trials at "
        "a time. Method: benchmarks/sweep_overhead.py's docstring; every trial computed the same metrics in every "
        "sweep.",
        "",
        *_table(results),
        "",
        f"Sweep wall time, fresh / reused (same repeat): {', '.join(f'{s:.2f}×' for s in speedups)}.",
        "",
        *before_lines,
        *_summary(results),
        "",
        *_start_up_lines(imports, results[0].concurrent, args.cpus),
        "",
        "Start: from the slot being free to the first result, less round 1 (preparing the run, MLflow, lending "
        "the actors). Per round: the gap between two results less the round. The server computes the next round "
        "while the trainable records the last (its rows, MLflow's row, Tune's report, checkpoints every 5 rounds), "
        "so what is left is the round trip of the server's reply. Round 1 is slower on a new actor (torch's first "
        "calls), so Σ rounds is smaller with reused workers. The first trial on a slot pays the process "
        "start-ups: Tune's trainable, then (while the run opens) a client and a server actor, each importing "
        "torch and byzlab; on 2 cores the two slots' six processes start at once.",
        "",
    ]
    RESULTS.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
