"""SignGuard (Xu, Huang, Song & Lan, "Byzantine-robust Federated Learning through Collaborative Malicious
Gradient Filtering", ICDCS 2022; arXiv:2109.05872): the two collaborative filters and the clipped mean, as in
the paper and the authors' code (``JianXu95/SignGuard``, ``aggregators/signguard.py``, class
``signguard_multiclass``).

1. Norm-threshold filter: with M the median of the updates' L2 norms, keep
   ``S1 = {i : L·M <= ||g_i|| <= R·M}``, L = 0.1 and R = 3.0 (the values of the paper and the authors' code).
2. Sign-based clustering: on a random subset of coordinates (10% of d in the paper and code) compute every
   client's sign statistics -- the fractions of positive, zero and negative coordinates --, scale each of the
   three features by its maximum over the clients (as the authors' code does), cluster these [n, 3] features
   with MeanShift and keep ``S2`` = the largest cluster.
3. The selected set is ``S = S1 ∩ S2``; every selected update is clipped to the median norm M and the
   aggregate is their plain mean: ``(1/|S|) Σ_{i∈S} g_i · min(1, M/||g_i||)``.

Choices, all documented deviations or precisions:

* Clustering: scikit-learn's ``MeanShift(bandwidth=h, bin_seeding=True, cluster_all=False)`` as in the
  authors' code; points not within h of any mode are orphans (rejected). The bandwidth is scikit-learn's
  ``estimate_bandwidth`` rule (mean distance to the ⌊quantile·n⌋-th nearest neighbour, the point itself
  counted, quantile 0.5) computed on *all* n points rather than a random subsample of 50, so it uses no
  randomness besides ``ctx.generator`` and does not depend on the order of the rows; h is floored at 1e-6
  so identical features form one cluster instead of failing. Ties between equally large clusters go to the
  first in scikit-learn's order (by density, then centre coordinates), which does not depend on row order.
* Coordinates are a uniform random subset drawn with ``ctx.generator`` on the CPU (the authors' code takes a
  contiguous block at a random offset). At least ``min_coordinates`` (1000) coordinates are used, all of them
  when d is smaller: 10% of a toy model's d would be a handful of signs. For d >= 10^4 this is the paper's
  10%.
* Norm bounds are inclusive (the authors' code uses strict inequalities), so all-zero updates (M = 0) pass.
* The median of an even count is the mean of the two middle norms (numpy's, as the authors' norm filter);
  the same M is the clipping threshold (the authors' code clips at torch's lower median).
* If S is empty, the round's update is zero and nobody is accepted (``info["empty_selection"] = 1``).
* ``weights`` are each raw update's coefficient in the aggregate, ``min(1, M/||g_i||)/|S|`` on S and 0
  elsewhere, so ``update == weights @ updates``.

**Paper text or authors' code** (``variant``). The default, ``paper``, is the rule above. ``variant: lasa_code``
is the copy the LASA authors ran as their SignGuard baseline (``JiiahaoXU/LASA``,
``algorithms/defense/signguard.py``, "modified from JianXu95/SignGuard"), which departs in three places:

* the aggregate is the plain mean of the selected updates, *not* clipped: the code computes ``grads_clip``
  (l.134) but averages ``grads[benign_idx]`` (l.136);
* the signs are counted on one contiguous block of ``int(0.1·d)`` coordinates starting at a random offset in
  ``[0, d - k)`` (l.86-87), with no ``min_coordinates`` floor;
* the norm bounds are strict, ``0.1·M < ||g_i|| < 3.0·M`` (l.74-75).

Their bandwidth rule, clustering and feature scaling are the ones above (``estimate_bandwidth`` with
``n_samples`` = the clients per round sees every point, as here).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import generator_or_seeded, safe_row_norms, sample_coordinates, weighted_rows
from byzlab.aggregators.registry import register


class SignGuardParams(AggregatorParams):
    norm_low: float = Field(
        0.1, ge=0, description="lower bound L of the norm filter, in units of the median norm (paper: 0.1)"
    )
    norm_high: float = Field(
        3.0, gt=0, description="upper bound R of the norm filter, in units of the median norm (paper: 3.0)"
    )
    sample_fraction: float = Field(
        0.1, gt=0, le=1, description="fraction of the coordinates whose signs are counted (paper: 10%)"
    )
    min_coordinates: int = Field(
        1000, ge=1, description="count the signs of at least this many coordinates (all of them when d is smaller)"
    )
    bandwidth_quantile: float = Field(
        0.5, gt=0, le=1, description="MeanShift bandwidth = mean distance to the ⌊quantile·n⌋-th nearest neighbour "
        "(scikit-learn estimate_bandwidth; 0.5 in the authors' code)"
    )
    variant: Literal["paper", "lasa_code"] = Field(
        "paper",
        description="paper: the clipped mean of the paper; lasa_code: the LASA authors' copy (plain mean of the "
        "selected, signs of one contiguous block of int(0.1·d) coordinates, strict norm bounds)",
    )


def norm_filter(norms: torch.Tensor, low: float, high: float, strict: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [n] of ``low·M <= norm <= high·M``, the median M) -- the paper's norm-threshold filter; ``strict``
    excludes the bounds themselves."""
    median = torch.quantile(norms.double(), 0.5).to(norms.dtype)
    if strict:
        return (norms > low * median) & (norms < high * median), median
    return (norms >= low * median) & (norms <= high * median), median


