"""The user's own components in configs (docs/architecture.md, "Plug-ins"): what each family's plug-in must
be (its contract), the entry point group it is registered under, and the config fields that name one.

:func:`install` gives every registry its contract and group and admits the installed distributions'
entry points; the schema module calls it before it builds its classes, so an entry-point plug-in is part
of the schema exactly like a built-in. A name of the form ``package.module:attribute`` in a config is
imported and admitted by :func:`resolve_named` before the config is validated (``build_config``), and
the schema is then extended with it (``schema.experiment_schema``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from byzlab import aggregators, attacks
from byzlab.aggregators.pre_aggregators import PreAggregator
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.plugins import IMPORT_PATH_ORIGIN, is_import_path
from byzlab.orchestrator.core.registry import Registry, params_of
from byzlab.orchestrator.data.datasets import DATASETS, MODALITIES
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.learning.models import MODELS
from byzlab.orchestrator.learning.server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer

# The keys of each section that are not a component's parameter: a plug-in's parameter may not take one.
SECTION_FIELDS = {
    "data": frozenset({"dataset", "data_root", "download"}),
    "partition": frozenset({"scheme"}),
    "model": frozenset({"name"}),
}


def _describe(entry: Any) -> str:
    return f"class {entry.__name__}" if isinstance(entry, type) else type(entry).__name__


def _subclass_of(*bases: type, implements: dict[type, str] | None = None) -> Callable[[Any], None]:
    """A class contract: ``entry`` subclasses one of ``bases`` and overrides the method its base leaves
    abstract (``implements``: base -> method)."""
    names = " or ".join(f"{base.__module__}.{base.__qualname__}" for base in bases)

    def check(entry: Any) -> None:
        base = next((b for b in bases if isinstance(entry, type) and issubclass(entry, b)), None)
        if base is None:
            raise TypeError(f"must be a subclass of {names}, got {_describe(entry)}")
        method = (implements or {}).get(base)
        if method and getattr(entry, method) is getattr(base, method):
            raise TypeError(f"must implement {method}() ({base.__name__} leaves it to the subclass)")

    return check


def _called_as(*arguments: str, keywords: Callable[[Any], dict[str, Any]] = lambda entry: {}) -> Callable[[Any], None]:
    """A function contract: ``entry`` is callable with the family's positional ``arguments`` (and the
    keyword arguments it gets, e.g. its parameters)."""

    def check(entry: Any) -> None:
        if isinstance(entry, type) or not callable(entry):
            raise TypeError(f"must be a function ({', '.join(arguments)}), got {_describe(entry)}")
        try:
            signature = inspect.signature(entry)
        except (TypeError, ValueError):
            return  # a builtin without a signature: nothing to check
        try:
            signature.bind(*arguments, **keywords(entry))
        except TypeError as err:
            raise TypeError(f"is called as {entry.__name__}({', '.join(arguments)}), but {err}") from None

    return check


def _flat_parameters(registry: Registry, section: str) -> Callable[[Any], None]:
    """The plug-in's parameters become flat keys of ``section``: none may be one of the section's own keys,
    and one shared with another component must have its type."""

    def check(entry: Any) -> None:
        for param, info in params_of(entry).model_fields.items():
            if param in SECTION_FIELDS[section]:
                raise ValueError(f"parameter '{param}' would be the key {section}.{param}, which the config uses "
                                 "for something else; rename it")
            for other in registry.names():
                theirs = registry.get(other).Params.model_fields.get(param)
                if theirs is not None and theirs.annotation != info.annotation:
                    raise ValueError(f"parameter '{param}' is {section}.{param} of {registry.what} '{other}' too, "
                                     f"typed {_type_name(theirs.annotation)}, not {_type_name(info.annotation)}; "
                                     "rename it or use that type")

    return check


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _all(*checks: Callable[[Any], None]) -> Callable[[Any], None]:
    def check(entry: Any) -> None:
        for one in checks:
            one(entry)

    return check


def _params_as_keywords(entry: Any) -> dict[str, Any]:
    return {param: None for param in params_of(entry).model_fields}


def _dataset_attributes(entry: Any) -> None:
    modality = getattr(entry, "modality", None)
    if modality not in MODALITIES:
        raise ValueError(f"needs a modality attribute, one of {', '.join(MODALITIES)} (got {modality!r})")
    default = getattr(entry, "default_model", None)
    models = default.values() if isinstance(default, dict) else [default]
    if not models or not all(isinstance(model, str) for model in models):
        raise ValueError(f"needs a default_model attribute naming a model (got {default!r})")
    for model in models:
        MODELS.get(model)  # an import path is admitted here; an unknown name lists the known ones


# Each family: its registry, entry point group and contract. Models come before datasets, whose default
# models they may be.
FAMILIES: tuple[tuple[Registry, str, Callable[[Any], None]], ...] = (
    (aggregators.AGGREGATORS, "byzlab.aggregators",
     _subclass_of(aggregators.Aggregator, implements={aggregators.Aggregator: "aggregate"})),
    (aggregators.PRE_AGGREGATORS, "byzlab.pre_aggregators",
     _subclass_of(PreAggregator, implements={PreAggregator: "transform"})),
    (attacks.ATTACKS, "byzlab.attacks",
     _subclass_of(attacks.ModelAttack, attacks.DataAttack, attacks.QuantityAttack,
                  implements={attacks.ModelAttack: "craft", attacks.QuantityAttack: "claims"})),
    (MODELS, "byzlab.models", _all(
        _called_as("input_shape", "num_classes", "params",
                   keywords=lambda entry: {"vocabulary": ()} if getattr(entry, "takes_vocabulary", False) else {}),
        _flat_parameters(MODELS, "model"))),
    (PARTITION_SCHEMES, "byzlab.partitions", _all(
        _called_as("labels", "num_clients", "rng", keywords=lambda entry: _params_as_keywords(entry) | (
            {"groups": None} if getattr(entry, "needs_groups", False) else {})),
        _flat_parameters(PARTITION_SCHEMES, "partition"))),
    (DATASETS, "byzlab.datasets", _all(
        _called_as("root", "download", "params"), _dataset_attributes, _flat_parameters(DATASETS, "data"))),
    (SERVER_OPTIMIZERS, "byzlab.server_optimizers",
     _subclass_of(ServerOptimizer, implements={ServerOptimizer: "step"})),
)

# The config fields that name a component: (section, key) -> registry.
NAME_FIELDS: dict[tuple[str, str], Registry] = {
    ("data", "dataset"): DATASETS,
    ("partition", "scheme"): PARTITION_SCHEMES,
    ("model", "name"): MODELS,
    ("server", "aggregator"): aggregators.AGGREGATORS,
    ("server", "optimizer"): SERVER_OPTIMIZERS,
    ("threat", "attack"): attacks.ATTACKS,
    ("threat", "quantity_attack"): attacks.ATTACKS,
}


def install() -> None:
    """Give every registry its plug-in contract and entry point group, and admit the installed entry points
    (again: only those not seen yet)."""
    for registry, group, contract in FAMILIES:
        registry.contract, registry.group = contract, group
        registry.load_entry_points()


def _named(tree: dict[str, Any]) -> list[tuple[str, Registry, dict[str, Any], str]]:
    """(field, registry, the dict holding the name, its key) of every component the raw config ``tree``
    names."""
    named = []
    for (section, key), registry in NAME_FIELDS.items():
        body = tree.get(section)
        if isinstance(body, dict) and isinstance(body.get(key), str):
            named.append((f"{section}.{key}", registry, body, key))
    server = tree.get("server")
    specs = server.get("pre_aggregators") if isinstance(server, dict) else None
    for i, spec in enumerate(specs if isinstance(specs, list) else []):
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            named.append((f"server.pre_aggregators[{i}].name", aggregators.PRE_AGGREGATORS, spec, "name"))
    return named


def resolve_named(tree: dict[str, Any]) -> None:
    """Import and admit every component the raw config ``tree`` names by import path, before the config is
    validated (and so before any data is loaded or anything is written): ConfigError, one line naming the
    field, when one does not import or does not fit its family's contract (or names an entry point that
    did not). A path to a component registered already (a built-in, an entry point) is replaced by that
    component's name."""
    for field, registry, holder, key in _named(tree):
        if is_import_path(holder[key]) or holder[key] in registry.broken():
            try:
                holder[key] = registry.canonical(holder[key])
            except ValueError as err:
                raise ConfigError(f"{field}: {err}") from None


def plugin_modules(cfg: Any) -> list[str]:
    """The modules of the plug-ins a validated config names (the model after ``auto`` is resolved): what
    the Ray workers of its run must import."""
    modules = set()
    for _, registry, holder, key in _named(cfg.model_dump()):
        if registry.origin(holder[key]) is not None:
            modules.add(registry.get(holder[key]).__module__)
    return sorted(modules)


def loaded_plugin_modules() -> list[str]:
    """The modules of every plug-in this process admitted by import path."""
    return sorted({registry.get(name).__module__ for registry, _, _ in FAMILIES for name in registry.names()
                   if registry.origin(name) == IMPORT_PATH_ORIGIN})
