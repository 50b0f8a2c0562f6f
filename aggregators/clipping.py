"""Clipping rules: norm bounding (Sun, Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated
Learning?", NeurIPS FL workshop 2019, arXiv:1911.07963) and centered clipping (Karimireddy, He and Jaggi,
"Learning from History for Byzantine Robust Optimization", ICML 2021, arXiv:2012.10333).

Both work on the stacked updates ``U`` (n x d) on their own device; extra memory is at most one n x d
temporary (the differences to the centre). Neither rule selects clients (``accepted`` is None).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import Weighting, client_weights, clip_scales_wide, safe_row_norms
from byzlab.aggregators.registry import register


def _effective(weights: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Each client's share of the aggregate: ``w_i s_i / sum_j w_j s_j``."""
    effective = weights * scales
    return effective / effective.sum()


# ------------------------------------------------------------------------------------------ norm bound


class NormBoundParams(AggregatorParams):
    threshold: float = Field(
        1.0,
        gt=0.0,
        description="L2 bound M on every update (Sun et al.'s norm bound; their released TFF script "
        "defaults to l2_norm_clip = 1.0). Scale-dependent: set it from benign update norms",
    )
    weighting: Weighting = Field(
        "samples",
        description="average the clipped updates weighted by claimed sample counts (as FedRA runs it) or uniformly",
    )


@register
class NormBound(Aggregator[NormBoundParams]):
    """Norm bounding (Sun et al. 2019, the "norm thresholding of updates" defense): every update is scaled
    onto the L2 ball of radius M and the clipped updates are averaged,

        update = sum_i w_i x_i / max(1, ||x_i|| / M),    w_i = n_i / sum_j n_j (or 1/n).

    Sun et al. clip each client's model delta before averaging; their released code averages uniformly,
    FedRA (§5.1) lists Norm-bound among the quantity-aware defenses, hence ``weighting = "samples"`` by
    default. The paper evaluates several bounds; the default M = 1.0 is their TFF script's default and only
    meaningful relative to the size of the model's updates.

    ``weights``: each client's share of the aggregate, ``w_i s_i / sum_j w_j s_j`` with s_i the clip factor
    (so ``update = (sum_j w_j s_j) * weights @ updates``): a clipped outlier's share shrinks with its norm.
    ``info["clipped"]``: number of updates that were scaled down.

    Hostile rows (``tolerated_rows``: any number): every row contributes at most ``w_i M`` in norm, so the
    aggregate's norm is at most M whatever the rows are (on the honest rows' scale as far as M is). Norms
    of rows beyond ~1e19 per entry overflow float32's sum of squares; they are recomputed in float64
    (``numerics.safe_row_norms``), and a row whose norm exceeds float32 itself is scaled by ``M / norm``
    computed in float64, so it still contributes its clipped vector instead of nothing.
    """

    name = "norm_bound"
    Params = NormBoundParams
    needs = frozenset({"num_samples"})

    @classmethod
    def tolerated_rows(cls, params: NormBoundParams, num_clients: int, num_byzantine: int) -> int:
        return num_clients

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        weights = client_weights(p.weighting, ctx.num_samples, updates)
        scales = clip_scales_wide(safe_row_norms(updates), p.threshold, updates.dtype)
        update = (weights * scales) @ updates
        return AggregationResult(
            update=update, weights=_effective(weights, scales), info={"clipped": float((scales < 1).sum())}
        )


# ----------------------------------------------------------------------------------- centered clipping


class CenteredClippingParams(AggregatorParams):
    tau: float = Field(
        100.0,
        gt=0.0,
        description="clipping radius tau around the centre (the authors' CIFAR-10 launcher uses tau = 100 "
        "with one iteration; their tau sweep covers 0.1, 10, 1000)",
    )
    iterations: int = Field(
        1,
        ge=1,
        description="clipping iterations l per round (Karimireddy et al. use l = 1: one suffices when the "
        "centre is the previous aggregate)",
    )
    momentum: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="beta of the aggregate's momentum buffer m <- beta m + (1 - beta) CC(x; m); 0 = the "
        "authors' aggregator (centre = previous aggregate). Their worker momentum belongs to the clients",
    )
    weighting: Weighting = Field(
        "uniform",
        description="weights of the clipped differences: uniform 1/n (as in the paper) or claimed sample counts",
    )


