"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade and Harchaoui, "Robust
Aggregation for Federated Learning", IEEE TSP 2022; arXiv:1912.13445).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import (
    Weighting,
    client_weights,
    coordinate_median,
    distances_to,
    weighted_rows_wide,
)
from byzlab.aggregators.registry import register

LASA_CODE_REWEIGHTS = 2  # the LASA authors' geomed: two exp(-distance) passes (l.221, 'cifar' not in the dataset)


class GeoMedParams(AggregatorParams):
    nu: float = Field(
        1e-6,
        gt=0.0,
        description="smoothing nu of the smoothed Weiszfeld algorithm: distances below nu count as nu "
        "(1e-6 in the authors' TFF implementation of RFA and in their geom_median package)",
    )
    max_iter: int = Field(
        100,
        ge=1,
        description="maximum number of Weiszfeld iterations (each one a weighted mean); 100 as in the "
        "authors' geom_median package (their TFF implementation of RFA defaults to 5 communication passes)",
    )
    tol: float = Field(
        1e-5,
        ge=0.0,
        description="stop once a Weiszfeld step moves z by less than tol times the alpha-weighted harmonic "
        "mean of the distances ||z - x_i|| (a relative tolerance that a far outlier does not loosen)",
    )
    weighting: Weighting = Field(
        "samples",
        description="alpha_i proportional to the claimed sample counts (RFA, as in the paper) or uniform "
        "(variant lasa_code: uniform, as the LASA authors' code)",
    )
    variant: Literal["paper", "lasa_code"] = Field(
        "paper",
        description="paper: the geometric median; lasa_code: the LASA authors' GeoMed, which reweights each "
        "update by exp(-||x_i - z||) twice and recomputes the weighted median (their runs on every dataset but CIFAR)",
    )

    @model_validator(mode="before")
    @classmethod
    def _code_weighs_uniformly(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant") == "lasa_code":
            if data.get("weighting", "uniform") != "uniform":
                raise ValueError("variant 'lasa_code' starts from equal weights, as the LASA authors' code: "
                                 "weighting must be uniform")
            data = {**data, "weighting": "uniform"}
        return data


@register
class GeoMed(Aggregator[GeoMedParams]):
    """Weighted geometric median ``argmin_z sum_i alpha_i ||z - x_i||`` of the updates, computed with the
    smoothed Weiszfeld algorithm of Pillutla et al. (TSP 2022, section "Robust aggregation": the weighted
    geometric median objective, its nu-smoothed surrogate, and the "smoothed Weiszfeld" algorithm):

        beta_i = alpha_i / max(nu, ||z - x_i||),   z <- sum_i beta_i x_i / sum_i beta_i.

    ``alpha_i`` is proportional to the claimed sample count n_i (RFA weights clients like FedAvg, which is
    why FedRA calls it quantity-aware). The iteration starts from the weighted mean ``sum_i alpha_i x_i``
    (in RFA and the authors' TFF code the first pass is the plain weighted mean) and stops after
    ``max_iter`` iterations or once a step moves z by less than ``tol`` times ``1 / sum_i beta_i``, the
    alpha-weighted harmonic mean of the smoothed distances. Stopping rule: the authors' code tests the
    relative decrease of the objective instead; with a far outlier the objective is dominated by that one
    distance, so that test stops early (nine updates spread 0.1 around a point plus one 1e7 away: it stopped
    ~0.2 per coordinate from the median), whereas the harmonic-mean scale is set by the points near z.

    ``update = weights @ updates`` (exactly; up to rounding after the float64 path below): ``weights`` are
    the normalised Weiszfeld weights ``beta_i / sum_j beta_j`` that produced the returned iterate, so a far
    outlier gets weight ~ alpha_i / distance. ``info``: ``iterations`` (Weiszfeld steps taken),
    ``objective`` (``sum_i alpha_i ||z - x_i||`` at the returned point), ``float64_restart`` (1 when the
    float64 iteration below ran). No client is selected (``accepted`` is None).

    Breakdown: 1/2 of the weight (Pillutla et al., section "Robust aggregation": the geometric median's
    breakdown point is 1/2). With equal claims, fewer than n/2 arbitrary rows cannot move z far: by Minsker
    ("Geometric median and robust estimation in Banach spaces", Bernoulli 2015, Lemma 2.1, whose proof
    carries over to weights), if rows of total weight at most a < 1/2 lie outside the ball of radius r
    around the honest mean, then ``||z - honest mean|| <= C_a r`` with ``C_a = (1 - a) / sqrt(1 - 2a)``
    (tests/unit/aggregators/test_hostile_rows.py checks this bound, with slack for the smoothing and the
    stopping rule). Past the breakdown point z follows the heavier side: z is a convex combination of the
    rows, so it stays finite and within the rows' coordinate range, but can be as large as the hostile rows.

    **Paper text or authors' code** (``variant``). ``lasa_code`` is the GeoMed the LASA authors ran as a
    baseline (``JiiahaoXU/LASA``, ``algorithms/defense/byzantine_robust_aggregation.py``, ``geomed``, l.201-224):
    from equal weights it computes the geometric median z (Pillutla's ``geom_median`` package, the same
    smoothed Weiszfeld from the mean), then twice multiplies every weight by ``exp(-||x_i - z||)`` and recomputes
    the weighted median (l.221-224: two passes for every dataset but CIFAR, none on CIFAR, where the variant
    ``paper`` is their rule). An update at distance r from the median thus ends with weight ~exp(-r - r'),
    so the passes pull z towards the densest updates. The weights are kept as logarithms and normalised
    before ``exp`` (``exp(-1000)`` is 0 in floating point): the same ratios without underflow. The
    package stops once the objective changes by less than 1e-20 of itself; byzlab's stopping rule (``tol``)
    gives the same median to within the tolerance. ``weights`` are the last pass's Weiszfeld weights;
    ``info["reweights"]`` is 2.

    Hostile rows (a 1e30 sign flip, rows near float32's largest value): the float32 iteration computes
    ``||x_i - z||`` as the root of a float32 sum of squares, which overflows for rows beyond ~1e19 and made
    every weight 0/0 = NaN; and from a mean dragged to 1e29 each Weiszfeld step only divides the distance
    to the honest rows by about n - 1 (n = 3: halves it), too slowly for ``max_iter``. When a distance (or
    z) is not finite, or ``max_iter`` passes without convergence, the rule runs the same smoothed Weiszfeld
    iteration in float64 over slices of coordinates (:meth:`weiszfeld_wide`), starting from the
    coordinate-wise median: the geometric median does not depend on the starting point, and from there the
    honest rows are near. Its point is returned unless it, too, stops at ``max_iter`` with a higher
    objective than the float32 run's. Rounds that converge in float32 (ordinary rounds do) never take that
    path, so their numbers are unchanged.
    """

    name = "geomed"
    Params = GeoMedParams
    needs = frozenset({"num_samples"})

    @classmethod
    def tolerated_rows(cls, params: GeoMedParams, num_clients: int, num_byzantine: int) -> int:
        return (num_clients - 1) // 2  # equal claims; in general, rows holding less than half the weight

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        alpha = client_weights(self.params.weighting, ctx.num_samples, updates)
        result = self.median(updates, alpha)
        if self.params.variant != "lasa_code":
            return result
        log_alpha = alpha.double().log()
        for _ in range(LASA_CODE_REWEIGHTS):
            log_alpha = log_alpha - distances_to(updates, result.update.double())
            shifted = (log_alpha - log_alpha.max()).exp()
            result = self.median(updates, (shifted / shifted.sum()).to(updates.dtype))
        result.info["reweights"] = float(LASA_CODE_REWEIGHTS)
        return result

    def median(self, updates: torch.Tensor, alpha: torch.Tensor) -> AggregationResult:
        """The alpha-weighted geometric median of the rows, with its Weiszfeld weights and diagnostics."""
        narrow = self.weiszfeld(updates, alpha)
        if narrow is not None and narrow[-1]:  # converged in the updates' dtype: every ordinary round
            z, weights, iterations, objective, _ = narrow
            restart = False
        else:
            z, weights, iterations, objective, converged = self.weiszfeld_wide(updates, alpha.double())
            z, weights, restart = z.to(updates.dtype), weights.to(updates.dtype), True
            if narrow is not None and not converged:  # neither converged: keep the lower objective
                mean_start = float(alpha.double() @ distances_to(updates, narrow[0].double()))
                if mean_start < objective:
                    z, weights, iterations, _, _ = narrow
                    objective = mean_start
        info = {"iterations": float(iterations), "objective": objective, "float64_restart": float(restart)}
        return AggregationResult(update=z, weights=weights, info=info)

    def weiszfeld(self, updates: torch.Tensor, alpha: torch.Tensor) -> tuple | None:
        """The smoothed Weiszfeld iteration in the updates' dtype, from the weighted mean: (z, weights,
        iterations, objective, converged), or None as soon as a distance or z is not finite (a hostile row
        overflowed the float32 sum of squares)."""
        return self._iterate(updates, alpha, alpha @ updates, lambda w, rows: w @ rows,
                             lambda rows, z: torch.linalg.vector_norm(rows - z, dim=1), give_up_if_not_finite=True)

    def weiszfeld_wide(self, updates: torch.Tensor, alpha: torch.Tensor) -> tuple:
        """The same iteration with float64 distances, weights and iterates over slices of coordinates
        (``numerics.distances_to``, ``numerics.weighted_rows_wide``: float64 copies of one slice at a time),
        from the coordinate-wise median: finite for any finite rows. Returns float64 (z, weights,
        iterations, objective, converged)."""
        return self._iterate(updates, alpha, coordinate_median(updates).double(), weighted_rows_wide, distances_to,
                             give_up_if_not_finite=False)

    def _iterate(self, updates: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, weighted_mean, distances,
                 give_up_if_not_finite: bool) -> tuple | None:
        """Weiszfeld steps from ``z`` until a step moves z by at most tol x the alpha-weighted harmonic-mean
        distance, or ``max_iter``; ``weighted_mean(weights, rows)`` and ``distances(rows, z)`` set the
        arithmetic."""
        p = self.params
        dist = distances(updates, z)
        if give_up_if_not_finite and not bool(torch.isfinite(dist).all()):
            return None
        weights = alpha
        iterations, converged = 0, False
        for iterations in range(1, p.max_iter + 1):
            beta = alpha / dist.clamp(min=p.nu)
            total = beta.sum()
            weights = beta / total
            z_next = weighted_mean(weights, updates)
            step = torch.linalg.vector_norm(z_next - z)
            z = z_next
            dist = distances(updates, z)
            converged, finite = torch.stack([step * total <= p.tol, torch.isfinite(dist).all()]).tolist()
            if give_up_if_not_finite and not finite:
                return None
            if converged:  # step <= tol * (harmonic-mean distance 1 / total)
                break
        return z, weights, iterations, float(alpha @ dist), converged


@register
class RFA(GeoMed):
    """``rfa``: the same rule as ``geomed`` (RFA is the geometric median by smoothed Weiszfeld), registered
    under the name the FedRA and SDEA papers use."""

    name = "rfa"
