"""Truncate (Portnoy, Tirosh and Hendler, "Towards Federated Learning with Byzantine-Robust Client Weighting",
Applied Sciences 12(17):8847, 2022; arXiv:2004.04986): cap the claimed sample counts so that no small group of
clients holds most of the weight, then aggregate with a quantity-aware (weighted) coordinate-wise trimmed
mean: the "Truncate" baseline of FedRA (§5.1: "limiting the quantity of each client under a dynamic
threshold in each round and applying quantity-aware Trmean"; §2: "any 10% clients do not have more than
50% samples").
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import claimed_counts, coordinate_chunks
from byzlab.aggregators.registry import register

CHUNK_ELEMENTS = 2**22
"""Coordinates x clients per slice of the weighted trimmed mean. Each slice needs a handful of work tensors
of this size (sorted values, int64 indices, float64 weights, cumulative sums, kept mass): ~250 MiB of scratch
at most, whatever d is."""


def top_count(top_fraction: float, n: int) -> int:
    """m = ceil(top_fraction * n), at least 1 and at most n (``0.1 * 30`` counts as 3, not 4)."""
    return min(n, max(1, math.ceil(round(top_fraction * n, 9))))


def truncation_cap(counts: torch.Tensor, top_fraction: float, mass: float) -> tuple[float, bool]:
    """The largest cap t such that, after truncating every count to min(c_i, t), the m = ceil(top_fraction
    * n) largest counts hold at most ``mass`` of the total; returns ``(t, feasible)``.

    Exact, sort-based: with c_1 >= ... >= c_n, f(t) = sum_{i<=m} min(c_i, t) - mass * sum_i min(c_i, t) is
    piecewise linear with breakpoints at the counts, f(0) = 0, convex up to c_m and non-decreasing after, so
    {t : f(t) <= 0} is an interval [0, t*]. f is evaluated at every breakpoint (prefix sums) and t* is found
    by linear interpolation on the segment where f changes sign. If f(c_1) <= 0 nothing is truncated
    (t = c_1). If no t > 0 works (m > mass * #positive counts, e.g. one client), ``feasible`` is False and t
    is the smallest positive count: every client with a positive claim gets the same weight.
    """
    c = torch.sort(counts.detach().to(device="cpu", dtype=torch.float64).clamp(min=0.0), descending=True).values
    n = c.numel()
    positive = c[c > 0]
    if positive.numel() == 0:
        return 0.0, False
    m = top_count(top_fraction, n)
    prefix = torch.cumsum(c, dim=0)  # prefix[j - 1] = c_1 + ... + c_j
    j = torch.arange(1, n + 1, dtype=torch.float64)
    rest = prefix[-1] - prefix  # sum_{i > j} c_i
    total = j * c + rest
    top = torch.where(j <= m, j * c + (prefix[m - 1] - prefix), m * c)
    g = top - mass * total
    feasible = g <= 1e-12 * prefix[-1]
    if bool(feasible[0]):
        return float(c[0]), True
    first = int(torch.argmax(feasible.to(torch.int8)))  # smallest j (largest count) that is feasible
    if not bool(feasible[first]) or bool(c[first] <= 0):  # only t = 0 satisfies the bound
        return float(positive.min()), False
    lo, hi = c[first], c[first - 1]
    g_lo, g_hi = g[first], g[first - 1]
    return float(lo + (-g_lo) * (hi - lo) / (g_hi - g_lo)), True


def weighted_trimmed_mean(
    updates: torch.Tensor, weights: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise weighted trimmed mean: per coordinate, sort the values, lay their weights (normalised
    to sum 1) end to end on [0, 1], drop the weight mass ``beta`` at each end (splitting a value's weight at
    a cut) and take the weighted mean of what remains. With equal weights and beta = k / n this is the
    ordinary trimmed mean dropping k values per side; beta = 0 is the weighted mean.

    Returns ``(aggregate [d], shares [n])``: ``shares[i]`` is client i's fraction of the kept weight,
    averaged over coordinates (sums to 1; equals the normalised weights when beta = 0).

    Portnoy et al.'s code trims by weighted quantiles and keeps whole weights strictly between the beta and
    1 - beta quantiles; splitting the weight at the cut makes the result continuous in the weights and
    exactly the ordinary trimmed mean for equal weights.
    """
    n, d = updates.shape
    w = weights.to(device=updates.device, dtype=torch.float64)
    w = w / w.sum()
    out = torch.empty(d, device=updates.device, dtype=updates.dtype)
    shares = torch.zeros(n, device=updates.device, dtype=torch.float64)
    for cols in coordinate_chunks(d, n, budget=CHUNK_ELEMENTS):
        ordered, order = torch.sort(updates[:, cols], dim=0)
        w_sorted = w[order]
        upper = torch.cumsum(w_sorted, dim=0)
        lower = upper - w_sorted
        kept = (upper.clamp(max=1.0 - beta) - lower.clamp(min=beta)).clamp(min=0.0)
        # rounding in the running sums must not leak weight to a value trimmed exactly at the cut (an
        # outlier of size 1e7 times a leaked 1e-8 would move the result): kept mass below 1e-12 is zero
        kept = torch.where(kept > 1e-12, kept, 0.0)
        kept = kept / kept.sum(dim=0)
        out[cols] = (kept.to(updates.dtype) * ordered).sum(dim=0)
        if not bool(torch.isfinite(out[cols]).all()):  # values near float32's largest: sum in float64
            out[cols] = (kept * ordered.double()).sum(dim=0).to(updates.dtype)
        shares += torch.zeros_like(kept).scatter_(0, order, kept).sum(dim=1)
    return out, shares / d


class TruncateParams(AggregatorParams):
    top_fraction: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="size of the client group whose weight share is bounded, as a fraction of the round's n: "
        "ceil(top_fraction * n) clients (FedRA: 'any 10% clients'; Portnoy et al.'s alpha = 0.1)",
    )
    mass: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="largest share of the truncated total weight that group may hold (FedRA: 'not more than "
        "50% samples'; Portnoy et al.'s alpha* = 0.5)",
    )
    beta: float | None = Field(
        None,
        ge=0.0,
        lt=0.5,
        description="weight mass trimmed at each end of every coordinate. Unset: with f > 0 declared "
        "Byzantine clients, the truncated weight share of the f heaviest clients (f / n for equal claims); "
        "with f = 0, 0.1 (Portnoy et al.'s t_mean_beta)",
    )


