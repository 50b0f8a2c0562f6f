"""Stored outputs of every aggregation rule, pre-aggregator and model attack (issue 13: a speed-up changes no
number). Each case is a seeded input; its output is recorded as a SHA-256 of the exact bytes of every tensor
(and the repr of every diagnostic), so the check is bit for bit.

The cases cover the code paths speed-ups touch: small and tall matrices, ties (values on a coarse grid), a
width past the 65,536-column chunks several rules work in, hostile rows (far outliers), and a layer layout.

Bit for bit holds on one kind of machine only (``tests/machine_kind.py``): the digests are stored once per
kind of machine, as ``recorded/<set>.json`` with what recorded them, and the outputs must equal one set. A
new set is recorded from code that already matched a set on its machine (a landed commit), never from a
change under test. Re-record only for a change that is meant to change numbers (every set, each on its own
kind of machine), and say so in the commit: ``python tests/unit/stored/outputs.py --record SET``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, also when this file runs as the recorder
from machine_kind import describe_machine  # noqa: E402

RECORDED = Path(__file__).parent / "recorded"  # one set of digests per kind of machine
RECORDED_THREADS = 2  # torch threads of the recording: some kernels' rounding follows the thread count
CLASSES = 10
PRE_AGGREGATOR_PARAMS = {"clipping": {"threshold": 0.5}}  # parameters a pre-aggregator has no default for
SHAPES = {"small": (10, 50), "grid": (25, 1_000), "tall": (60, 300), "wide": (16, 70_000)}


def _digest(value: object) -> str:
    """The bytes of a tensor (with dtype and shape; signed zeros as 0.0), or the repr of anything else, hashed."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous()
        if array.is_floating_point():  # -0.0 + 0.0 = 0.0: sorting and selecting may order -0.0 and 0.0 either way
            array = array + 0.0
        head = f"{array.dtype}{tuple(array.shape)}".encode()
        return hashlib.sha256(head + array.numpy().tobytes()).hexdigest()[:20]
    return hashlib.sha256(repr(value).encode()).hexdigest()[:20]


def _updates(shape: str, seed: int) -> torch.Tensor:
    n, d = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    updates = 0.01 * torch.randn(n, d, generator=g) + 0.05 * torch.randn(d, generator=g)
    updates[: max(1, n // 5)] *= -10  # hostile rows: far on the other side
    if shape == "grid":
        updates = (updates * 100).round() / 100  # many ties in every coordinate
    return updates


def _context(updates: torch.Tensor, seed: int):
    from byzlab.aggregators import RoundContext
    from byzlab.orchestrator.core.layout import Layer

    n, d = updates.shape
    g = torch.Generator().manual_seed(seed + 1)
    features = (d - CLASSES) // CLASSES

    def model_fn(flat, x):  # a linear model whose parameter vector has exactly d entries
        weight = flat[: features * CLASSES].view(features, CLASSES)
        return x @ weight + flat[features * CLASSES : features * CLASSES + CLASSES]

    split = features * CLASSES
    layers = (Layer("w", (features, CLASSES), 0, "weight"), Layer("b", (d - split,), split, "bias"))
    return RoundContext(
        layers=layers, client_ids=torch.arange(n), num_samples=torch.randint(20, 200, (n,), generator=g).float(),
        loss_gaps=torch.rand(n, generator=g), global_params=torch.zeros(d), num_byzantine=max(1, n // 5),
        generator=torch.Generator().manual_seed(seed + 2), model_fn=model_fn,
        proxy_data=(torch.randn(32, features, generator=g), torch.randint(0, CLASSES, (32,), generator=g)),
        public_data=torch.randn(64, features, generator=g), round=1,
    )


def cases() -> Iterator[tuple[str, object]]:
    """(case id, the output's digests) for every rule, pre-aggregator and model attack on every shape."""
    from byzlab import aggregators, attacks
    from byzlab.attacks.base import AttackContext

    for seed, shape in enumerate(SHAPES):
        updates = _updates(shape, seed)
        for name in aggregators.names():
            result = aggregators.build(name)(updates.clone(), _context(updates, seed))
            digests = {"update": _digest(result.update), "weights": _digest(result.weights),
                       "accepted": _digest(result.accepted),
                       **{f"info.{key}": _digest(value) for key, value in sorted(result.info.items())}}
            yield f"aggregator/{name}/{shape}", digests
        for name in aggregators.pre_aggregator_names():
            params = PRE_AGGREGATOR_PARAMS.get(name, {})
            out = aggregators.build_pre_aggregator(name, **params)(updates.clone(), _context(updates, seed))
            yield f"pre_aggregator/{name}/{shape}", {"updates": _digest(out.updates), "mixing": _digest(out.mixing)}
        n, d = updates.shape
        f = max(1, n // 4)
        for name in attacks.names("model"):
            ctx = AttackContext(round=1, num_clients=n, num_malicious=f, generator=torch.Generator().manual_seed(seed),
                                global_params=torch.zeros(d), initial_params=torch.zeros(d))
            crafted = attacks.build(name).craft(updates[:f].clone(), updates[f:].clone(), ctx)
            yield f"attack/{name}/{shape}", {"crafted": _digest(crafted)}


def stored_sets() -> dict[str, dict[str, dict[str, str]]]:
    """Each recorded set's digests by case, by set name."""
    return {path.stem: json.loads(path.read_text())["cases"] for path in sorted(RECORDED.glob("*.json"))}


def differing_cases(now: dict[str, dict[str, str]], stored: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """The cases whose outputs differ from ``stored``, each with its differing outputs."""
    changed = {case: sorted(k for k in now[case] if now[case][k] != stored.get(case, {}).get(k)) for case in now}
    return {case: keys for case, keys in changed.items() if keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", metavar="SET", help="store this machine's digests as the set SET")
    args = parser.parse_args()
    torch.set_num_threads(RECORDED_THREADS)
    recorded = dict(cases())
    if args.record:
        path = RECORDED / f"{args.record}.json"
        path.write_text(json.dumps({"machine": describe_machine(), "cases": recorded}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(recorded)} cases in {path}")
        return
    for name, stored in stored_sets().items():
        print(f"{name}: {', '.join(differing_cases(recorded, stored)) or 'all equal'}")


if __name__ == "__main__":
    main()
