"""Pre-aggregators: transforms of the round's stacked updates applied before a robust rule (the
``server.pre_aggregators`` list; :mod:`byzlab.aggregators.pipeline` chains them with the rule).

A pre-aggregator maps the updates ``U`` (n x d, finite rows, on their own device) and the
:class:`RoundContext` to a :class:`PreAggregation`: new rows ``Y`` (n' x d), the context that describes
those rows, and the *mixing* matrix ``M`` (n' x n, float64) with ``Y = M @ U`` (up to rounding):
``M[o, i]`` is the coefficient of client i's update in output row o. All four rules here are of that
form for data-dependent, fixed choices (neighbourhoods, buckets, clip factors), so ``M`` lets the
pipeline map the rule's per-row weights and decisions back to the clients.

What each tells the next stage (the papers say nothing about the context fields; these are this module's
decisions, with f the declared Byzantine count ``ctx.num_byzantine``):

* ``nnm``: n rows; f unchanged; num_samples and loss_gaps averaged over the row's neighbourhood;
  client_ids None.
* ``bucketing``: ceil(n / s) rows; min(f, buckets) Byzantine; num_samples summed over the bucket,
  loss_gaps averaged; client_ids None.
* ``clipping``, ``arc``: n rows; the context unchanged (the rows still are the clients).

Why:

* Rules that *mix* rows (``mixes_rows = True``: nnm, bucketing) produce rows that no longer are clients:
  ``client_ids`` becomes None so no rule can key per-client state by them, and the pipeline refuses
  (with a one-line error) rules whose state is per client (FoolsGold with ``memory``).
* Bucketing sums the bucket's claimed sample counts (a bucket stands for its members' data); NNM
  averages them over the neighbourhood, exactly like the updates (an NNM row is an average of n - f
  clients, not their union: summing would multiply every count by about n - f).
* Loss gaps are mixed like the updates (``M @ loss_gaps``).
* The population fields (``num_clients_total``, ``num_byzantine_total``), the global model and the
  server's data are passed through unchanged.

Pre-aggregators are stateless; the only randomness (bucketing's permutation) is drawn from
``ctx.generator`` (a stand-in seeded with ``ctx.round`` when the caller gave none, as for DnC), so runs
are reproducible; bucketing declares ``generator`` in its ``needs``. They expect finite rows: the
pipeline drops non-finite rows before the first one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregatorParams, RoundContext, context_fields
from byzlab.aggregators.numerics import clip_scales, generator_or_seeded, pairwise_distances
from byzlab.orchestrator.core.registry import Registry

P = TypeVar("P", bound=AggregatorParams)


@dataclass
class PreAggregation:
    """The output of a pre-aggregator: ``updates`` [n', d], the context for those rows, ``mixing``
    [n', n] float64 on the updates' device (``updates == mixing @ input`` up to rounding; entries >= 0),
    and diagnostics (``info``, un-prefixed; the pipeline prefixes them with the pre-aggregator's name)."""

    updates: torch.Tensor
    ctx: RoundContext
    mixing: torch.Tensor
    info: dict[str, float] = field(default_factory=dict)


class PreAggregator(Generic[P]):
    """Base class, generic in its parameter schema like :class:`Aggregator`. Subclasses set ``name``,
    ``Params``, ``needs`` (the optional :class:`RoundContext` fields they read themselves, e.g. bucketing's
    ``generator``) and implement :meth:`transform`; :meth:`output_setting` when they change the row count
    or the Byzantine count the next stage is told.

    A pre-aggregator rewrites only the per-row context fields the context holds (a context restricted to
    the pipeline's ``needs`` may lack some): the rule after it reads the others, never it."""

    name: ClassVar[str]
    Params: ClassVar[type[AggregatorParams]] = AggregatorParams
    needs: ClassVar[frozenset[str]] = frozenset()
    mixes_rows: ClassVar[bool] = False
    """True when an output row combines several clients' updates (its rows no longer are clients)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        context_fields(cls)  # TypeError unless ``needs`` is a frozenset of optional RoundContext fields

    def __init__(self, params: P) -> None:
        self.params: P = params

    @classmethod
    def check_setting(cls, params: P, num_clients: int, num_byzantine: int) -> None:
        """Raise ValueError (one line: the pre-aggregator, the constraint, the numbers) if it cannot run on
        ``num_clients`` rows of which ``num_byzantine`` are declared Byzantine."""

    @classmethod
    def output_setting(cls, params: P, num_clients: int, num_byzantine: int) -> tuple[int, int]:
        """(rows, declared Byzantine count) the next stage gets from ``num_clients`` rows with
        ``num_byzantine`` declared Byzantine."""
        return num_clients, num_byzantine

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> PreAggregation:
        if updates.ndim != 2 or updates.shape[0] == 0:
            raise ValueError(f"pre-aggregator '{self.name}' needs a non-empty n x d matrix, got shape "
                             f"{tuple(updates.shape)}")
        return self.transform(updates, ctx)

    def transform(self, updates: torch.Tensor, ctx: RoundContext) -> PreAggregation:
        raise NotImplementedError


PRE_AGGREGATORS: Registry[PreAggregator] = Registry("pre-aggregator")

register = PRE_AGGREGATORS.register
pre_aggregator_names = PRE_AGGREGATORS.names
pre_aggregator_class = PRE_AGGREGATORS.get
validate_pre_aggregator = PRE_AGGREGATORS.validate_params


def build_pre_aggregator(name: str, **params) -> PreAggregator:
    """``build_pre_aggregator("bucketing", s=2)``; unknown names and bad parameters are one-line ValueErrors."""
    return PRE_AGGREGATORS.build(name, **params)


def normalise_spec(spec: object) -> dict:
    """``{"name": ..., **params}`` with the parameters validated and defaults filled in
    (``{"name": "bucketing"}`` -> ``{"name": "bucketing", "s": 2}``). One-line ValueError otherwise."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"each entry must be a mapping with a 'name' (one of {', '.join(pre_aggregator_names())}), "
                         f"got {spec!r}")
    params = {key: value for key, value in spec.items() if key != "name"}
    return {"name": spec["name"], **validate_pre_aggregator(spec["name"], params).model_dump()}


# ---------------------------------------------------------------------------------------------- helpers


def row_norms(updates: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """L2 norm of every row [n], float64, accumulated over coordinate chunks (a float64 copy never exceeds
    one chunk; float32 entries as large as 1e38 do not overflow)."""
    total = torch.zeros(updates.shape[0], dtype=torch.float64, device=updates.device)
    for block in updates.split(chunk, dim=1):
        total += block.double().square().sum(dim=1)
    return total.sqrt()


def _mix(indicator: torch.Tensor, updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that average the updates selected by the 0/1 ``indicator`` [n', n]: ``(indicator @ U) / count``
    (a sum then one division, like a mean), and the mixing matrix ``indicator / count`` (float64)."""
    counts = indicator.sum(dim=1, keepdim=True)
    mixed = (indicator.to(updates.dtype) @ updates) / counts.to(updates.dtype)
    return mixed, indicator.double() / counts.double()


def _mixed_rows(t: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor | None:
    """``weights @ t`` for a per-row context tensor, in its own dtype and on its own device."""
    if t is None:
        return None
    return (weights.to(t.device) @ t.to(torch.float64).reshape(-1)).to(t.dtype)


def _mixed_context(ctx: RoundContext, counts: torch.Tensor, gaps: torch.Tensor, **changes: Any) -> RoundContext:
    """The context of mixed rows: ``num_samples`` -> ``counts @ num_samples``, ``loss_gaps`` ->
    ``gaps @ loss_gaps``, ``client_ids`` -> None (rows are not clients), each only where the context holds
    it, plus ``changes`` (base fields)."""
    held = ctx.held_fields()
    mixed: dict[str, Any] = {"client_ids": None} if "client_ids" in held else {}
    if "num_samples" in held:
        mixed["num_samples"] = _mixed_rows(ctx.num_samples, counts)
    if "loss_gaps" in held:
        mixed["loss_gaps"] = _mixed_rows(ctx.loss_gaps, gaps)
    return ctx.with_values(**mixed, **changes)


def _scaled(updates: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``updates * scales[:, None]``; rows with factor 1 come back bit for bit."""
    return updates * scales.to(updates.dtype).unsqueeze(1)


# -------------------------------------------------------------------------------------------------- NNM


class NNMParams(AggregatorParams):
    """NNM has no parameters besides the declared Byzantine count f (from the round context)."""


@register
class NNM(PreAggregator[NNMParams]):
    """Nearest Neighbor Mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by Mixing:
    A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023, the NNM rule): every update is
    replaced by the average of its n - f nearest updates in L2 distance, itself included,
    ``y_i = 1/(n - f) sum_{j in N_i} x_j``. n rows in, n rows out; the next rule is told the same f.

    f is the declared Byzantine count (``ctx.num_byzantine``); with f = 0 every row becomes the mean of all.
    Neighbours are ranked by squared distance (the same order), the row itself first, equal distances
    by the lower row index; distances come from the Gram matrix in float64 (one n x n matrix; the mixed rows
    are one n x n by n x d product). ``check_setting`` needs n > f; in a round with f >= n (client
    sampling) f is clamped to n - 1 and ``info["f_clamped"] = 1``.
    """

    name = "nnm"
    Params = NNMParams
    mixes_rows = True

    @classmethod
    def check_setting(cls, params: NNMParams, num_clients: int, num_byzantine: int) -> None:
        if num_byzantine >= num_clients:
            raise ValueError(f"nnm averages each update's n - f nearest neighbours and needs n > f: "
                             f"n={num_clients}, f={num_byzantine}")

    def transform(self, updates: torch.Tensor, ctx: RoundContext) -> PreAggregation:
        n = updates.shape[0]
        f = min(max(0, ctx.num_byzantine), n - 1)
        k = n - f
        dist = pairwise_distances(updates, 2).double()
        dist.fill_diagonal_(-1.0)  # each row is its own first neighbour, even among exact duplicates
        neighbours = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        indicator = torch.zeros(n, n, dtype=torch.float64, device=updates.device).scatter_(1, neighbours, 1.0)
        mixed, mixing = _mix(indicator, updates)
        out_ctx = _mixed_context(ctx, mixing, mixing)
        return PreAggregation(mixed, out_ctx, mixing, {"f_clamped": float(f < ctx.num_byzantine)})


# -------------------------------------------------------------------------------------------- bucketing


class BucketingParams(AggregatorParams):
    s: int = Field(2, ge=1, description="bucket size: updates averaged per bucket (Karimireddy et al. use s = 2)")


@register
class Bucketing(PreAggregator[BucketingParams]):
    """Bucketing (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022, Algorithm 1): shuffle the n updates with a random permutation, cut them into
    consecutive buckets of s and average each bucket: ceil(n / s) rows.

    * The permutation is drawn from ``ctx.generator`` (on its device, moved to the updates').
    * When s does not divide n the last bucket has n mod s members and is their average (Algorithm 1
      divides by s, which would shrink that bucket towards zero and make it an outlier; EPFL's ByzFL also
      averages the remainder).
    * The rule is told min(f, buckets) Byzantine rows: f attackers taint at most f buckets (the paper's
      analysis; the fraction of tainted rows grows from f/n to at most f s / n, so the rule must tolerate
      that: ``check_setting`` of the pipeline checks the rule with ceil(n / s) rows).
    * A bucket's claimed sample count is the sum of its members', its loss gap their mean, and its rows
      are no longer clients (``client_ids`` None).

    ``check_setting`` refuses s >= n (for n > 1): a single bucket is the plain mean.
    """

    name = "bucketing"
    Params = BucketingParams
    needs = frozenset({"generator"})
    mixes_rows = True

    @classmethod
    def check_setting(cls, params: BucketingParams, num_clients: int, num_byzantine: int) -> None:
        if num_clients > 1 and params.s >= num_clients:
            raise ValueError(f"bucketing: bucket size s={params.s} leaves a single bucket (the plain mean) for "
                             f"n={num_clients} updates per round; use s < n")

    @classmethod
    def output_setting(cls, params: BucketingParams, num_clients: int, num_byzantine: int) -> tuple[int, int]:
        buckets = math.ceil(num_clients / params.s)
        return buckets, min(num_byzantine, buckets)

    def transform(self, updates: torch.Tensor, ctx: RoundContext) -> PreAggregation:
        n, device = updates.shape[0], updates.device
        s = self.params.s
        buckets = math.ceil(n / s)
        generator = generator_or_seeded(ctx.generator, int(ctx.round))
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        bucket_of = torch.empty(n, dtype=torch.long, device=device)
        bucket_of[perm] = torch.arange(n, device=device) // s  # client perm[p] sits in bucket p // s
        indicator = torch.zeros(buckets, n, dtype=torch.float64, device=device)
        indicator[bucket_of, torch.arange(n, device=device)] = 1.0
        mixed, mixing = _mix(indicator, updates)
        out_ctx = _mixed_context(ctx, indicator, mixing, num_byzantine=min(ctx.num_byzantine, buckets))
        return PreAggregation(mixed, out_ctx, mixing, {"buckets": float(buckets)})


# ---------------------------------------------------------------------------------------------- clipping


class ClippingParams(AggregatorParams):
    threshold: float = Field(..., gt=0, allow_inf_nan=False, description="L2 norm every update is clipped to")


@register
class Clipping(PreAggregator[ClippingParams]):
    """Static clipping: every update is scaled to an L2 norm of at most ``threshold``,
    ``y_i = min(1, C / ||x_i||) x_i`` (the static pre-aggregation clipping that Allouah et al., "Boosting
    Robustness by Clipping Gradients in Distributed Learning", 2024, compare ARC against). Rows
    with norm <= C are returned bit for bit; the context is unchanged. ``info["clipped"]``: rows scaled
    down. Norms are accumulated in float64."""

    name = "clipping"
    Params = ClippingParams

    def transform(self, updates: torch.Tensor, ctx: RoundContext) -> PreAggregation:
        c = self.params.threshold
        norms = row_norms(updates)
        scales = clip_scales(norms, c)
        return PreAggregation(_scaled(updates, scales), ctx, torch.diag(scales), {"clipped": float((norms > c).sum())})


# --------------------------------------------------------------------------------------------------- ARC


class ARCParams(AggregatorParams):
    """ARC has no parameters besides the declared Byzantine count f (from the round context)."""


def arc_clipped_count(num_clients: int, num_byzantine: int) -> int:
    """k = floor(2 (f / n) (n - f)), in exact integer arithmetic (0 for f <= 0 or f >= n)."""
    n, f = num_clients, min(max(0, num_byzantine), num_clients)
    return (2 * f * (n - f)) // n if n > 0 else 0


@register
class ARC(PreAggregator[ARCParams]):
    """Adaptive Robust Clipping (Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan, "Boosting Robustness
    by Clipping Gradients in Distributed Learning", 2024 (later versions: "Adaptive Gradient Clipping for
    Robust Federated Learning", ICLR 2025), Algorithm 1, ARC): with k = floor(2 (f / n) (n - f)), the k
    updates of largest L2 norm are clipped to the norm of the (k + 1)-th largest; the others are unchanged.

    f is the declared Byzantine count (``ctx.num_byzantine``); f = 0 gives k = 0 (nothing clipped). k is
    computed in integers (``2 f (n - f) // n``, no float rounding at exact multiples). Implemented as
    ``min(1, tau / ||x_i||)`` for all rows with tau the (k + 1)-th largest norm, which clips exactly the
    rows above tau (rows tied with tau are unchanged either way, so the choice among equal norms does
    not matter). ``info``: ``k``, ``clipped`` (rows actually scaled down), ``threshold`` (tau).
    """

    name = "arc"
    Params = ARCParams

    def transform(self, updates: torch.Tensor, ctx: RoundContext) -> PreAggregation:
        n = updates.shape[0]
        k = arc_clipped_count(n, ctx.num_byzantine)
        norms = row_norms(updates)
        tau = torch.sort(norms, descending=True).values[k]
        clipped = norms > tau
        scales = torch.where(clipped, clip_scales(norms, tau), torch.ones_like(norms))  # tau may be 0
        info = {"k": float(k), "clipped": float(clipped.sum()), "threshold": float(tau)}
        return PreAggregation(_scaled(updates, scales), ctx, torch.diag(scales), info)
