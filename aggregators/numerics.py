"""Numerics shared by the aggregation rules: one copy of every computation that more than one rule uses
(docs/architecture.md, section "Aggregator contract": a rule never imports a sibling rule).

- coordinate slicing and medians: :func:`coordinate_chunks`, :func:`sorted_median`, :func:`median_last`,
  :func:`trimmed_mean`, :func:`repeated_median_slopes`;
- distances and Krum: :func:`squared_distances_from_gram`, :func:`pairwise_distances`, :func:`krum_order`,
  :func:`lexicographic_order`;
- client weights from claimed sample counts: :func:`claimed_counts`, :func:`client_weights`;
- norm clipping: :func:`clip_scales`;
- randomness: :func:`generator_or_seeded`, :func:`sample_coordinates`.

Everything here is plain tensor code on the inputs' device; nothing reads a ``RoundContext``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

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
    return (ordered.select(dim, n // 2 - 1) + upper) / 2


def median_last(values: torch.Tensor) -> torch.Tensor:
    """Median along the last dimension (mean of the two middle values for an even count)."""
    return sorted_median(torch.sort(values, dim=-1).values, dim=-1)


def trimmed_mean(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean of ``rows`` [n, c] (Yin et al., ICML 2018, Definition 2): drop the k
    largest and k smallest values of every column and average the n - 2k that remain (needs 2k < n)."""
    n = rows.shape[0]
    return torch.sort(rows, dim=0).values[k : n - k].mean(dim=0)


def repeated_median_slopes(z: torch.Tensor) -> torch.Tensor:
    """The inner medians of the repeated-median slope (Siegel, Biometrika 1982; eq. 1 of Fu et al.,
    "Attack-Resistant Federated Learning with Residual-based Reweighting"): ``m_i = med_{j != i} (z_j - z_i) /
    (j - i)`` [c, K] for values ``z`` [c, K] sorted along the last dimension (x = rank = 0..K-1, K >= 2).

    Memory: one [c, K, K - 1] slope tensor."""
    k = z.shape[-1]
    x = torch.arange(k, device=z.device, dtype=z.dtype)
    # other[i] = the K - 1 indices j != i
    other = torch.arange(k - 1, device=z.device).unsqueeze(0).expand(k, k - 1)
    other = other + (other >= torch.arange(k, device=z.device).unsqueeze(1)).long()
    run = x[other] - x.unsqueeze(1)  # x_j - x_i, never 0 since ranks are distinct
    slopes = z[:, other]  # [c, K, K-1]: y_j
    slopes.sub_(z.unsqueeze(-1)).div_(run)  # (y_j - y_i) / (x_j - x_i)
    return median_last(slopes)


# --------------------------------------------------------------------------------- distances and Krum


def squared_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` [..., n, n] from Gram matrices ``gram`` [..., n, n],
    clamped at 0 (rounding can make the difference slightly negative). Not symmetrised, diagonal not zeroed."""
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    return (diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * gram).clamp_min(0)


def pairwise_distances(updates: torch.Tensor, p: int, chunk: int = 1 << 16) -> torch.Tensor:
    """[n, n] distances, exactly symmetric: squared Euclidean for ``p = 2`` (Krum's ||V_i - V_j||^2), L1 for
    ``p = 1``.

    Squared Euclidean distances come from the Gram matrix, accumulated in float64 over coordinate chunks:
    a matrix product instead of n^2 d scalar differences (several times faster on CPU, far more on GPU).
    float64 keeps the cancellation in ||a||^2 + ||b||^2 - 2<a, b> negligible for float32 updates, and a
    huge row (even 1e30) cannot disturb the distances between the others; distances that overflow come
    out as +inf, never NaN. The float64 copy never exceeds one chunk. L1 distances come from
    ``torch.cdist``.
    """
    if p == 1:
        dist = torch.cdist(updates, updates, p=1.0)
        return torch.maximum(dist, dist.T)  # equal up to rounding; made exactly symmetric
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
