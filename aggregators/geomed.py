"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade and Harchaoui, "Robust
Aggregation for Federated Learning", IEEE TSP 2022; arXiv:1912.13445).
"""

from __future__ import annotations

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import Weighting, client_weights
from byzlab.aggregators.registry import register


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
        description="alpha_i proportional to the claimed sample counts (RFA, as in the paper) or uniform",
    )


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

    ``update = weights @ updates`` exactly: ``weights`` are the normalised Weiszfeld weights
    ``beta_i / sum_j beta_j`` that produced the returned iterate, so a far outlier gets weight ~ alpha_i /
    distance. ``info``: ``iterations`` (Weiszfeld steps taken), ``objective`` (``sum_i alpha_i ||z - x_i||``
    at the returned point). No client is selected (``accepted`` is None). The breakdown point is 1/2 of the
    weight.
    """

    name = "geomed"
    Params = GeoMedParams
    needs = frozenset({"num_samples"})

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        alpha = client_weights(p.weighting, ctx.num_samples, updates)
        z = alpha @ updates
        dist = torch.linalg.vector_norm(updates - z, dim=1)
        weights = alpha
        iterations = 0
        for iterations in range(1, p.max_iter + 1):
            beta = alpha / dist.clamp(min=p.nu)
            total = beta.sum()
            weights = beta / total
            z_next = weights @ updates
            step = torch.linalg.vector_norm(z_next - z)
            z = z_next
            dist = torch.linalg.vector_norm(updates - z, dim=1)
            if bool(step * total <= p.tol):  # step <= tol * (harmonic-mean distance 1 / total)
                break
        return AggregationResult(
            update=z, weights=weights, info={"iterations": float(iterations), "objective": float(alpha @ dist)}
        )


@register
class RFA(GeoMed):
    """``rfa``: the same rule as ``geomed`` (RFA is the geometric median by smoothed Weiszfeld), registered
    under the name the FedRA and SDEA papers use."""

    name = "rfa"
