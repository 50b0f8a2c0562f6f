"""Counter-based randomness: every random draw is keyed by (seed, stream, round, client).

Nothing in a run keeps a stateful generator across rounds, so a run resumed at round r draws exactly
what an uninterrupted run draws, and results do not depend on which actor trains which client.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """Independent random streams of a run; values are part of the seed, so never renumber them."""

    MODEL_INIT = 1
    PARTITION = 2
    CLIENT_SAMPLING = 3
    LOCAL_TRAINING = 4
    AGGREGATION = 5
    MALICIOUS_SET = 6
    MODEL_ATTACK = 7
    LABEL_POISON = 8
    BATCH_POISON = 9
    PROXY_DATA = 10
    PUBLIC_DATA = 11
    DROPOUT = 12


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed for one stream and key tuple (e.g. round, client), independent of all others."""
    entropy = [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, int(stream), *keys]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def torch_generator(seed: int, stream: Stream, *keys: int) -> torch.Generator:
    """A CPU generator (CPU draws are the same on every machine; callers move results to their device)."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))
