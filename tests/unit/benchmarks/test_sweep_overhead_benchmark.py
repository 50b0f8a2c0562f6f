"""benchmarks/sweep_overhead.py: the slot model that turns Tune's driver-side stamps into each trial's
wall time, overhead, start, per-round and finish times (values worked out by hand)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def test_trials_are_timed_from_the_moment_their_slot_was_free(sweep_overhead, tmp_path):
    """Two at a time from t = 0: A and B start on new processes 1 and 2; C takes A's process when A ends."""
    trials = {  # run id -> (pid, start, [(result stamp, its round's seconds)], end)
        "a": (1, 5.0, [(7.0, 1.0), (7.5, 0.4)], 7.6),
        "b": (2, 5.5, [(8.0, 1.5), (8.6, 0.5)], 8.7),
        "c": (1, 7.7, [(8.3, 0.5), (8.8, 0.4)], 8.9),
    }
    timeline = sweep_overhead.Timeline()
    for run_id, (pid, start, results, end) in trials.items():
        (tmp_path / run_id).mkdir()
        pq.write_table(pa.table({"round_seconds": [seconds for _, seconds in results]}),
                       tmp_path / run_id / "metrics.parquet")
        timeline.trials[run_id] = {"run_id": run_id, "pid": pid, "start": start, "results": results, "end": end}

    times = {t.run_id: t for t in sweep_overhead._trial_times(timeline, tmp_path, concurrent=2)}
    a, c = times["a"], times["c"]
    assert a.first_on_slot and times["b"].first_on_slot and not c.first_on_slot
    # A: its slot was free from the sweep's start; 1.4 s of rounds in 7.6 s
    assert (a.wall, a.rounds, a.overhead) == pytest.approx((7.6, 1.4, 6.2))
    assert (a.start, a.per_round, a.finish) == pytest.approx((7.0 - 1.0, 7.5 - 7.0 - 0.4, 7.6 - 7.5))
    # C: its slot was freed by the first completion (A, at 7.6), not by its own start (7.7)
    assert (c.wall, c.rounds, c.overhead) == pytest.approx((8.9 - 7.6, 0.9, 8.9 - 7.6 - 0.9))
    assert (c.start, c.per_round, c.finish, c.first_round) == pytest.approx((8.3 - 7.6 - 0.5, 0.1, 0.1, 0.5))
    # a slot's trials add up to the time its last one ended: A then C on the first, B on the second
    assert (a.wall + c.wall, times["b"].wall) == pytest.approx((8.9, 8.7))


def test_a_sweep_measured_in_its_own_process_comes_back_whole(sweep_overhead):
    import json
    from dataclasses import asdict

    trial = sweep_overhead.TrialTimes(run_id="a", pid=7, rounds=1.5, wall=2.0, start=0.25, per_round=0.01,
                                      finish=0.05, first_round=0.5, first_on_slot=True)
    sweep = sweep_overhead.SweepTimes("reused workers", 3.0, 2.5, 2, [trial], {"a": {"round": [1, 2]}})
    back = sweep_overhead._from_json(json.dumps(asdict(sweep)))
    assert back == sweep and back.trials[0].overhead == pytest.approx(0.5)


def test_the_start_up_floor_is_every_slots_imports_shared_by_the_cores(sweep_overhead):
    imports = {"trainable": (3.0, 3.5), "client": (2.0, 2.2), "server": (1.0, 1.1)}
    (line,) = sweep_overhead._start_up_lines(imports, concurrent=2, cpus=2)
    assert "6.0 CPU seconds" in line and "6 processes at once on 2 cores, at least 6.0 s" in line
    (line,) = sweep_overhead._start_up_lines(imports, concurrent=3, cpus=2)
    assert "9 processes at once on 2 cores, at least 9.0 s" in line
