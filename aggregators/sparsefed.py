"""SparseFed (Panda, Mahloujifar, Bhagoji, Chakraborty and Mittal, "SparseFed: Mitigating Model Poisoning
Attacks in Federated Learning with Sparsification", AISTATS 2022): clipped updates, server-side top-k
sparsification of the aggregate, and error feedback.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import Weighting, client_weights, clip_scales_wide, safe_row_norms, weighted_rows
from byzlab.aggregators.registry import register


class SparseFedParams(AggregatorParams):
    clip: float = Field(
        1.0,
        gt=0.0,
        description="L2 bound L on every client update before averaging (Panda et al. leave it as a "
        "required per-experiment flag, max_grad_norm); scale-dependent, like norm_bound's threshold",
    )
    topk_fraction: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="k / d, the fraction of coordinates the server applies each round: 0.7 = LASA's default "
        "sparsification level 1 - k/d = 0.3 (LASA §7.2; LASA states no separate level for its SparseFed "
        "baseline). Panda et al.'s code defaults to k = 50,000 coordinates of a ~6.5M-parameter ResNet-9",
    )
    momentum: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="server ('virtual') momentum rho of Panda et al.'s true top-k mode, V <- rho V + g, with "
        "momentum-factor masking of the sent coordinates; 0 = none (their default virtual_momentum)",
    )
    weighting: Weighting = Field(
        "uniform",
        description="average of the clipped updates: uniform (Panda et al. sum and divide by the number of "
        "workers) or weighted by claimed sample counts",
    )
    variant: Literal["paper", "lasa_code"] = Field(
        "paper",
        description="paper: Panda et al.'s true top-k SparseFed; lasa_code: the LASA authors' baseline, the top "
        "int(topk_fraction·d) coordinates of the plain mean, no clip, no error feedback or momentum",
    )

    @model_validator(mode="after")
    def _code_has_no_state(self) -> "SparseFedParams":
        if self.variant == "lasa_code" and self.momentum > 0:
            raise ValueError("variant 'lasa_code' keeps no momentum across rounds, as the LASA authors' code: "
                             "leave momentum at 0")
        return self


def _keep_top(vector: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
    """Copy the k coordinates of ``vector`` of largest magnitude into ``out``; return their indices."""
    sent = torch.topk(vector.abs(), k, sorted=False).indices
    out[sent] = vector[sent]
    return sent


@register
class SparseFed(Aggregator[SparseFedParams]):
    """SparseFed, "true top-k" variant (Panda et al. 2022: the SparseFed algorithm with the exact top-k in
    place of the count-sketch estimate; the authors' ``true_topk`` mode):

    1. clip every update to L2 norm <= ``clip``: ``x_i <- x_i min(1, L / ||x_i||)``;
    2. average: ``g = sum_i w_i x_i`` (w_i = 1/n by default);
    3. momentum (optional): ``V <- rho V + g``; error feedback: ``E <- E + V`` (``E <- E + g`` for rho = 0);
    4. the update is ``top_k(E)``, the k = round(topk_fraction * d) coordinates of E of largest magnitude
       (the rest are 0); the sent coordinates are zeroed in E (and in V: momentum-factor masking), so what
       was not sent this round stays in the accumulator and is sent in a later round.

    Panda et al.'s general algorithm compresses client updates with a count sketch and unsketches the
    top-k at the server; with exact top-k on the averaged update (their ``true_topk`` mode), which is what
    is implemented here, it is the same rule without the sketch's approximation error.

    Stateful: ``state_dict`` holds the error accumulator ``error`` (and ``velocity`` when rho > 0). Because
    of the accumulator the aggregate is not a function of the round's updates alone: identical inputs x
    return ``top_k(clip(x) + E)`` with E the leftover of earlier rounds (x itself only when
    ``topk_fraction = 1``, ``||x|| <= clip`` and E = 0).

    ``weights``: each client's share of the averaged (pre-sparsification) update ``w_i s_i / sum_j w_j s_j``
    with s_i the clip factor. ``info``: ``clipped``, ``k``, ``error_norm`` (what stays in the accumulator).

    **Paper text or authors' code** (``variant``). ``lasa_code`` is the SparseFed the LASA authors ran as a
    baseline (``JiiahaoXU/LASA``, ``algorithms/defense/sparsefed.py``): ``sparsefed()`` sets ``momentum = None``
    on entry (l.79), so momentum and error start from zero every round and nothing carries over; the update is
    the top ``k = int(com_p·d)`` coordinates (by squared value, l.16-19; byzlab ranks by magnitude, the
    same order) of the plain mean of the updates, with
    ``com_p = 1 - sparsity`` = ``topk_fraction``. It does not clip: their engine clips every client's update
    to its ``clip`` (1.0 on FMNIST and MNIST, 2.0 on FEMNIST) *before* the attack, on every dataset but
    CIFAR, which byzlab's ``clients.update_clip`` reproduces. The variant is stateless (``state_dict`` empty)
    and ``clip`` is not used.

    Hostile rows (``tolerated_rows``: any number): after clipping every row contributes at most ``w_i L``
    in norm, so a round adds at most L to the accumulator whatever the rows are (Panda et al.: clipping
    bounds each attacker's contribution, sparsification then limits which coordinates it reaches). Norms
    that overflow float32 are recomputed in float64 (``numerics.safe_row_norms``).
    """

    name = "sparsefed"
    Params = SparseFedParams
    needs = frozenset({"num_samples"})  # used with weighting = "samples"

    @classmethod
    def tolerated_rows(cls, params: SparseFedParams, num_clients: int, num_byzantine: int) -> int:
        return 0 if params.variant == "lasa_code" else num_clients  # the code's variant: an unclipped mean

    def __init__(self, params: SparseFedParams) -> None:
        super().__init__(params)
        self.error: torch.Tensor | None = None
        self.velocity: torch.Tensor | None = None

    def _buffer(self, stored: torch.Tensor | None, like: torch.Tensor, what: str) -> torch.Tensor:
        if stored is None:
            return torch.zeros_like(like)
        if stored.shape != like.shape:
            raise ValueError(f"sparsefed: stored {what} has shape {tuple(stored.shape)}, updates have d={like.numel()}")
        return stored.to(device=like.device, dtype=like.dtype)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        d = updates.shape[1]
        weights = client_weights(p.weighting, ctx.num_samples, updates)
        if p.variant == "lasa_code":
            return self._authors_code(updates, weights)
        scales = clip_scales_wide(safe_row_norms(updates), p.clip, updates.dtype)
        mixed = weights * scales
        g = mixed @ updates

        error = self._buffer(self.error, g, "error")
        if p.momentum > 0:
            velocity = self._buffer(self.velocity, g, "velocity").mul_(p.momentum).add_(g)
            error.add_(velocity)
        else:
            velocity = None
            error.add_(g)

        k = min(d, max(1, round(p.topk_fraction * d)))
        update = torch.zeros_like(error)
        if k == d:
            update.copy_(error)
            error.zero_()
            if velocity is not None:
                velocity.zero_()
        else:
            sent = _keep_top(error, k, update)
            error[sent] = 0
            if velocity is not None:
                velocity[sent] = 0  # momentum-factor masking
        self.error = error
        self.velocity = velocity
        return AggregationResult(
            update=update,
            weights=mixed / mixed.sum(),
            info={
                "clipped": float((scales < 1).sum()),
                "k": float(k),
                "error_norm": float(torch.linalg.vector_norm(error)),
            },
        )

    def _authors_code(self, updates: torch.Tensor, weights: torch.Tensor) -> AggregationResult:
        """The LASA authors' ``sparsefed``: the top int(fraction·d) coordinates of the mean, nothing kept."""
        mean = weighted_rows(weights, updates)
        k = max(1, int(self.params.topk_fraction * updates.shape[1]))
        update = torch.zeros_like(mean)
        _keep_top(mean, k, update)
        return AggregationResult(update=update, weights=weights, info={"clipped": 0.0, "k": float(k),
                                                                        "error_norm": 0.0})

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.error is not None:
            state["error"] = self.error.detach().cpu().clone()
        if self.velocity is not None:
            state["velocity"] = self.velocity.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"error", "velocity"}
        if unknown:
            raise ValueError(f"aggregator '{self.name}' got unknown state keys {sorted(unknown)}")
        self.error = None if state.get("error") is None else state["error"].detach().clone()
        self.velocity = None if state.get("velocity") is None else state["velocity"].detach().clone()
