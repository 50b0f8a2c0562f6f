"""Numerics shared by the aggregation rules: one copy of every computation that more than one rule uses
(docs/architecture.md, section "Aggregator contract": a rule never imports a sibling rule).

- coordinate slicing and medians: :func:`coordinate_chunks`, :func:`sorted_median`, :func:`coordinate_median`,
  :func:`median_last`, :func:`trimmed_mean`, :func:`repeated_median_slopes`, :func:`lines_at_centre`;
- distances and Krum: :func:`squared_distances_from_gram`, :func:`pairwise_distances`, :func:`krum_order`,
  :func:`lexicographic_order`;
- client weights from claimed sample counts: :func:`claimed_counts`, :func:`client_weights`;
- norm clipping: :func:`clip_scales`, :func:`clip_scales_wide`;
- sums and norms that hostile rows cannot overflow: :func:`mean_rows`, :func:`weighted_rows`,
  :func:`safe_row_norms`, :func:`distances_to`, :func:`weighted_rows_wide`, :func:`coordinate_median`,
  :func:`update_norm_ratio`;
- randomness: :func:`generator_or_seeded`, :func:`sample_coordinates`.

Everything here is plain tensor code on the inputs' device; nothing reads a ``RoundContext``.

Hostile rows (issue 12): an attacker may send any finite float32 value, up to +-3.4e38. A sum of two such
values, a squared norm of a row of 1e20s, or the mean of several rows near the largest value overflows
float32 although the quantity the rule wants (a mean, a norm) is finite. The helpers of the section "sums
and norms" compute exactly what the plain expression computes whenever that is finite (bit for bit, so
ordinary rounds are unchanged) and recompute in float64 only the entries that overflowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from byzlab.orchestrator.core.columns import on_threads, sorted_columns

CHUNK_ELEMENTS = 2**24
"""Default work elements per slice of coordinates (sorted values, slopes): 64 MiB in float32."""

Weighting = Literal["samples", "uniform"]


# ------------------------------------------------------------------------------- coordinates and medians


def coordinate_chunks(
    d: int, elements_per_coordinate: int, chunk: int | None = None, budget: int | None = None
) -> Iterator[slice]:
    """Slices of ``range(d)`` with ``chunk`` coordinates each (default: as many as fit in ``budget`` work
    elements, :data:`CHUNK_ELEMENTS` unless given, when each coordinate needs ``elements_per_coordinate``)."""
    if chunk is None:
        elements = CHUNK_ELEMENTS if budget is None else budget
        chunk = max(1, elements // max(1, elements_per_coordinate))
    for start in range(0, d, chunk):
        yield slice(start, min(d, start + chunk))


def sorted_median(ordered: torch.Tensor, dim: int) -> torch.Tensor:
    """Median of values already sorted along ``dim``: the middle value for an odd count, the mean of the two
    middle values for an even count (``torch.median`` would return the lower one)."""
    n = ordered.shape[dim]
    upper = ordered.select(dim, n // 2)
    if n % 2:
        return upper
    return _mean_of_middles(ordered.select(dim, n // 2 - 1), upper)


def _mean_of_middles(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """(lower + upper) / 2, halving first where the sum overflows."""
    middle = (lower + upper) / 2
    overflowed = torch.isinf(middle) & torch.isfinite(lower) & torch.isfinite(upper)
    if bool(overflowed.any()):  # two values near the dtype's largest: halve first (exact, no overflow)
        middle = torch.where(overflowed, lower / 2 + upper / 2, middle)
    return middle


SELECTION_ROWS = 1 << 14
"""Rows per block of :func:`median_last` on the CPU: one block's values stay in the cache while selected."""


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median [d] of ``rows`` [n, d] (:func:`sorted_median`'s definition), by selection over
    slices of coordinates, each transposed so that a coordinate's n values are contiguous."""
    n, d = rows.shape
    out = torch.empty(d, device=rows.device, dtype=rows.dtype)
    for cols in coordinate_chunks(d, n, chunk=SELECTION_ROWS if rows.device.type == "cpu" else None):
        out[cols] = median_last(rows[:, cols].T)
    return out


def median_last(values: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """Median along the last dimension: the middle value for an odd count, the mean of the two middle values
    for an even count (bitwise :func:`sorted_median` of the sorted values).

    On the CPU the middle values are selected, not sorted: numpy's introselect (``np.partition``) puts the
    upper middle value in place with every value below it to its left, whose maximum is the lower one; blocks
    of rows are selected on torch's threads (numpy releases the GIL). On other devices, a sort. ``scratch``:
    the caller no longer needs a contiguous ``values``, which is then reordered in place instead of copied."""
    k = values.shape[-1]
    if values.device.type != "cpu" or values.numel() == 0 or values.requires_grad:
        return sorted_median(torch.sort(values, dim=-1).values, dim=-1)
    flat = values.reshape(-1, k)
    upper = torch.empty(flat.shape[0], dtype=values.dtype)
    lower = torch.empty_like(upper) if k % 2 == 0 else upper

    def select(rows: slice) -> None:
        block = flat[rows].numpy()
        if not (scratch and block.flags.c_contiguous):
            block = np.array(block, order="C")  # a row-major copy, selected in place
        block.partition(k // 2, axis=1)
        upper[rows] = torch.from_numpy(block[:, k // 2])
        if k % 2 == 0:
            lower[rows] = torch.from_numpy(block[:, : k // 2].max(axis=1))

    on_threads(select, (slice(start, start + SELECTION_ROWS) for start in range(0, flat.shape[0], SELECTION_ROWS)))
    middle = upper if k % 2 else _mean_of_middles(lower, upper)
    return middle.reshape(values.shape[:-1])


def trimmed_mean(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean of ``rows`` [n, c] (Yin et al., ICML 2018, Definition 2): drop the k
    largest and k smallest values of every column and average the n - 2k that remain (needs 2k < n)."""
    n = rows.shape[0]
    return mean_rows(sorted_columns(rows)[k : n - k])


SLOPE_COORDINATES = 64
"""Coordinates per block of :func:`repeated_median_slopes` on the CPU: a block's K x K slopes (2.6 MB for K =
100 in float32) stay in the cache from their computation to their selection."""


def repeated_median_slopes(z: torch.Tensor) -> torch.Tensor:
    """The inner medians of the repeated-median slope (Siegel, Biometrika 1982; eq. 1 of Fu et al.,
    "Attack-Resistant Federated Learning with Residual-based Reweighting"): ``m_i = med_{j != i} (z_j - z_i) /
    (j - i)`` [c, K] for finite values ``z`` [c, K] sorted along the last dimension (x = rank = 0..K-1, K >= 2).

    On the CPU, blocks of :data:`SLOPE_COORDINATES` coordinates on torch's threads (numpy releases the GIL): a
    block's [b, K, K] slopes are computed and selected while in the cache, the diagonal left in place as
    0 / 0 = NaN, which numpy's selection orders after every number, so selecting the K - 1 off-diagonal
    slopes' middle values among the K entries finds them (the same values as :func:`median_last` of the
    off-diagonal slopes, 4x faster than copying those out). Elsewhere: two [c, K, K] tensors and a sort."""
    c, k = z.shape
    x = torch.arange(k, device=z.device, dtype=z.dtype)
    run = x.unsqueeze(0) - x.unsqueeze(1)  # x_j - x_i at [i, j]
    if z.device.type != "cpu" or z.requires_grad:
        rise = z.unsqueeze(1) - z.unsqueeze(2)  # [c, K, K]: y_j - y_i at [:, i, j]
        # Off the diagonal, row by row: after the first entry, the diagonal is the last of every K + 1 entries.
        slopes = rise.view(c, k * k)[:, 1:].view(c, k - 1, k + 1)[:, :, :k].reshape(c, k, k - 1)
        slopes.div_(run.view(k * k)[1:].view(k - 1, k + 1)[:, :k].reshape(k, k - 1))  # never 0: ranks are distinct
        return median_last(slopes, scratch=True)
    values, run = z.numpy(), run.numpy()
    middle = (k - 1) // 2  # the upper middle one of the K - 1 slopes
    upper = torch.empty(c, k, dtype=z.dtype)
    lower = torch.empty_like(upper) if k % 2 else upper  # an even count K - 1: the mean of two
    upper_np, lower_np = upper.numpy(), lower.numpy()

    def select(rows: slice) -> None:
        block = values[rows]
        slopes = np.empty((block.shape[0], k, k), dtype=values.dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # the diagonal's 0 / 0; differences past the largest
            np.subtract(block[:, None, :], block[:, :, None], out=slopes)
            np.divide(slopes, run, out=slopes)
        flat = slopes.reshape(-1, k)
        flat.partition(middle, axis=1)
        upper_np[rows] = flat[:, middle].reshape(-1, k)
        if k % 2:
            lower_np[rows] = flat[:, :middle].max(axis=1).reshape(-1, k)

    on_threads(select, (slice(start, start + SLOPE_COORDINATES) for start in range(0, c, SLOPE_COORDINATES)))
    return upper if k % 2 == 0 else _mean_of_middles(lower, upper)


def lines_at_centre(z: torch.Tensor, slopes: torch.Tensor, centred: torch.Tensor) -> torch.Tensor:
    """``z + slopes * centred``: the values at the centre of the lines through the points (rank, z) with the
    given slopes (``centred`` = xbar - rank). A slope that overflowed to +-inf (two values near float32's
    largest, of opposite signs) times a zero offset is the point itself, ``z``, not NaN."""
    at_centre = z + slopes * centred
    return torch.where(torch.isnan(at_centre), z, at_centre)


# --------------------------------------------------------------------------------- distances and Krum


def squared_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` [..., n, n] from Gram matrices ``gram`` [..., n, n],
    clamped at 0 (rounding can make the difference slightly negative). Not symmetrised, diagonal not zeroed."""
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    return (diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * gram).clamp_min(0)


L1_BLOCK_COLUMNS = 2048
"""Coordinates per block of the L1 distances: 100 rows of a block (0.8 MiB in float32) stay in the cache."""


def pairwise_distances(updates: torch.Tensor, p: int, chunk: int = 1 << 16) -> torch.Tensor:
    """[n, n] distances, exactly symmetric: squared Euclidean for ``p = 2`` (Krum's ||V_i - V_j||^2), L1 for
    ``p = 1``.

    Squared Euclidean distances come from the Gram matrix, accumulated in float64 over coordinate chunks:
    a matrix product instead of n^2 d scalar differences (several times faster on CPU, far more on GPU).
    float64 keeps the cancellation in ||a||^2 + ||b||^2 - 2<a, b> negligible for float32 updates, and a
    huge row (even 1e30) cannot disturb the distances between the others; distances that overflow come
    out as +inf, never NaN. The float64 copy never exceeds one chunk. L1 distances are sums of
    ``torch.pdist`` over blocks of :data:`L1_BLOCK_COLUMNS` coordinates, accumulated in float64.
    """
    if p == 1:
        # torch.pdist (each pair once) over column blocks that stay in the cache, summed in float64: 15x
        # faster than torch.cdist(p=1) on whole rows (benchmarks/results/aggregators.md).
        n = updates.shape[0]
        pairs = torch.zeros(n * (n - 1) // 2, dtype=torch.float64, device=updates.device)
        for block in updates.split(L1_BLOCK_COLUMNS, dim=1):
            pairs += torch.pdist(block, p=1.0)
        i, j = torch.triu_indices(n, n, 1, device=updates.device)
        dist = torch.zeros(n, n, dtype=updates.dtype, device=updates.device)
        dist[i, j] = dist[j, i] = pairs.to(updates.dtype)  # i < j in pdist's order
        return dist
    n = updates.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    for block in updates.split(chunk, dim=1):
        block = block.double()
        gram += block @ block.T
    dist = squared_distances_from_gram(gram)
    dist = torch.nan_to_num(dist, nan=float("inf"))  # inf - inf where squared norms overflow
    dist.fill_diagonal_(0)
    return dist.to(updates.dtype)


def lexicographic_order(scores: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    """Indices [n] by ascending ``scores``; equal scores by ascending ``ties``, then by lower index (two
    stable sorts, the less significant key first)."""
    order = torch.sort(ties, stable=True).indices
    return order[torch.sort(scores[order], stable=True).indices]


def krum_order(dist: torch.Tensor, f: int, active: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``active`` rows (default all) of the distance matrix ``dist`` [n, n], best Krum score
    first.

    Score (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017, §4): s(i) = sum of the distances from update i to its r - f - 2 closest other active
    updates ("i -> j"), r = number of active rows. The neighbour count is clipped to [1, r - 1] so the
    recursion inside Bulyan stays defined when fewer than 2f + 3 updates remain. Equal scores (which happen
    structurally when one neighbour is counted: two mutually nearest updates share their distance) are
    ordered by the sum of distances to all other active updates, then by row index.
    """
    n_all = dist.shape[0]
    if active is None:
        active = torch.ones(n_all, dtype=torch.bool, device=dist.device)
    rows = active.nonzero().squeeze(1)
    r = rows.numel()
    if r <= 1:
        return rows
    sub = dist[rows][:, rows]
    others = sub.masked_fill(torch.eye(r, dtype=torch.bool, device=dist.device), float("inf"))
    neighbours = max(1, min(r - 1, r - f - 2))
    scores = torch.sort(others, dim=1).values[:, :neighbours].sum(dim=1)
    return rows[lexicographic_order(scores, sub.sum(dim=1))]


# ------------------------------------------------------------------------------------------ client weights


def claimed_counts(num_samples: torch.Tensor | None, n: int, device: torch.device | str) -> torch.Tensor:
    """The claimed sample counts [n] as float64 on ``device``, negative claims as 0 (NaN stays NaN); 1 each
    when there are none."""
    if num_samples is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    return num_samples.to(device=device, dtype=torch.float64).clamp(min=0.0)


def client_weights(weighting: Weighting, num_samples: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Weights [n] summing to 1, on ``like``'s device and dtype (``like`` is the [n, d] update matrix).

    ``samples``: proportional to the claimed counts ``num_samples`` (negative claims count as 0);
    ``uniform``, no counts, or counts that sum to 0: 1/n each.
    """
    n = like.shape[0]
    if weighting == "samples" and num_samples is not None:
        counts = claimed_counts(num_samples, n, like.device)
        total = counts.sum()
        if bool(total > 0):
            return (counts / total).to(like.dtype)
    return torch.full((n,), 1.0 / n, device=like.device, dtype=like.dtype)


# ------------------------------------------------------------------------------------------------ clipping


def clip_scales(norms: torch.Tensor, bound: float) -> torch.Tensor:
    """``min(1, bound / norm)`` per row: the factor that projects a vector of that norm onto the L2 ball of
    radius ``bound`` (1 for a zero vector)."""
    return (bound / norms.clamp(min=torch.finfo(norms.dtype).tiny)).clamp(max=1.0)


def clip_scales_wide(norms: torch.Tensor, bound: float, dtype: torch.dtype) -> torch.Tensor:
    """:func:`clip_scales` in ``dtype`` for float64 ``norms`` (:func:`safe_row_norms`): bitwise
    ``clip_scales(norms.to(dtype), bound)`` for every norm that ``dtype`` can hold; a norm beyond the
    dtype's largest value (a row of 3.4e38s) gets ``bound / norm`` computed in float64 (a tiny, possibly
    subnormal factor) instead of 0, so the clipped row still contributes a vector of norm ``bound``."""
    narrow = norms.to(dtype)
    scales = clip_scales(narrow, bound)
    beyond = torch.isinf(narrow) & torch.isfinite(norms)
    if bool(beyond.any()):
        scales = torch.where(beyond, (bound / norms).clamp(max=1.0).to(dtype), scales)
    return scales


# ----------------------------------------------------------------------------- sums and norms (hostile rows)


def _widen_overflowed(out: torch.Tensor, wide) -> torch.Tensor:
    """``out`` [d], with the entries that are not finite replaced by ``wide(columns)`` (float64, cast back to
    ``out``'s dtype: a mean of finite values fits). Unchanged, the same tensor, when every entry is finite."""
    if out.dtype == torch.float64:
        return out
    bad = ~torch.isfinite(out)
    if not bool(bad.any()):
        return out
    columns = bad.nonzero().squeeze(1)
    out = out.clone()
    out[columns] = wide(columns).to(out.dtype)
    return out


def mean_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows.mean(dim=0)`` [d] of finite ``rows`` [k, d]; coordinates where the float32 sum overflowed (rows
    near 3.4e38) are recomputed in float64, so the mean of finite rows is finite. Bitwise ``rows.mean(dim=0)``
    whenever that is finite."""
    return _widen_overflowed(rows.mean(dim=0), lambda cols: rows[:, cols].double().mean(dim=0))


def weighted_rows(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``weights @ rows`` [d] for ``weights`` [k] and finite ``rows`` [k, d]; coordinates where the float32 sum
    overflowed are recomputed in float64 (finite when the weights are a convex combination). Bitwise
    ``weights @ rows`` whenever that is finite."""
    return _widen_overflowed(weights @ rows, lambda cols: weights.double() @ rows[:, cols].double())


def safe_row_norms(rows: torch.Tensor) -> torch.Tensor:
    """L2 norms [n] of finite ``rows`` [n, d] as float64: ``torch.linalg.vector_norm`` in the rows' dtype
    (exactly the usual norms, upcast), recomputed in float64 for the rows where that overflowed to inf --
    torch sums squares without rescaling, so a row of 1e20s (norm ~1e21) already overflows float32."""
    norms = torch.linalg.vector_norm(rows, dim=1)
    wide = norms.double()
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        wide[bad] = distances_to(rows[bad], torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device))
    return wide


def distances_to(rows: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``||rows_i - point||`` [n] in float64 for ``rows`` [n, d] and a float64 ``point`` [d], over slices of
    coordinates (float64 work copies of at most :data:`CHUNK_ELEMENTS` elements): finite for any finite
    float32 rows."""
    n, d = rows.shape
    squares = torch.zeros(n, dtype=torch.float64, device=rows.device)
    for cols in coordinate_chunks(d, n):
        squares += (rows[:, cols].double() - point[cols]).square().sum(dim=1)
    return squares.sqrt()


def weighted_rows_wide(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``weights @ rows`` [d] in float64 for float64 ``weights`` [n] and ``rows`` [n, d], over slices of
    coordinates (float64 work copies of at most :data:`CHUNK_ELEMENTS` elements)."""
    n, d = rows.shape
    out = torch.empty(d, dtype=torch.float64, device=rows.device)
    for cols in coordinate_chunks(d, n):
        out[cols] = weights @ rows[:, cols].double()
    return out


def update_norm_ratio(update: torch.Tensor, rows: torch.Tensor) -> float:
    """``||update|| / median_i ||rows_i||`` (float64, overflow-safe): how far an aggregate is off the scale of
    the round's updates. A rule that may, faithfully, pass a huge update (FoolsGold, SDEA, DnC) reports it
    as ``info["update_norm_ratio"]``: about 1 or below in an ordinary round, ~1e29 when a 1e30 row got
    through. 0 for a zero update; the largest float64 when every row is zero but the update is not."""
    size = float(safe_row_norms(update.reshape(1, -1))[0])
    median = float(torch.quantile(safe_row_norms(rows), 0.5))
    if size == 0.0:
        return 0.0
    return size / median if median > 0 else float(torch.finfo(torch.float64).max)


# ---------------------------------------------------------------------------------------------- randomness


def generator_or_seeded(generator: torch.Generator | None, seed: int) -> torch.Generator:
    """``generator``, or a deterministic stand-in (a CPU generator seeded ``seed``) when there is none."""
    return generator if generator is not None else torch.Generator().manual_seed(seed)


def sample_coordinates(d: int, k: int, generator: torch.Generator) -> torch.Tensor | None:
    """k of range(d) uniformly without replacement (sorted CPU int64), or None for "all" when k >= d.

    O(k) time and memory when k << d: the first k distinct values of i.i.d. uniform draws form a uniform
    k-subset. Uses a permutation of range(d) when k >= d/16, where that is cheaper."""
    if k >= d:
        return None
    if 16 * k >= d:
        return torch.randperm(d, generator=generator)[:k].sort().values
    draws = torch.empty(0, dtype=torch.long)
    while True:
        draws = torch.cat([draws, torch.randint(0, d, (2 * k,), generator=generator)])
        values, inverse = torch.unique(draws, return_inverse=True)
        if values.numel() >= k:
            break
    first = torch.full((values.numel(),), draws.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(draws.numel()), reduce="amin")
    return values[first.argsort()[:k]].sort().values
