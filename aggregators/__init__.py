"""Robust aggregation rules, usable without Ray. Build one by name with :func:`build`."""

from byzlab.aggregators import (  # noqa: F401  (each module registers its rules)
    clipping,
    coordinate,
    dnc,
    fedra,
    foolsgold,
    geomed,
    krum,
    lasa,
    mean,
    pawbrofl,
    proxy,
    residual,
    sdea,
    signguard,
    sparsefed,
    truncate,
)
from byzlab.aggregators import numerics  # noqa: F401  (shared numerics: aggregators.numerics.krum_order, ...)
from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext, finite_rows
from byzlab.aggregators.base import BASE_FIELDS, OPTIONAL_FIELDS, UndeclaredContextField, context_fields
from byzlab.aggregators.registry import AGGREGATORS, aggregator_class, build, names, validate_params
from byzlab.aggregators.pre_aggregators import (
    PRE_AGGREGATORS,
    PreAggregation,
    PreAggregator,
    build_pre_aggregator,
    pre_aggregator_class,
    pre_aggregator_names,
    validate_pre_aggregator,
)
from byzlab.aggregators.pipeline import Pipeline, build_pipeline, check_pipeline_setting

__all__ = [
    "AGGREGATORS",
    "PRE_AGGREGATORS",
    "AggregationResult",
    "Aggregator",
    "AggregatorParams",
    "RoundContext",
    "aggregator_class",
    "finite_rows",
    "build",
    "names",
    "validate_params",
    "BASE_FIELDS",
    "OPTIONAL_FIELDS",
    "UndeclaredContextField",
    "context_fields",
    "numerics",
    "PreAggregation",
    "PreAggregator",
    "build_pre_aggregator",
    "pre_aggregator_class",
    "pre_aggregator_names",
    "validate_pre_aggregator",
    "Pipeline",
    "build_pipeline",
    "check_pipeline_setting",
]