def _trim_mass(params: TruncateParams, weights: torch.Tensor, f: int) -> float:
    """beta: the parameter if set; else the weight share of the f heaviest clients if f > 0; else 0.1."""
    if params.beta is not None:
        return params.beta
    if f > 0:
        top = torch.topk(weights.to(torch.float64), min(f, weights.numel())).values.sum() / weights.sum()
        return float(top)
    return 0.1


@register
class Truncate(Aggregator[TruncateParams]):
    """Truncate (Portnoy et al. 2022, weight-truncation preprocessing; FedRA's "Truncate" baseline).

    1. Cap the claimed counts: ``n_i' = min(n_i, t)`` with the largest t such that the
       ``ceil(top_fraction * n)`` largest truncated counts hold at most ``mass`` of the truncated total
       (defaults: no 10% of the round's clients hold more than 50% of the weight). The cap is recomputed
       every round from that round's claims (FedRA's "dynamic threshold"). :func:`truncation_cap` solves for
       t exactly; Portnoy et al.'s ``find_U`` scans integer caps downwards from the largest claim, bounds
       floor(alpha * n) + 1 clients rather than ceil(alpha * n), and falls back to the smallest claim when no
       cap exists, as here.
    2. Aggregate with the quantity-aware coordinate-wise trimmed mean under the weights
       ``w_i = n_i' / sum_j n_j'``: per coordinate, weight mass ``beta`` is trimmed at each end
       (:func:`weighted_trimmed_mean`).

    ``beta`` when unset: with f > 0 declared Byzantine clients, the share of the truncated weight held by
    the f heaviest clients (f / n when the claims are equal: exactly f values trimmed per side, as FedRA
    configures Trmean with the number of malicious clients). That is the most weight f clients can hold,
    so f outliers on one side are trimmed whatever they claimed; trimming only f / n of the weight would
    leave part of a heavy outlier in (a Byzantine client claiming more than the average count keeps the
    excess). With f = 0: 0.1, Portnoy et al.'s ``t_mean_beta``. Trimming is clamped below 1/2 (at 1/2 - 1e-6
    the rule is the weighted median).

    ``weights``: each client's share of the kept weight, averaged over coordinates (for beta = 0 exactly the
    truncated, normalised counts); a trimmed outlier's share is ~0. ``info``: ``cap`` (t), ``truncated``
    (clients whose claim exceeded t), ``beta`` (trimmed mass per side), ``cap_feasible`` (0 if no cap
    satisfies the bound this round, e.g. after non-finite rows were dropped; then every positive claim
    gets the same weight). No client is selected (``accepted`` is None). ``check_setting`` refuses settings
    where no cap can exist (ceil(top_fraction * n) > mass * n) and a trimmed mass of half or more (beta,
    or f / n, the least the default can be).

    Hostile rows (``tolerated_rows``): as many as the trimmed mass covers, f with the default beta, floor(beta
    n) with beta set (equal claims: a heavy claim takes more of the trimmed mass); every kept value then lies
    between honest values (Yin et al., Definition 2, weighted). Past it, hostile values are averaged in and
    the aggregate is as large as they are: finite (a sum that overflows float32 is redone in float64),
    within the rows' coordinate range.
    """

    name = "truncate"
    Params = TruncateParams
    needs = frozenset({"num_samples"})

    @classmethod
    def tolerated_rows(cls, params: TruncateParams, num_clients: int, num_byzantine: int) -> int:
        if params.beta is not None:
            trimmed = math.floor(params.beta * num_clients + 1e-9)
        else:
            trimmed = num_byzantine if num_byzantine > 0 else math.floor(0.1 * num_clients + 1e-9)
        return min(trimmed, (num_clients - 1) // 2)

    @classmethod
    def check_setting(cls, params: TruncateParams, num_clients: int, num_byzantine: int) -> None:
        m = top_count(params.top_fraction, num_clients)
        if m > params.mass * num_clients:
            raise ValueError(
                f"truncate: no cap lets the top {m} = ceil({params.top_fraction} * {num_clients}) clients hold "
                f"<= {params.mass} of the weight (needs m <= mass * n = {params.mass * num_clients:g})"
            )
        beta = params.beta if params.beta is not None else (num_byzantine / num_clients if num_byzantine > 0 else 0.1)
        if beta >= 0.5:
            raise ValueError(
                f"truncate: trimming weight mass beta={beta:g} per side leaves nothing (needs beta < 0.5; "
                f"f={num_byzantine}, n={num_clients})"
            )

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        n = updates.shape[0]
        counts = claimed_counts(ctx.num_samples, n, "cpu")
        cap, feasible = truncation_cap(counts, p.top_fraction, p.mass)
        if cap > 0:
            truncated = counts.clamp(max=cap)
        else:  # every claim is 0: equal weights
            truncated = torch.ones(n, dtype=torch.float64)
        beta = min(_trim_mass(p, truncated, ctx.num_byzantine), 0.5 - 1e-6)
        update, shares = weighted_trimmed_mean(updates, truncated, beta)
        return AggregationResult(
            update=update,
            weights=shares.to(updates.dtype),
            info={
                "cap": cap,
                "truncated": float((counts > cap).sum()) if cap > 0 else 0.0,
                "beta": beta,
                "cap_feasible": float(feasible),
            },
        )
