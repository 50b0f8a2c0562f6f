"""Aggregators by name: ``build("fedavg", weighting="uniform")``."""

from __future__ import annotations

from byzlab.aggregators.base import Aggregator
from byzlab.orchestrator.core.registry import Registry

AGGREGATORS: Registry[Aggregator] = Registry("aggregator")

register = AGGREGATORS.register
names = AGGREGATORS.names
aggregator_class = AGGREGATORS.get
validate_params = AGGREGATORS.validate_params
build = AGGREGATORS.build
