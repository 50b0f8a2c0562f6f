"""Sorting down the columns of a CPU matrix on torch's threads, shared by the aggregation rules and the
attacks that simulate them (issue 13): numpy's sort is several times faster than ``torch.sort(dim=0)`` on
the CPU and gives the same values, and it releases the GIL, so blocks of columns run in parallel."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

BLOCK_COLUMNS = 1 << 14
"""Columns per block: one block of 100 rows (6.5 MiB in float32) is sorted by one thread."""


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="byzlab-columns")


def on_threads(work: Callable[[slice], None], blocks: Iterable[slice]) -> None:
    """``work(block)`` for every block, on as many threads as torch uses (one persistent pool per count)."""
    blocks = list(blocks)
    if len(blocks) <= 1 or torch.get_num_threads() <= 1:
        for block in blocks:
            work(block)
        return
    list(_pool(torch.get_num_threads()).map(work, blocks))


def sorted_columns(rows: torch.Tensor) -> torch.Tensor:
    """``torch.sort(rows, dim=0).values`` for ``rows`` [n, c]: the same values (equal values are
    interchangeable: -0.0 and 0.0 may come in either order), by numpy on the CPU; by torch elsewhere."""
    if rows.device.type != "cpu" or rows.numel() == 0 or rows.requires_grad:
        return torch.sort(rows, dim=0).values
    source = rows.numpy()
    out = torch.empty(rows.shape, dtype=rows.dtype)
    target = out.numpy()

    def sort(block: slice) -> None:
        target[:, block] = np.sort(source[:, block], axis=0)

    on_threads(sort, (slice(start, start + BLOCK_COLUMNS) for start in range(0, rows.shape[1], BLOCK_COLUMNS)))
    return out
