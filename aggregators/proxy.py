"""Rules that judge updates with a small labeled proxy set held by the server: FLTrust and Sageflow.

Both are the proxy-dataset baselines of SDEA (Appendix C.3, Table 5). The server passes, in the
:class:`RoundContext`, the current global model ``global_params`` [d], the functional forward
``model_fn(flat, x) -> logits`` (model in eval mode, differentiable w.r.t. ``flat``) and the proxy set
``proxy_data = (x, y)``. An update is ``Delta_i = theta_i - theta_global``, so client i's model is
``global_params + updates[i]``.

* ``fltrust`` (Cao et al., NDSS 2021): the server trains from the global model on the proxy ("root") data
  to get its own update g_0, gives client i the trust score TS_i = ReLU(cos(g_i, g_0)), rescales g_i to
  the norm of g_0 and returns sum_i TS_i * (||g_0|| / ||g_i||) g_i / sum_i TS_i.
* ``sageflow`` (Park et al., NeurIPS 2021): entropy-based filtering plus loss-weighted averaging, both
  computed with each client's own model on the proxy set. Sageflow's third part, staleness-aware grouping
  of late (straggler) updates, has no counterpart in synchronous rounds and is not implemented: with every
  update from the current round, Sageflow reduces to its per-group rule ("Eflow"), which is this one.

Both rules are server-side computations on the server's device; the only randomness (FLTrust's
minibatches) is drawn from ``ctx.generator``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext, require_server_inputs
from byzlab.aggregators.numerics import claimed_counts, generator_or_seeded, weighted_rows
from byzlab.aggregators.registry import register


def _require_proxy(
    name: str, updates: torch.Tensor, ctx: RoundContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global model and the proxy set, on the updates' device; a clear ValueError for what is missing."""
    global_params = require_server_inputs(name, updates, ctx, "proxy_data")
    x, y = ctx.proxy_data
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(
            f"aggregator '{name}': proxy_data needs as many labels as inputs, at least one ({len(x)}, {len(y)})"
        )
    return global_params, x.to(updates.device), y.to(updates.device).long()


def _trainable_mask(ctx: RoundContext, d: int, device: torch.device) -> torch.Tensor | None:
    """Bool [d]: True on parameters, False on buffers (BatchNorm running statistics); None if no buffers."""
    buffers = [layer for layer in ctx.layers if layer.kind == "buffer"]
    if not buffers:
        return None
    size = ctx.layers[-1].offset + ctx.layers[-1].numel
    if size != d:
        raise ValueError(f"the layout covers {size} coordinates, the updates have {d}")
    mask = torch.ones(d, dtype=torch.bool, device=device)
    for layer in buffers:
        mask[layer.slice] = False
    return mask


