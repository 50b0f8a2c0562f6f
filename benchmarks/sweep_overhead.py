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
computed metrics must be equal in both modes (the benchmark fails otherwise).

    flock -x /tmp/byzlab-cpu.lock python benchmarks/sweep_overhead.py [--repeats 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
    for mode in MODES:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per mode, the modes alternating")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = parser.parse_args()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode, reuse in MODES.items():
                results.append(run_sweep(mode, reuse, Path(tmp) / f"{repeat}-{reuse}"))
                print("\n".join(_table(results[-1:])), flush=True)
    ray.shutdown()
    _check_same_numbers(results)
    fresh = [r for r in results if r.mode == "fresh processes per trial"]
    reused = [r for r in results if r.mode == "reused workers"]
    speedups = [f.launch_wall / r.launch_wall for f, r in zip(fresh, reused)]
    command = f"flock -x /tmp/byzlab-cpu.lock python benchmarks/sweep_overhead.py --repeats {args.repeats} --cpus {args.cpus}"
    text = [
        "# Sweep overhead: fresh processes per trial vs reused workers",
        "",
        f"`{command}` on {platform.machine()}, {args.cpus} CPUs for Ray, torch threads as the trials reserve. "
        "The quickstart sweep (12 trials, digits, 20 rounds, one 0.5-CPU client actor and a 0.5-CPU server per trial, MLflow on), each mode run "
        f"{args.repeats}× in one process, alternating. c = {results[0].concurrent} trials at a time. Method: "
        "benchmarks/sweep_overhead.py's docstring; every trial computed the same metrics in every sweep.",
        "",
        *_table(results),
        "",
        f"Sweep wall time, fresh / reused (same repeat): {', '.join(f'{s:.2f}×' for s in speedups)}.",
        "",
        *_summary(results),
        "",
        "Start: from the slot being free to the first result, less round 1 (preparing the run, MLflow, lending "
        "the actors). Per round: the gap between two results less the round (the server's round trip, MLflow's "
        "row, Tune's report, checkpoints every 5 rounds). Round 1 is slower on a new actor (torch's first "
        "calls), so Σ rounds is smaller with reused workers. The first trial on a slot pays the process "
        "start-ups: Tune's trainable, then (while the run opens) a client and a server actor, each importing "
        "torch and byzlab; on 2 cores the two slots' six processes start at once.",
        "",
    ]
    RESULTS.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
