"""Every rule, pre-aggregator and model attack reproduces, bit for bit, the outputs stored before issue 13's
speed-ups (``outputs.py``: the cases and how to re-record them)."""

from __future__ import annotations

import pytest
import torch

from machine_kind import describe_machine
from outputs import RECORDED_THREADS, cases, differing_cases, stored_sets


@pytest.fixture
def recorded_threads():
    """The torch threads the digests were recorded with: some kernels' rounding follows the thread count
    (an eigensolver, a matrix product), and other tests change it."""
    before = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(before)


def test_every_rule_and_attack_gives_its_stored_output(recorded_threads):
    """Equal, case for case, to one recorded set (one per kind of machine; outputs.py)."""
    now = dict(cases())
    differences = {}
    for name, stored in stored_sets().items():
        assert now.keys() == stored.keys(), f"cases added or removed: re-record {name} (outputs.py --record)"
        differences[name] = differing_cases(now, stored)
        if not differences[name]:
            return
    pytest.fail(f"no recorded set equals these outputs on this machine ({describe_machine()}): {differences}")


def test_a_case_differs_by_the_outputs_whose_digests_changed():
    now = {"a": {"update": "1", "weights": "2"}, "b": {"update": "3"}}
    assert differing_cases(now, {"a": {"update": "1", "weights": "9"}, "b": {"update": "3"}}) == {"a": ["weights"]}
    assert differing_cases(now, now) == {}
    assert differing_cases(now, {"a": now["a"]}) == {"b": ["update"]}  # a case the set lacks differs whole
