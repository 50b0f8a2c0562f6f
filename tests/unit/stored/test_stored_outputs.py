"""Every rule, pre-aggregator and model attack reproduces, bit for bit, the outputs stored before issue 13's
speed-ups (``outputs.py``: the cases and how to re-record them)."""

from __future__ import annotations

import json

from outputs import STORED, cases


def test_every_rule_and_attack_gives_its_stored_output():
    stored = json.loads(STORED.read_text())
    now = dict(cases())
    assert now.keys() == stored.keys(), "cases added or removed: re-record (outputs.py --record)"
    changed = {case: sorted(k for k in now[case] if now[case][k] != stored[case].get(k)) for case in now}
    assert {case: keys for case, keys in changed.items() if keys} == {}
