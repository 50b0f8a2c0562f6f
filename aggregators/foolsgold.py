"""FoolsGold (Fung, Yoon & Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020;
arXiv:1808.04866 "Mitigating Sybils in Federated Learning Poisoning", 2018).

Sybils that pursue a shared poisoning goal send updates that point the same way round after round, while
honest clients with (non-IID) data of their own drift apart. FoolsGold therefore keeps, for every client, the
sum of all updates it has sent (its *history*) and down-weights clients whose history is too similar to
another client's. Algorithm 1 of the paper, step by step, for the n clients of the round:

1. ``H_i += Δ_i``  (history of client i, keyed by its population id; a client seen for the first time
   starts from 0, a client absent from the round keeps its history untouched);
2. ``cs_ij = cos(H_i, H_j)`` for i != j, ``cs_ii = 0``;  ``v_i = max_j cs_ij``;
3. pardoning: ``cs_ij *= v_i / v_j`` whenever ``v_j > v_i`` (an honest client that merely resembles a sybil
   is not punished as hard as the sybil itself);
4. ``α_i = 1 - max_j cs_ij`` clipped to [0, 1];
5. ``α_i /= max_j α_j`` (the most distinct client gets 1);
6. ``α_i = κ (ln(α_i / (1 - α_i)) + 0.5)`` clipped to [0, 1] (the logit spreads the weights around 0.5);
7. the aggregate is the weighted mean of the round's updates with weights ``α / Σα``.

Edge values of step 6 (as in the authors' code, ``deep-fg/fg/foolsgold.py``): ``α = 1`` would give +inf, so
it is replaced by 0.99 (logit ``κ(ln 99 + 0.5)``, i.e. weight 1 for κ >= 0.2); ``α = 0`` gives ``ln 0 = -inf``
and the client's weight is exactly 0 (no eps is added: a perfect sybil must get nothing). Since cosines are
computed in the updates' precision (float32: ~1e-7 off), ``α < 1e-6`` before the rescaling counts as 0;
otherwise step 5 would blow rounding noise up into weights. When *every* weight is 0 -- every client has a
twin, e.g. all updates identical -- the reference code divides by zero; here the rule falls back to the plain
mean (all clients agree, so the mean is their common update) and reports ``info["fallback_uniform"] = 1``.
Cosines involving an all-zero history are 0.

Choices and departures, all deliberate:

* Similarities are computed among the round's participants only (Algorithm 1 assumes every client reports
  every round, where the two coincide); absent clients' histories are kept, not compared.
* The paper's optional feature-importance weighting of the output layer and the deep-fg restriction to the
  output layer are not used: the whole flat update is compared.
* Weights are normalised to sum to 1, a weighted mean (the reference code averages ``α_i Δ_i`` over n
  instead, which also shrinks the step when many weights are small).
* Without ``ctx.client_ids`` (or with ``memory = False``) there is no way to key histories, so the round's
  updates are used as the histories (the deep-fg code's ``use_memory = False``) and the stored state is
  left untouched.

**Paper text or authors' code** (``variant``). ``residual_code`` is the FoolsGold baseline of the residual
paper's code (``fushuhao6/Attack-Resistant-Federated-Learning``, ``FedAvg/averaging.py`` l.594-661): its
``FoolsGold.aggregate_gradients`` compares the histories of the *output layer's weight* only (the
second-to-last parameter tensor, ``client_grads[i][-2]``; here the last weight layer of ``ctx.layers``), and
returns ``sum_i α_i g_i / n``, the α not normalised. Its clients send their summed gradients and the server
takes one plain SGD step with them at the clients' lr, which with momentum 0 (their setting) is the same as
averaging the updates so. Steps 2-6 are the same code (``foolsgold`` l.594-618); when every weight is 0 their
code divides by zero, here the fallback above applies.

Hostile rows (``tolerated_rows`` = 0). FoolsGold defends against sybils -- clients whose histories point
the same way -- not against a single outlier, and faithfully so: a lone 1e30 row has cosine ~0 with everyone,
is the most distinct client, gets weight 1 (steps 4-6) and passes, so the weighted mean is ~1e30 / n. The
rule keeps this behaviour and reports it: ``info["update_norm_ratio"]`` is ``||update|| / median_i ||x_i||``
(about 1 or below in an ordinary round, ~1e29 with such a row). Exact duplicates (sybils) get weight 0, as
designed. Numerics: a history whose float32 norm overflows (entries beyond ~1e19) is scaled by its largest
entry before normalising, so its cosines are the true ones rather than 0; the weighted mean of finite rows
stays finite (a float32 sum that overflows is redone in float64), and a history that overflows over the
rounds saturates at +-float32's largest value instead of becoming inf.

Memory: the rule stores one float row of length d per client *ever seen* (N_seen x d, in the updates'
dtype and on their device), e.g. 100 clients x 11.2M parameters (ResNet-18) x 4 B = 4.5 GB. Rows are
allocated with geometric growth (capacity doubles, capped at ``ctx.num_clients_total`` when known) so a new
client costs amortised O(d). ``state_dict()`` returns a CPU snapshot (one extra N_seen x d copy while
checkpointing); checkpoints hold plain tensors and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import update_norm_ratio, weighted_rows
from byzlab.aggregators.registry import register

_ALPHA_ONE = 0.99  # what α = 1 is replaced by before the logit (reference code)
_ALPHA_ZERO = 1e-6  # α below this (cosine within float32 rounding of 1) counts as exactly 0


class FoolsGoldParams(AggregatorParams):
    kappa: float = Field(
        1.0, gt=0, description="confidence κ of the logit step, weight = κ(ln(α/(1-α)) + 0.5) clipped to [0, 1]"
        " (Fung et al., Alg. 1; 1 in the paper and the reference code)"
    )
    memory: bool = Field(
        True, description="compare accumulated per-client update histories (Alg. 1) rather than this round's "
        "updates alone; needs ctx.client_ids"
    )
    variant: Literal["paper", "residual_code"] = Field(
        "paper",
        description="paper: Algorithm 1 on whole updates, weighted mean; residual_code: the residual authors' "
        "FoolsGold baseline (similarities of the output layer's weights only, aggregate sum_i alpha_i x_i / n)",
    )


def foolsgold_weights(histories: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """Steps 2-6 of Algorithm 1 on the participants' histories [n, d]: the (unnormalised) weights [n] in
    [0, 1], float64 on the histories' device."""
    norms = torch.linalg.vector_norm(histories, dim=1, keepdim=True)
    if bool(torch.isfinite(norms).all()):
        unit = histories / norms.clamp_min(1e-30)
    else:  # a history beyond ~1e19 per entry: its float32 sum of squares overflowed; scale by the peak first
        peak = histories.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        scaled = histories / peak
        unit = scaled / torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp_min(1e-30)
    cs = (unit @ unit.T).double().clamp(-1.0, 1.0)
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values  # v_i = max_j cs_ij (>= 0: the diagonal 0 is part of the max, as in the paper's code)
    # pardoning: cs_ij *= v_i / v_j where v_j > v_i (then v_j > 0)
    pardon = v.unsqueeze(0) > v.unsqueeze(1)
    ratio = v.unsqueeze(1) / v.unsqueeze(0).clamp_min(1e-300)
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    alpha = torch.where(alpha < _ALPHA_ZERO, torch.zeros_like(alpha), alpha)  # a twin up to float rounding
    top = alpha.max()
    if top <= 0:
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha >= 1.0, torch.full_like(alpha, _ALPHA_ONE), alpha)
    logit = kappa * (torch.log(alpha) - torch.log1p(-alpha) + 0.5)  # α = 0 -> -inf -> weight 0
    return logit.clamp(0.0, 1.0)


