"""Reading a config: YAML files (``safe_load``), dotted overrides, one-line validation errors."""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

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


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where; a tag (``!!python/...``) is named as refused."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    tag = re.search(r"tag '(?:tag:yaml\.org,2002:)?([^']*)'", problem)
    if isinstance(err, yaml.constructor.ConstructorError) and tag:
        problem = f"the tag '!!{tag.group(1)}' is not allowed (plain YAML values only)"
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply ``"section.key=value"`` to a raw config dict; the value is parsed as YAML (0.3, true, [1, 2])."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' must look like section.key=value")
    if not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"override '{override}': the key '{key.strip()}' has an empty part; write section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except RecursionError:
        raise ConfigError(f"override '{override}': the value is nested too deeply") from None
    except yaml.YAMLError as err:
        hint = "" if isinstance(err, yaml.constructor.ConstructorError) else "; quote the value if it is a string"
        raise ConfigError(f"override '{override}': the value is not valid YAML: {yaml_problem(err)}{hint}") from None
    set_dotted(tree, key.strip(), value)


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


def _known_keys(schema: type[BaseModel], loc: tuple[Any, ...], tree: Any) -> list[str] | None:
    """The keys the section at ``loc`` (an unknown key's location) takes, given the config as written."""
    model, node = schema, tree
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model, node = field.annotation, node.get(part) if isinstance(node, dict) else None
    known = getattr(model, "known_keys", None)
    return known(node) if known else list(model.model_fields)


def _unknown_field(loc: tuple[Any, ...], schema: type[BaseModel] | None, tree: Any) -> str:
    """'unknown field', with the keys the section takes and the closest one when a schema is given."""
    known = _known_keys(schema, loc, tree) if schema is not None else None
    if not known:
        return "unknown field"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown field{hint}; known: {', '.join(known)}"


def format_validation_error(err: ValidationError, schema: type[BaseModel] | None = None, tree: Any = None) -> str:
    """One line per problem (joined by '; '), each naming the field, the complaint and the input. With the
    ``schema`` validated against and the ``tree`` given to it, an unknown key is answered with the known ones."""
    problems = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = _unknown_field(item["loc"], schema, tree)
        elif item["type"] not in ("value_error", "missing"):
            message = f"{message} (got {item['input']!r})"
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The validated config; components named by import path are imported and admitted first, so they
    validate like the built-ins (docs/architecture.md, "Plug-ins")."""
    tree = plain_copy(raw)  # a deep copy that overrides may mutate
    for override in overrides:
        apply_override(tree, override)
    tree = plain_copy(tree)
    resolve_named(tree)
    schema = experiment_schema()
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, schema, tree)) from None


_INT64 = 2**63
MAX_VALUES = 1_000_000  # values in one config, YAML aliases expanded: more is a "billion laughs", not a config
MAX_DEPTH = 50  # nesting of sections, lists and mappings


def plain_copy(value: Any, field: str = "", *, _count: list[int] | None = None, _depth: int = 0) -> Any:
    """A deep copy of a config as written, refusing (ConfigError naming the field) what no config field takes:
    NaN and infinities, integers beyond 64 bits, values that are not plain YAML scalars, lists or mappings
    (dates, bytes, sets), and more than MAX_VALUES values or MAX_DEPTH levels. Mapping keys become strings,
    as in JSON."""
    where = field or "the config"
    count = [0] if _count is None else _count
    count[0] += 1
    if count[0] > MAX_VALUES or _depth > MAX_DEPTH:
        raise ConfigError(f"{where}: the config holds more than {MAX_VALUES} values or {MAX_DEPTH} levels "
                          "(YAML aliases expand into copies)")
    if isinstance(value, dict):
        copied = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float)) and key is not None:
                raise ConfigError(f"{where}: the key {key!r} is not a name")
            name = key if isinstance(key, str) else json.dumps(key)
            copied[name] = plain_copy(item, f"{field}.{name}" if field else name, _count=count, _depth=_depth + 1)
        return copied
    if isinstance(value, (list, tuple)):
        return [plain_copy(item, f"{where}[{i}]", _count=count, _depth=_depth + 1) for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number (got {value})")
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        raise ConfigError(f"{where}: {value} is too large (integers must fit in 64 bits)")
    if value is not None and not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: {type(value).__name__} values are not config values (quote it to give a string)")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file (``safe_load``); ConfigError, one line naming the file, when it is missing, a
    directory, unreadable, not UTF-8, not valid YAML (tags included) or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a directory; give the YAML file itself")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist" if not path.exists() else
                          f"config file '{path}' is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file '{path}' cannot be read: {err.strerror or err}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except RecursionError:
        raise ConfigError(f"config file '{path}' is nested too deeply to be a config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config in ``path`` (or the built-in quickstart when None) with dotted overrides applied."""
    return build_config(read_yaml(path) if path is not None else {}, overrides)
