"""Coordinate-wise robust statistics: median, trimmed mean (Yin et al., ICML 2018) and the coordinate-wise
repeated-median line (Siegel, Biometrika 1982), the baseline of the residual-based-reweighting paper
(Fu et al., "Attack-Resistant Federated Learning with Residual-based Reweighting", §3 eqs. 1-2).

Every rule works on the stacked updates ``U`` (n x d) on their own device. Work that needs a sort per
coordinate is done over slices of coordinates so that the extra memory stays bounded (a few times
``numerics.CHUNK_ELEMENTS`` elements on top of the input); none of these rules weights or selects clients,
so ``weights`` and ``accepted`` are None (the base class still marks non-finite rows as not accepted).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import (
    coordinate_chunks,
    coordinate_median,
    lines_at_centre,
    mean_rows,
    median_last,
    repeated_median_slopes,
    trimmed_mean,
)
from byzlab.aggregators.registry import register

# ----------------------------------------------------------------------------------------------- median


class MedianParams(AggregatorParams):
    """Coordinate-wise median has no parameters."""


@register
class CoordinateMedian(Aggregator[MedianParams]):
    """Coordinate-wise median (Yin et al., ICML 2018, "median-based gradient descent", Alg. 1 option I):
    ``g_k = med_i U[i, k]`` for every coordinate k.

    For an even number of updates the median is the mean of the two middle values (the usual statistical
    definition, and what the residual-based-reweighting authors' code does), not the lower middle value that
    ``torch.median`` returns: the lower one would bias the aggregate towards smaller values. Two middle
    values near float32's largest are halved before they are added, so their mean does not overflow.

    Breakdown: fewer than n/2 arbitrary rows (Yin et al. §3: the median of each coordinate lies between two
    honest values while fewer than half are corrupted), whatever f is declared. Past it the median of a
    coordinate is a hostile value (or the mean of two), as large as the hostile rows: finite, within the
    rows' coordinate range.
    """

    name = "median"
    Params = MedianParams

    @classmethod
    def tolerated_rows(cls, params: MedianParams, num_clients: int, num_byzantine: int) -> int:
        return (num_clients - 1) // 2

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        return AggregationResult(update=coordinate_median(updates))


# ---------------------------------------------------------------------------------------- trimmed mean


class TrimmedMeanParams(AggregatorParams):
    beta: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="fraction of the updates trimmed at each end of every coordinate (Yin et al. 2018's beta); "
        "used only when `trim` is unset and the round's declared Byzantine count f is 0",
    )
    trim: int | None = Field(
        None,
        ge=0,
        description="explicit number k of values trimmed at each end; overrides f and beta",
    )


def _trim_count(params: TrimmedMeanParams, n: int, f: int) -> int:
    """k values per side: ``trim`` if set, else the declared Byzantine count f if f > 0, else floor(beta * n)."""
    if params.trim is not None:
        return params.trim
    if f > 0:
        return f
    return int(params.beta * n)


@register
class TrimmedMean(Aggregator[TrimmedMeanParams]):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018, Definition 2 / Alg. 1 option II): for every
    coordinate, drop the k largest and k smallest of the n values and average the n - 2k that remain.

    k is chosen by precedence: ``trim`` if given; otherwise the Byzantine count f the defense is told
    (``ctx.num_byzantine``) when f > 0 (Yin et al. require beta >= f / n, and trimming exactly f is how
    FedRA, LASA and SDEA configure the baseline); otherwise floor(beta * n) with ``beta`` = 0.1 by
    default (the residual-based-reweighting authors' code uses int(alpha * n) with alpha = 0.2).

    ``check_setting`` refuses 2k >= n (nothing left to average). In a round where k is too large for the
    updates actually received (client sampling, dropped non-finite rows), k is clamped to floor((n - 1) / 2)
    and ``info["f_clamped"] = 1``. ``info["trim"]`` is the k used.

    Breakdown: k arbitrary rows (Yin et al., Definition 2 with beta >= f / n: every value kept lies between
    two honest values of its coordinate). Past it -- more hostile rows than k on one side of a coordinate --
    hostile values are averaged in and the aggregate is as large as they are over n - 2k: finite (sums that
    overflow float32 are redone in float64), within the rows' coordinate range.
    """

    name = "trimmed_mean"
    Params = TrimmedMeanParams

    @classmethod
    def tolerated_rows(cls, params: TrimmedMeanParams, num_clients: int, num_byzantine: int) -> int:
        return min(_trim_count(params, num_clients, num_byzantine), (num_clients - 1) // 2)

    @classmethod
    def check_setting(cls, params: TrimmedMeanParams, num_clients: int, num_byzantine: int) -> None:
        k = _trim_count(params, num_clients, num_byzantine)
        if 2 * k >= num_clients:
            raise ValueError(
                f"trimmed_mean: trimming k={k} values per side needs n > 2k = {2 * k} updates per round, "
                f"got n={num_clients} (trimming more than half; f={num_byzantine})"
            )

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        n, d = updates.shape
        wanted = _trim_count(self.params, n, ctx.num_byzantine)
        k = min(wanted, (n - 1) // 2)
        out = torch.empty(d, device=updates.device, dtype=updates.dtype)
        for cols in coordinate_chunks(d, n):
            out[cols] = trimmed_mean(updates[:, cols], k)
        return AggregationResult(update=out, info={"trim": float(k), "f_clamped": float(k < wanted)})


# ------------------------------------------------------------------------------------- repeated median


class RepeatedMedianParams(AggregatorParams):
    intercept: Literal["separate", "hierarchical"] = Field(
        "separate",
        description="separate: intercept by eq. 2 of the residual-based-reweighting paper (Siegel 1982, median of "
        "the pairwise lines' values); hierarchical: med_i(y_i - beta1 * x_i) with the fitted slope",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="coordinates processed at once (memory ~ chunk_size * n^2 elements on GPUs, less on the CPU); "
        "default: as many as fit in 2**24 slope elements",
    )


@register
class RepeatedMedian(Aggregator[RepeatedMedianParams]):
    """Coordinate-wise repeated-median regression line evaluated at the centre: the "Repeated Median"
    baseline of the residual-based-reweighting paper (Fu et al., §3 "Repeated median", eqs. 1-2, and
    Algorithm 1 lines 1-3; Siegel, 1982).

    Per coordinate, with y the n clients' values and x the rank of each value (Algorithm 1 line 2: "x_n <-
    indices of y_n sorted in an ascending order", i.e. the point set (rank, value) is increasing; the
    authors' code uses ranks 0..n-1):

    - slope, eq. (1): ``b1 = med_i med_{j != i} (y_j - y_i) / (x_j - x_i)``;
    - the line is evaluated at the centre of the ranks, ``xbar = (n - 1) / 2``.

    The intercept (``intercept``):

    - ``separate`` (default, eq. (2) and Siegel's estimator): the median over i of the median over j of the
      pairwise line through points i and j, each evaluated at the centre. A line's value at xbar is an
      affine, monotone function of its slope for fixed i, so this equals ``med_i (y_i + m_i (xbar - x_i))``
      with ``m_i`` the inner slope median of eq. (1). The intercept is taken at the centred origin: with the
      origin at rank 0 (eq. 2 read literally) the result would depend on where ranks start and would not
      be sign-equivariant (aggregate(-U) != -aggregate(U)).
    - ``hierarchical``: ``b0 = med_i (y_i - b1 x_i)`` with the fitted slope (as in
      ``scipy.stats.siegelslopes``); value at the centre ``med_i (y_i + b1 (xbar - x_i))``.

    Both are translation-, scale- and sign-equivariant and depend only on the sorted values, so permuting
    clients leaves the result unchanged and identical updates return that update. Note: the authors'
    released code uses ``b0 = med(y) - b1 med(x)``, which makes the value at the centre exactly the
    coordinate-wise median; use the ``median`` rule to reproduce that.

    Memory: O(n^2) slopes per coordinate, so coordinates are processed ``chunk_size`` at a time; on the CPU
    a chunk's slopes are built and selected a few coordinates at a time (``numerics.SLOPE_COORDINATES``).

    Breakdown: at most (n - 2) // 2 arbitrary rows. Each inner median of eq. (1) is over the n - 1 slopes
    from one point, and stays on honest slopes only while fewer than half of those involve a hostile value:
    h < (n - 1) / 2 (Siegel 1982 gives the asymptotic 50%; with n = 13, six equal rows at 1e30 already move
    the line). Up to that count the output is on the honest rows' scale, though not inside their range: the
    line is extrapolated to the centre from honest points, by up to (n - 1) / 2 times the largest honest
    slope. Past it the output follows the hostile values and, being an extrapolation, can exceed the rows'
    range by up to (n - 1) / 2 times its width; where that overflows float32 (hostile values near 3.4e38)
    the coordinate is +-inf or NaN and the server refuses the round. A slope that overflowed times a zero
    offset counts as the point itself, not NaN (``numerics.lines_at_centre``).
    """

    name = "repeated_median"
    Params = RepeatedMedianParams

    @classmethod
    def tolerated_rows(cls, params: RepeatedMedianParams, num_clients: int, num_byzantine: int) -> int:
        return max(0, (num_clients - 2) // 2)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        n, d = updates.shape
        if n <= 2:  # one value: itself; two values: the line through them at the centre is their mean
            return AggregationResult(update=mean_rows(updates))
        device, dtype = updates.device, updates.dtype
        centred = (n - 1) / 2 - torch.arange(n, device=device, dtype=dtype)  # xbar - x_i
        out = torch.empty(d, device=device, dtype=dtype)
        for cols in coordinate_chunks(d, n * (n - 1), self.params.chunk_size):
            z = torch.sort(updates[:, cols].T, dim=-1).values  # [c, n], z[:, i] has rank i
            inner = repeated_median_slopes(z)  # m_i [c, n], eq. (1)'s inner median
            slopes = inner if self.params.intercept == "separate" else median_last(inner).unsqueeze(-1)
            out[cols] = median_last(lines_at_centre(z, slopes, centred))
        return AggregationResult(update=out)
