"""Plain averaging: FedAvg (McMahan et al., 2017)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import weighted_rows
from byzlab.aggregators.registry import register


class FedAvgParams(AggregatorParams):
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="weight clients by their claimed sample counts, or equally"
    )


@register
class FedAvg(Aggregator[FedAvgParams]):
    """Weighted mean of the updates, w_i = n_i / sum_j n_j (or 1/n).

    Not robust: one row with NaN/Inf makes the aggregate non-finite, which the server detects and refuses
    to apply (see ``actors.server``). The counts are used as claimed, in the updates' dtype (no clamping,
    unlike the robust rules' ``numerics.client_weights``): FedAvg is the undefended baseline.

    Breakdown point 0 (``tolerated_rows`` = 0): one finite hostile row moves the mean anywhere (a 1e30 row
    among ten gives ~1e29), and the server applies it. The mean of finite rows stays finite: a float32 sum
    that overflows (rows near 3.4e38) is redone in float64 (``numerics.weighted_rows``).
    """

    name = "fedavg"
    Params = FedAvgParams
    needs = frozenset({"num_samples"})
    drops_nonfinite = False

    @classmethod
    def tolerated_rows(cls, params: FedAvgParams, num_clients: int, num_byzantine: int) -> int:
        return 0

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        if self.params.weighting == "samples" and ctx.num_samples is not None:
            counts = ctx.num_samples.to(device=updates.device, dtype=updates.dtype)
            weights = counts / counts.sum()
        else:
            weights = torch.full((n,), 1.0 / n, device=updates.device, dtype=updates.dtype)
        return AggregationResult(update=weighted_rows(weights, updates), weights=weights)