def _output_weight(layers, d: int) -> slice:
    """The coordinates of the model's last weight layer (its output layer), or all of them without a layout."""
    weights = [layer for layer in layers if layer.kind == "weight" and layer.numel > 0]
    return weights[-1].slice if weights else slice(0, d)


@register
class FoolsGold(Aggregator[FoolsGoldParams]):
    """FoolsGold: sybil-resistant weighted mean from per-client update histories (see module docstring)."""

    name = "foolsgold"
    Params = FoolsGoldParams
    needs = frozenset({"client_ids", "num_clients_total", "layers"})  # ids with memory, layers with residual_code

    @classmethod
    def tolerated_rows(cls, params: FoolsGoldParams, num_clients: int, num_byzantine: int) -> int:
        return 0  # a lone outlier is the most distinct client: it passes (module docstring, "Hostile rows")

    def __init__(self, params: FoolsGoldParams) -> None:
        super().__init__(params)
        self._row: dict[int, int] = {}  # population id -> row of self._history
        self._history: torch.Tensor | None = None  # [capacity, d]; rows >= len(self._row) are unused zeros

    # ---- history storage -------------------------------------------------------------------------------
    def _rows_for(self, ids: list[int], updates: torch.Tensor, total: int | None) -> torch.Tensor:
        d = updates.shape[1]
        if self._history is not None and self._history.shape[1] != d:
            raise ValueError(
                f"foolsgold: updates have {d} coordinates but the stored history has {self._history.shape[1]}"
            )
        if self._history is None:
            self._history = updates.new_zeros((0, d))
        if self._history.device != updates.device:
            self._history = self._history.to(updates.device)
        new = [i for i in ids if i not in self._row]
        needed = len(self._row) + len(new)
        capacity = self._history.shape[0]
        if needed > capacity:
            grown = max(needed, 2 * capacity, 1)
            if total is not None and total >= needed:
                grown = min(grown, total)
            history = self._history.new_zeros((grown, d))
            history[: len(self._row)] = self._history[: len(self._row)]
            self._history = history
        for i in new:
            self._row[i] = len(self._row)
        return torch.tensor([self._row[i] for i in ids], device=updates.device, dtype=torch.long)

    # ---- the rule --------------------------------------------------------------------------------------
    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        use_history = self.params.memory and ctx.client_ids is not None
        if use_history:
            ids = [int(i) for i in ctx.client_ids.reshape(-1).tolist()]
            if len(ids) != n:
                raise ValueError(f"foolsgold: {n} updates but {len(ids)} client ids")
            if len(set(ids)) != n:
                raise ValueError("foolsgold: a client id occurs twice in one round")
            rows = self._rows_for(ids, updates, ctx.num_clients_total)
            self._history.index_add_(0, rows, updates.to(self._history.dtype))  # step 1
            histories = self._history[rows]
            if not bool(torch.isfinite(histories).all()):  # a sum of hostile rows overflowed: saturate it
                big = torch.finfo(histories.dtype).max
                histories = histories.nan_to_num(posinf=big, neginf=-big)
                self._history[rows] = histories
        else:
            histories = updates
        code = self.params.variant == "residual_code"
        if code:  # the output layer's weight only (averaging.py l.630-636)
            histories = histories[:, _output_weight(ctx.layers, updates.shape[1])]
        alpha = foolsgold_weights(histories, self.params.kappa)
        total = alpha.sum()
        fallback = bool(total <= 0)
        if fallback:
            alpha = torch.ones_like(alpha)
            total = alpha.sum()
        weights = (alpha / (n if code and not fallback else total)).to(updates.dtype)
        update = weighted_rows(weights, updates)
        return AggregationResult(
            update=update,
            weights=weights,
            accepted=weights > 0,
            info={
                "num_accepted": float((weights > 0).sum()),
                "fallback_uniform": float(fallback),
                "history_used": float(use_history),
                "history_clients": float(len(self._row)),
                "update_norm_ratio": update_norm_ratio(update, updates),
            },
        )

    # ---- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``ids`` [N_seen] (int64) and ``history`` [N_seen, d]: a CPU snapshot of every client's summed updates."""
        seen = len(self._row)
        ids = torch.empty(seen, dtype=torch.long)
        for client, row in self._row.items():
            ids[row] = client
        if self._history is None:
            history = torch.zeros((0, 0))
        else:
            history = self._history[:seen].detach().to("cpu", copy=True)
        return {"ids": ids, "history": history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a fresh rule
            self._row, self._history = {}, None
            return
        if set(state) != {"ids", "history"}:
            raise ValueError(f"foolsgold: expected state keys ['history', 'ids'], got {sorted(state)}")
        ids, history = state["ids"], state["history"]
        if ids.dim() != 1 or history.dim() != 2 or history.shape[0] != ids.shape[0]:
            raise ValueError(
                f"foolsgold: state ids {tuple(ids.shape)} and history {tuple(history.shape)} do not match"
            )
        ids_list = [int(i) for i in ids.tolist()]
        if len(set(ids_list)) != len(ids_list):
            raise ValueError("foolsgold: state has duplicate client ids")
        self._row = {client: row for row, client in enumerate(ids_list)}
        self._history = None if history.numel() == 0 and not ids_list else history.clone()