@register
class CenteredClipping(Aggregator[CenteredClippingParams]):
    """Centered clipping, CC (Karimireddy et al., ICML 2021: the iterative centered-clipping aggregator and
    the robust momentum-SGD algorithm built on it): starting from a centre v, repeat ``iterations`` times

        v <- v + sum_i w_i (x_i - v) min(1, tau / ||x_i - v||),     w_i = 1/n (or n_i / sum_j n_j).

    The centre is the previous round's output (``v = 0`` before the first round), as in the paper's
    momentum algorithm and the authors' ``Clipping`` aggregator, which keeps its last output as the next centre:
    the rule is stateful (``state_dict`` holds ``center``).

    Momentum. In the paper the *workers* send momentum vectors ``m_i = (1 - beta) g_i + beta m_i`` and the
    server runs CC on them; in this federated setting clients send local-training deltas, and worker
    momentum is a client-side optimiser choice. The server cannot recompute a Byzantine client's momentum
    and per-client buffers would cost N x d, so ``momentum`` here is a server-side exponential average of
    the rule's output, ``m_t = beta m_{t-1} + (1 - beta) CC(x; m_{t-1})``, with the buffer doubling as the
    centre. ``momentum = 0`` (default) is exactly the authors' aggregator. (The server's own optimiser
    momentum, ``server.momentum``, is applied on top of whatever the rule returns.)

    ``weights``: relative influence in the last iteration, ``w_i c_i / sum_j w_j c_j`` with c_i the clip
    factor of client i. ``info``: ``clipped`` (updates clipped in the last iteration), ``center_norm``.

    Hostile rows (``tolerated_rows``: any number): each iteration moves the centre by at most tau
    (``||sum_i w_i c_i (x_i - v)|| <= tau``), so a round moves it by at most ``iterations * tau`` whatever
    the rows are (the clip of the centered-clipping step bounds every difference it averages). Norms that
    overflow float32 are recomputed in float64 (``numerics.safe_row_norms``).
    """

    name = "centered_clipping"
    Params = CenteredClippingParams
    needs = frozenset({"num_samples"})  # used with weighting = "samples"

    @classmethod
    def tolerated_rows(cls, params: CenteredClippingParams, num_clients: int, num_byzantine: int) -> int:
        return num_clients

    def __init__(self, params: CenteredClippingParams) -> None:
        super().__init__(params)
        self.center: torch.Tensor | None = None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        n, d = updates.shape
        weights = client_weights(p.weighting, ctx.num_samples, updates)
        if self.center is None:
            previous = torch.zeros(d, device=updates.device, dtype=updates.dtype)
        else:
            if self.center.shape != (d,):
                raise ValueError(
                    f"centered_clipping: stored centre has shape {tuple(self.center.shape)}, updates have d={d}"
                )
            previous = self.center.to(device=updates.device, dtype=updates.dtype)
        v = previous
        scales = torch.ones(n, device=updates.device, dtype=updates.dtype)
        for _ in range(p.iterations):
            diff = updates - v
            scales = clip_scales_wide(safe_row_norms(diff), p.tau, updates.dtype)
            v = v + (weights * scales) @ diff
            del diff
        if p.momentum > 0:
            v = p.momentum * previous + (1.0 - p.momentum) * v
        self.center = v.detach().clone()
        return AggregationResult(
            update=v,
            weights=_effective(weights, scales),
            info={"clipped": float((scales < 1).sum()), "center_norm": float(torch.linalg.vector_norm(v))},
        )

    def state_dict(self) -> dict[str, Any]:
        return {} if self.center is None else {"center": self.center.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"center"}
        if unknown:
            raise ValueError(f"aggregator '{self.name}' got unknown state keys {sorted(unknown)}")
        center = state.get("center")
        self.center = None if center is None else center.detach().clone()