def _unit_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows scaled to unit L2 norm (zero rows stay zero) and the norms [n] in float64.

    Each row is first divided by its largest magnitude, so finite rows of any size (an attacker's 1e30)
    neither overflow nor underflow float32; zero rows have norm 0.
    """
    peak = rows.abs().amax(dim=1)
    safe_peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    unit = rows / safe_peak[:, None]
    rel = torch.linalg.vector_norm(unit, dim=1)
    unit /= torch.where(rel > 0, rel, torch.ones_like(rel))[:, None]
    return unit, peak.double() * rel.double()


# ----------------------------------------------------------------------------------------------------------
# FLTrust


class FLTrustParams(AggregatorParams):
    server_lr: float = Field(
        0.05, gt=0,
        description="SGD learning rate of the server's training on the proxy (root) data; FLTrust trains the "
        "server like the clients, and 0.05 is the clients' default (clients.lr)",
    )
    server_momentum: float = Field(
        0.9, ge=0, lt=1,
        description="SGD momentum of the server's training (torch.optim.SGD convention); 0.9 is the clients' "
        "default (clients.momentum)",
    )
    server_steps: int = Field(
        8, ge=1,
        description="SGD steps of the server's training per round; 8 = the clients' default 2 epochs at "
        "batch 32 over the default 100-sample proxy set",
    )
    batch_size: int = Field(
        32, ge=1,
        description="minibatch size of the server's training (the clients' default clients.batch_size); "
        ">= the proxy set size gives full-batch gradient steps",
    )


def _minibatches(num_samples: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches over successive shuffles of the proxy set (as the clients draw theirs)."""
    done = 0
    while True:
        for batch in torch.randperm(num_samples, generator=generator).split(batch_size):
            if done == steps:
                return
            yield batch
            done += 1


def server_update(
    global_params: torch.Tensor,
    model_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    momentum: float,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """g_0 = theta_after - theta_global: ``steps`` steps of SGD with (heavy-ball) momentum on the
    cross-entropy over (x, y), through ``model_fn`` with autograd w.r.t. the flat parameters. Buffers
    receive no gradient (model_fn detaches them), so g_0 is zero on them."""
    theta = global_params.detach().clone()
    velocity = None
    with torch.enable_grad():
        for batch in _minibatches(len(y), batch_size, steps, generator):
            batch = batch.to(x.device)
            flat = theta.requires_grad_(True)
            loss = F.cross_entropy(model_fn(flat, x[batch]), y[batch])
            (grad,) = torch.autograd.grad(loss, flat)
            theta = theta.detach()
            velocity = grad if velocity is None else velocity.mul_(momentum).add_(grad)
            theta = theta - lr * velocity
    return theta.detach() - global_params


@register
class FLTrust(Aggregator[FLTrustParams]):
    """FLTrust (Cao et al., NDSS 2021): trust bootstrapped from the server's own update on its root data.

    g_0 = the server's update: ``server_steps`` minibatch SGD steps from the global model on the proxy set
    (FLTrust's server runs the clients' local training, ModelUpdate, on its root dataset of 100 samples;
    the defaults copy this project's client recipe, set them to match yours). Minibatches come from
    ``ctx.generator`` (a generator seeded 0 when the context has none). Then
      TS_i = ReLU(cos(g_i, g_0)),   g^_i = (||g_0|| / ||g_i||) g_i,   g = sum_i TS_i g^_i / sum_i TS_i.
    A zero update (or a zero g_0) has no direction and gets trust 0. If every trust is 0 the rule returns
    the zero update (the global model stays), with all clients rejected.

    Buffers (BatchNorm running statistics, ``kind == "buffer"`` in ``ctx.layers``) get no gradient, so g_0
    is zero there: cosines and norms are taken over the trainable coordinates only, and the buffer
    coordinates of the aggregate are the trust-weighted mean of the clients' buffer deltas, unscaled.

    weights = TS / sum(TS) (the coefficients before rescaling); accepted = TS > 0;
    info: trust_mean, server_update_norm, num_accepted.

    Hostile rows (``tolerated_rows``: any number): every update is rescaled to ||g_0|| before the
    trust-weighted mean, so the aggregate's norm is at most ||g_0|| whatever the rows are (Cao et al.:
    normalising the magnitudes of the local updates limits the impact of malicious ones), computed
    scale-free so that rows up to float32's largest value neither overflow nor vanish (:func:`_unit_rows`).
    Buffers are not rescaled (above): there a trusted client's buffer delta enters as sent.
    """

    name = "fltrust"
    Params = FLTrustParams
    needs = frozenset({"global_params", "model_fn", "proxy_data", "generator", "layers"})

    @classmethod
    def tolerated_rows(cls, params: FLTrustParams, num_clients: int, num_byzantine: int) -> int:
        return num_clients

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        global_params, x, y = _require_proxy(self.name, updates, ctx)
        generator = generator_or_seeded(ctx.generator, 0)
        g0 = server_update(
            global_params, ctx.model_fn, x, y, p.server_lr, p.server_momentum, p.server_steps, p.batch_size, generator
        ).to(updates.dtype)

        mask = _trainable_mask(ctx, updates.shape[1], updates.device)
        rows, ref = (updates, g0) if mask is None else (updates[:, mask], g0[mask])
        unit, norms = _unit_rows(rows)
        ref_unit, ref_norm = _unit_rows(ref[None, :])
        cos = (unit @ ref_unit[0]).clamp(-1.0, 1.0)
        trust = torch.where((norms > 0) & (ref_norm > 0), torch.relu(cos), torch.zeros_like(cos))
        total = trust.sum()
        accepted = trust > 0
        info = {
            "trust_mean": float(trust.mean()),
            "server_update_norm": float(ref_norm[0]),
            "num_accepted": float(accepted.sum()),
        }
        if not bool(total > 0):
            zeros = torch.zeros_like(trust)
            return AggregationResult(torch.zeros_like(updates[0]), zeros, accepted, info)

        weights = trust / total
        # sum_i w_i * ||g_0|| * g_i / ||g_i||, in the row's own scale-free form (no overflow)
        scaled = (weights @ unit) * ref_norm[0].to(updates.dtype)
        if mask is None:
            update = scaled
        else:
            update = torch.empty_like(updates[0])
            update[mask] = scaled
            update[~mask] = weighted_rows(weights, updates[:, ~mask])
        return AggregationResult(update, weights, accepted, info)


# ----------------------------------------------------------------------------------------------------------
# Sageflow


class SageflowParams(AggregatorParams):
    entropy_threshold: float = Field(
        1.0, gt=0,
        description="E_th: clients whose mean prediction entropy (nats) on the proxy set is >= E_th are "
        "dropped; 1.0 is the official code's default (options.py --eth, scripts use --eth 1)",
    )
    delta: float = Field(
        1.0, ge=0,
        description="loss exponent: kept client i gets weight n_i / loss_i**delta; 1.0 is the official "
        "code's default (--delta); 0 = plain (sample-weighted) mean of the kept clients",
    )
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="n_i = the clients' claimed sample counts, or 1 for every client"
    )
    eval_batch_size: int = Field(
        1024, ge=1, description="proxy samples per forward pass when evaluating a client's model (memory only)"
    )
    variant: Literal["paper", "sdea_code"] = Field(
        "paper",
        description="paper: Sageflow as Park et al. write it; sdea_code: the SDEA authors' MarsFL SageFlowSever, "
        "which scores the global model instead of each client's, so every client gets the same weight: the "
        "plain mean of the sampled clients' updates",
    )


_MIN_LOSS = 1e-12  # a perfect fit (loss 0) would get an infinite weight


@register
class Sageflow(Aggregator[SageflowParams]):
    """Sageflow's entropy-based filtering and loss-weighted averaging (Park et al., NeurIPS 2021).

    For each client i the server evaluates its model theta_global + Delta_i on the proxy set: E_i = mean
    per-sample entropy of the softmax prediction (nats), L_i = mean cross-entropy. Clients with
    E_i >= ``entropy_threshold`` are dropped (noisy or scaled-down models predict near-uniformly); the
    others are averaged with weights beta_i proportional to n_i / L_i**delta, so confidently wrong models
    count little. Clients with a non-finite entropy or loss are dropped. If no client is kept, the rule
    returns the zero update (the global model stays), as the official code keeps the previous model.

    E_th is absolute (nats): with C classes the maximum entropy is ln C (2.30 for 10 classes). Early in
    training, or on hard tasks, every client model can sit above E_th = 1, and then nothing is kept and the
    global model does not move; raise ``entropy_threshold`` for such settings.

    Staleness-aware grouping (Sageflow's handling of stragglers) is out of scope: rounds are synchronous.
    The official code averages entropies and losses per proxy batch of 64; here they are per-sample means.

    ``variant: sdea_code`` is the Sageflow that SDEA's tables were produced with: the SDEA authors' MarsFL
    code (WenkeHuang/MarsFL, ``Sever/SageFlowSever.py``, ``sever_update``). Its loop over the online clients
    copies each client's model but evaluates ``temp_net``, a copy of the *global* model, on the public set,
    so every client gets the same entropy and loss, hence the same alpha_j = q / L**delta + 1e-5 (E_th 2.2
    and delta 5 fixed in its ``__init__``), and the normalised weights are 1/n whatever the clients sent:
    ``Aggregations/utils/meta_aggregation.py``'s ``agg_parts`` then averages the client models with those
    weights. This variant returns that plain mean of the updates (every client accepted, weight 1/n) without
    evaluating anything. MarsFL runs Sageflow as its method ``FedProxDefense``, whose clients train with
    FedProx's local objective (``CFG.Local.FedProxLocal.mu`` = 0.01): set ``clients.prox_mu: 0.01`` to match
    it. Non-finite rows are still dropped first (byzlab's guard for every filtering rule; MarsFL would
    average them in).

    weights = beta / sum(beta) (0 for dropped clients); accepted = kept (and claiming > 0 samples);
    info: entropy_mean (all clients), loss_mean (kept clients), num_accepted.

    Hostile rows (``tolerated_rows`` = 0): Sageflow judges the model a row makes, not the row's size, and
    faithfully so. A huge row usually makes a model that overflows (dropped: non-finite entropy), predicts
    near-uniformly (dropped by the entropy filter, as long as E_th < ln C) or is confidently wrong (kept with
    weight ~ n_i / loss_i, the loss growing with the row, so its contribution stays of the order of the
    others'). But a row that scales up a model the proxy data likes -- confident and right -- gets a tiny
    loss and most of the weight, whatever its size: no count of such rows is safe. The weighted mean of
    finite rows stays finite (a float32 sum that overflows is redone in float64).
    """

    name = "sageflow"
    Params = SageflowParams
    needs = frozenset({"global_params", "model_fn", "proxy_data", "num_samples"})

    @classmethod
    def tolerated_rows(cls, params: SageflowParams, num_clients: int, num_byzantine: int) -> int:
        return 0

    @torch.no_grad()
    def client_scores(self, updates: torch.Tensor, ctx: RoundContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean prediction entropy and mean cross-entropy loss [n] of each client's model on the proxy set."""
        global_params, x, y = _require_proxy(self.name, updates, ctx)
        n, m = updates.shape[0], len(y)
        entropy = torch.zeros(n, dtype=torch.float64, device=updates.device)
        loss = torch.zeros(n, dtype=torch.float64, device=updates.device)
        for i in range(n):
            params = global_params + updates[i]
            for start in range(0, m, self.params.eval_batch_size):
                xb, yb = x[start : start + self.params.eval_batch_size], y[start : start + self.params.eval_batch_size]
                log_p = F.log_softmax(ctx.model_fn(params, xb).double(), dim=1)
                entropy[i] += torch.special.entr(log_p.exp()).sum()
                loss[i] += F.nll_loss(log_p, yb, reduction="sum")
        return entropy / m, loss / m

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        if p.variant == "sdea_code":
            n = updates.shape[0]
            weights = torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
            accepted = torch.ones(n, dtype=torch.bool, device=updates.device)
            return AggregationResult(weighted_rows(weights, updates), weights, accepted, {"num_accepted": float(n)})
        entropy, loss = self.client_scores(updates, ctx)
        kept = torch.isfinite(entropy) & torch.isfinite(loss) & (entropy < p.entropy_threshold)
        # negative claims count as 0 (like a claim of 0, they are not accepted: log 0 = -inf)
        counts = claimed_counts(ctx.num_samples if p.weighting == "samples" else None, len(entropy), updates.device)
        # beta_i = n_i / L_i**delta, normalised in log space (no overflow for tiny losses or large delta)
        log_beta = counts.log() - p.delta * loss.clamp_min(_MIN_LOSS).log()
        accepted = kept & (counts > 0)
        log_beta = torch.where(accepted, log_beta, torch.full_like(log_beta, -torch.inf))
        finite_entropy = entropy[torch.isfinite(entropy)]
        info = {
            "entropy_mean": float(finite_entropy.mean()) if finite_entropy.numel() else float("nan"),
            "loss_mean": float(loss[kept].mean()) if bool(kept.any()) else float("nan"),
            "num_accepted": float(accepted.sum()),
        }
        if not bool(accepted.any()):
            # nothing kept (or every kept client claims 0 samples): the global model stays
            zeros = torch.zeros(updates.shape[0], dtype=updates.dtype, device=updates.device)
            return AggregationResult(torch.zeros_like(updates[0]), zeros, accepted, info)
        weights = torch.softmax(log_beta, dim=0).to(updates.dtype)
        return AggregationResult(weighted_rows(weights, updates), weights, accepted, info)
