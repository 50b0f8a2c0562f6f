"""A robust rule behind a chain of pre-aggregators (``server.pre_aggregators``), as one :class:`Aggregator`
so the server builds and calls one object: ``build_pipeline([{"name": "nnm"}], "median", {})``.

Order of work in a round (:meth:`Pipeline.__call__`, the base class's):

1. non-finite rows are dropped first, as for every filtering rule (the base class's ``drops_nonfinite``
   handling; a pipeline always drops them, even in front of ``fedavg``, which alone would return a
   non-finite aggregate): NaN or Inf never reaches NNM's distances, the dropped rows get weight 0 and
   ``accepted = False``, and the declared Byzantine count shrinks by the rows dropped;
2. the pre-aggregators, in the configured order, each on the previous one's rows and context;
3. the rule (through its own ``__call__``, so a row that a pre-aggregator made non-finite, e.g. by
   overflow, is dropped by the rule's usual handling).

Mapping back to clients, through the composed mixing matrix ``M`` (n' x n, ``rows = M @ updates``):

* ``weights``: ``w_client = w_rule @ M``, i.e. ``weight_i = sum_o w_o M[o, i]``, then rescaled to the rule's
  total so weights stay shares of the aggregate. After NNM or bucketing (rows of M sum to 1) the rescaling
  is a no-op; after clipping or ARC it gives ``w_i s_i / sum_j w_j s_j`` with s the clip factors, the
  convention of ``norm_bound``. None when the rule reports none (coordinate-wise rules).
* ``accepted``: client i is accepted when it contributes (``M[o, i] > 0``) to at least one row the rule
  accepted. After clipping or ARC that is exactly the rule's decision on the client's own row; after NNM or
  bucketing it means "reached the aggregate through an accepted mixture", so an attacker mixed into an
  accepted honest neighbourhood counts as accepted. None when the rule reports none.

``state_dict`` / ``load_state_dict`` are the rule's (pre-aggregators are stateless). ``check_setting``
checks each pre-aggregator with the rows it receives, then the rule with the rows and Byzantine count
after pre-aggregation (bucketing: ceil(n / s) rows, min(f, buckets) Byzantine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from byzlab.aggregators import registry as rules
from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.pre_aggregators import (
    PreAggregator,
    build_pre_aggregator,
    normalise_spec,
    pre_aggregator_class,
)

_PER_CLIENT_STATE = {"foolsgold": "memory"}
"""Rules whose state is keyed by client id, with the boolean parameter that turns that state on. Such a
rule cannot follow a pre-aggregator whose rows are mixtures of clients."""


def keys_state_by_client(rule_name: str, rule_params: AggregatorParams | dict[str, Any]) -> bool:
    """Whether the rule keeps per-client state (e.g. FoolsGold's histories with ``memory: true``)."""
    switch = _PER_CLIENT_STATE.get(rule_name)
    if switch is None:
        return False
    value = rule_params.get(switch, True) if isinstance(rule_params, dict) else getattr(rule_params, switch, True)
    return bool(value)


def normalise_specs(pre_specs: Sequence[Any]) -> list[dict[str, Any]]:
    """Each entry validated and filled in (``{"name": ..., **params}``); the error names the entry
    (``pre_aggregators[i]: ...``), one line."""
    normalised = []
    for i, spec in enumerate(pre_specs):
        try:
            normalised.append(normalise_spec(spec))
        except ValueError as err:
            raise ValueError(f"pre_aggregators[{i}]: {err}") from None
    return normalised


def check_compatible(pre_specs: Sequence[dict[str, Any]], rule_name: str, rule_params: dict[str, Any]) -> None:
    """Refuse (one-line ValueError) a per-client-state rule behind a pre-aggregator whose rows are not clients."""
    if not keys_state_by_client(rule_name, rule_params):
        return
    for i, spec in enumerate(pre_specs):
        if pre_aggregator_class(spec["name"]).mixes_rows:
            switch = _PER_CLIENT_STATE[rule_name]
            raise ValueError(
                f"pre_aggregators[{i}]: '{spec['name']}' mixes clients' updates, so its rows are not clients, but "
                f"aggregator '{rule_name}' keeps per-client state keyed by client id ({switch}: true); "
                f"set {switch}: false or drop the row-mixing pre-aggregator"
            )


def check_pipeline_setting(
    pre_specs: Sequence[dict[str, Any]], rule_name: str, rule_params: dict[str, Any], num_clients: int,
    num_byzantine: int,
) -> None:
    """The pipeline's ``check_setting``: each pre-aggregator with the rows it receives, then the rule with the
    rows and Byzantine count after pre-aggregation. One-line ValueError."""
    n, f = num_clients, num_byzantine
    for spec in normalise_specs(pre_specs):
        cls = pre_aggregator_class(spec["name"])
        params = cls.Params(**{key: value for key, value in spec.items() if key != "name"})
        cls.check_setting(params, n, f)
        n, f = cls.output_setting(params, n, f)
    rule_cls = rules.aggregator_class(rule_name)
    try:
        rule_cls.check_setting(rule_cls.Params(**rule_params), n, f)
    except ValueError as err:
        if (n, f) == (num_clients, num_byzantine):
            raise
        raise ValueError(f"{err} (after pre-aggregation: {n} rows, f={f}, from n={num_clients})") from None


class PipelineParams(AggregatorParams):
    pre_aggregators: tuple[dict[str, Any], ...] = Field(
        (), description="pre-aggregators in order, each {name: ..., **params}"
    )
    rule: str = Field(..., description="the aggregation rule applied after them")
    rule_params: dict[str, Any] = Field(default_factory=dict, description="the rule's parameters")


class Pipeline(Aggregator):
    """Pre-aggregators followed by a rule (see the module docstring for the order of work and how weights
    and ``accepted`` map back to clients). ``label`` is e.g. ``"nnm+median"``; ``needs`` (per instance) is
    the rule's plus the pre-aggregators' own (bucketing: ``generator``), so ``context_fields(pipeline)`` is
    what the server fills."""

    name = "pipeline"
    Params = PipelineParams
    drops_nonfinite = True

    def __init__(self, pre_aggregators: Sequence[PreAggregator], rule: Aggregator) -> None:
        self.pre_aggregators = tuple(pre_aggregators)
        self.rule = rule
        self.needs = frozenset(rule.needs).union(*(p.needs for p in self.pre_aggregators))
        specs = [{"name": p.name, **p.params.model_dump()} for p in self.pre_aggregators]
        rule_params = rule.params.model_dump()
        check_compatible(specs, rule.name, rule_params)
        super().__init__(PipelineParams(pre_aggregators=tuple(specs), rule=rule.name, rule_params=rule_params))

    @classmethod
    def from_params(cls, params: PipelineParams) -> Pipeline:
        specs = normalise_specs(params.pre_aggregators)
        pres = [build_pre_aggregator(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in specs]
        return cls(pres, rules.build(params.rule, **params.rule_params))

    @property
    def label(self) -> str:
        return "+".join([*(p.name for p in self.pre_aggregators), self.rule.name])

    @classmethod
    def check_setting(cls, params: PipelineParams, num_clients: int, num_byzantine: int) -> None:
        check_pipeline_setting(params.pre_aggregators, params.rule, params.rule_params, num_clients, num_byzantine)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        mixing: torch.Tensor | None = None
        info: dict[str, float] = {}
        names = [p.name for p in self.pre_aggregators]
        for i, pre in enumerate(self.pre_aggregators):
            out = pre(updates, ctx)
            updates, ctx = out.updates, out.ctx
            mixing = out.mixing if mixing is None else out.mixing @ mixing
            prefix = pre.name if names.count(pre.name) == 1 else f"{pre.name}{i}"
            info.update({f"{prefix}_{key}": value for key, value in out.info.items()})
        result = self.rule(updates, ctx)
        if mixing is None:
            return result
        weights = accepted = None
        if result.weights is not None:
            rule_weights = result.weights.to(device=mixing.device, dtype=torch.float64)
            mapped = rule_weights @ mixing
            total, rule_total = mapped.sum(), rule_weights.sum()
            if bool(total > 0) and bool(torch.isfinite(rule_total)):
                mapped = mapped * (rule_total / total)
            weights = mapped.to(result.weights.dtype)
        if result.accepted is not None:
            reached = mixing > 0
            accepted = (result.accepted.to(mixing.device).unsqueeze(1) & reached).any(dim=0)
        info.update(result.info)
        info["pre_rows"] = float(updates.shape[0])
        return AggregationResult(result.update, weights, accepted, info)

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)


def build_pipeline(pre_specs: Sequence[dict[str, Any]], rule_name: str, rule_params: dict[str, Any]) -> Aggregator:
    """The rule behind the pre-aggregators ``pre_specs`` (each ``{"name": ..., **params}``); the plain rule,
    the very object ``build(rule_name, **rule_params)`` returns, when ``pre_specs`` is empty (runs without
    pre-aggregators are unchanged). One-line ValueError for unknown names, bad parameters, or a
    per-client-state rule behind a row-mixing pre-aggregator."""
    rule = rules.build(rule_name, **rule_params)
    if not pre_specs:
        return rule
    specs = normalise_specs(pre_specs)
    check_compatible(specs, rule.name, rule.params.model_dump())
    pres = [build_pre_aggregator(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in specs]
    return Pipeline(pres, rule)


__all__ = [
    "Pipeline",
    "PipelineParams",
    "build_pipeline",
    "check_compatible",
    "check_pipeline_setting",
    "keys_state_by_client",
    "normalise_specs",
]
