"""benchmarks/overhead.py: its pure PyTorch loop computes bit for bit what byzlab stored for the same config,
and the script runs both sides end to end and writes the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from machine_kind import stored_first_rounds

REPOSITORY = Path(__file__).resolve().parents[3]
SCRIPT = REPOSITORY / "benchmarks" / "overhead.py"


def test_the_pure_loop_on_one_thread_reproduces_byzlabs_stored_quickstart_rounds(overhead):
    import torch

    threads = torch.get_num_threads()
    try:
        result = overhead.pure_loop(["run.rounds=2"], threads=1)  # the stored run's actors: one thread each
    finally:
        torch.set_num_threads(threads)
    rounds = [{"test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"]} for r in result["rounds"]]
    assert rounds in stored_first_rounds("quickstart", 2)
    assert result["threads"] == 1


@pytest.mark.slow  # ~45 s: a pure loop and two `byzlab run` processes, each starting its own Ray
def test_the_script_measures_both_sides_and_the_placements_agree(tmp_path):
    output = tmp_path / "overhead.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "digits", "--clients", "2", "--rounds", "2",
         "--placements", "default,old", "--pure-threads", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=600, cwd=REPOSITORY,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = output.read_text()
    assert text.startswith("# byzlab run vs a pure PyTorch loop")
    assert "| | pure, 1 thread | default | ratio | old | ratio |" in text
    for label in ("steady round (s)", "first round (s)", "end to end (s)", "peak memory, summed PSS (GiB)"):
        assert f"| {label} |" in text
    # the default placement, the old one and the pure loop on one thread compute the same numbers
    assert "- `default`: test accuracy within 0.0e+00 of `pure, 1 thread` every round (within 0.0003); " \
           "bitwise the numbers of: `pure, 1 thread`, `old`" in text
    assert "client actors" in text and "server actor" in text  # the memory breakdown found the actors
