"""Every rule, pre-aggregator and model attack reproduces, bit for bit, the outputs stored before issue 13's
speed-ups (``outputs.py``: the cases and how to re-record them)."""

from __future__ import annotations

import json

import pytest
import torch

from outputs import RECORDED_THREADS, STORED, cases


@pytest.fixture
def recorded_threads():
    """The torch threads the digests were recorded with: some kernels' rounding follows the thread count
    (an eigensolver, a matrix product), and other tests change it."""
    before = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(before)


def test_every_rule_and_attack_gives_its_stored_output(recorded_threads):
    stored = json.loads(STORED.read_text())
    now = dict(cases())
    assert now.keys() == stored.keys(), "cases added or removed: re-record (outputs.py --record)"
    changed = {case: sorted(k for k in now[case] if now[case][k] != stored[case].get(k)) for case in now}
    assert {case: keys for case, keys in changed.items() if keys} == {}