def sign_features(sub: torch.Tensor) -> torch.Tensor:
    """Fractions of positive, zero and negative entries of each row of ``sub`` [n, k] -> [n, 3]."""
    k = sub.shape[1]
    return torch.stack([(sub > 0).sum(1), (sub == 0).sum(1), (sub < 0).sum(1)], dim=1).double() / k


def largest_cluster(features: torch.Tensor, quantile: float = 0.5) -> tuple[torch.Tensor, int]:
    """(mask [n] of the largest MeanShift cluster of the rows of ``features``, the number of clusters)."""
    from sklearn.cluster import MeanShift

    x = features.detach().double().cpu()
    n = x.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.bool), 1
    x = x / (x.max(dim=0).values + 1e-8)  # each feature scaled by its maximum (authors' code)
    k = max(1, int(n * quantile))
    kth = torch.cdist(x, x).sort(dim=1).values[:, k - 1]  # distance to the k-th neighbour, self included
    bandwidth = max(float(kth.mean()), 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(x.numpy()).labels_
    clustered = labels[labels >= 0]
    if clustered.size == 0:  # every point an orphan: no structure to prefer one client over another
        return torch.ones(n, dtype=torch.bool), 0
    counts = np.bincount(clustered)
    return torch.from_numpy(labels == int(np.argmax(counts))), int(counts.size)


@register
class SignGuard(Aggregator[SignGuardParams]):
    """SignGuard: norm filter ∩ largest sign-statistics cluster, mean of the survivors clipped to the median norm.

    Hostile rows (``tolerated_rows``: fewer than half). While the median norm M is an honest one, a row
    outside [L·M, R·M] is dropped and every selected row is clipped to M, so the aggregate's norm is at most
    M. Norms are float32 as in the authors' code, recomputed in float64 when a sum of squares overflows (a
    row beyond ~1e19 per entry), so such rows are measured, not turned into inf (and inf / inf scales into
    NaN). Past the breakdown point M is a hostile norm: hostile rows pass the filter and the clipped mean is
    as large as they are, finite (a sum that overflows float32 is redone in float64).
    """

    name = "signguard"
    Params = SignGuardParams
    needs = frozenset({"generator"})  # when sampling coordinates (k < d)

    @classmethod
    def tolerated_rows(cls, params: SignGuardParams, num_clients: int, num_byzantine: int) -> int:
        return (num_clients - 1) // 2

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        n, d = updates.shape
        p = self.params
        norms = torch.linalg.vector_norm(updates, dim=1)
        if not bool(torch.isfinite(norms).all()):  # a float32 sum of squares overflowed: float64 norms
            norms = safe_row_norms(updates)
        code = p.variant == "lasa_code"
        by_norm, median = norm_filter(norms, p.norm_low, p.norm_high, strict=code)

        generator = generator_or_seeded(ctx.generator, int(ctx.round))
        if code:  # one contiguous block at a random offset (LASA's signguard.py l.86-87)
            k = max(int(p.sample_fraction * d), 1)
            start = int(torch.randint(0, max(d - k, 1), (1,), generator=generator)) if k < d else 0
            sub = updates[:, start:start + k]
        else:
            k = min(d, max(int(p.sample_fraction * d), p.min_coordinates, 1))
            columns = sample_coordinates(d, k, generator) if k < d else None
            sub = updates if columns is None else updates.index_select(1, columns.to(updates.device))
        by_sign, clusters = largest_cluster(sign_features(sub), p.bandwidth_quantile)
        by_sign = by_sign.to(updates.device)

        selected = by_norm & by_sign
        count = int(selected.sum())
        if code:  # the code averages the selected updates unclipped
            scale = torch.ones_like(norms)
        else:
            scale = torch.where(norms > median, median / norms.clamp_min(1e-30), torch.ones_like(norms))
        weights = (torch.where(selected, scale, torch.zeros_like(scale)) / max(count, 1)).to(updates.dtype)
        return AggregationResult(
            update=weighted_rows(weights, updates),
            weights=weights,
            accepted=selected,
            info={
                "num_accepted": float(count),
                "norm_median": float(median),
                "num_norm_kept": float(by_norm.sum()),
                "num_sign_kept": float(by_sign.sum()),
                "num_clusters": float(clusters),
                "num_coordinates": float(k),
                "empty_selection": float(count == 0),
            },
        )
