"""Reading a config: YAML files (``safe_load``), dotted overrides, one-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from byzlab.orchestrator.config.plugins import resolve_named
from byzlab.orchestrator.config.schema import ExperimentConfig, experiment_schema
from byzlab.orchestrator.core.errors import ConfigError


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply ``"section.key=value"`` to a raw config dict; the value is parsed as YAML (0.3, true, [1, 2])."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' must look like section.key=value")
    set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(tree, "partition.beta", 0.3)`` sets ``tree["partition"]["beta"]``, creating sections."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def format_validation_error(err: ValidationError) -> str:
    """One line per problem (joined by '; '), each naming the field, the complaint and the input."""
    problems = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] not in ("value_error", "missing"):
            message = f"{message} (got {item['input']!r})"
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The validated config; components named by import path are imported and admitted first, so they
    validate like the built-ins (docs/architecture.md, "Plug-ins")."""
    tree = json.loads(json.dumps(raw))  # a deep copy that overrides may mutate
    for override in overrides:
        apply_override(tree, override)
    resolve_named(tree)
    try:
        return experiment_schema().model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config in ``path`` (or the built-in quickstart when None) with dotted overrides applied."""
    return build_config(read_yaml(path) if path is not None else {}, overrides)
