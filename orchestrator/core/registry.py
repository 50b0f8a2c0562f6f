"""Components by name, each with a pydantic ``Params`` schema: the one mechanism behind every registry of
byzlab — aggregators, pre-aggregators, attacks, datasets, partition schemes and models
(docs/architecture.md, "Registries").

An entry is a class or a function with a ``name`` and a ``Params`` schema. Classes carry both as class
attributes (``@registry.register``); functions get them from ``@registry.register_function(name, Params)``.
The schema's field descriptions and the entry's docstring are what ``byzlab list`` prints.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T")


class NoParams(BaseModel):
    """The schema of a component without parameters: any given parameter is an error."""

    model_config = ConfigDict(extra="forbid")


class Registry(Generic[T]):
    def __init__(self, what: str, *, keep_order: bool = False) -> None:
        self.what = what  # "aggregator", "dataset", ...: used in error messages
        self.keep_order = keep_order  # list names in registration order (else alphabetically)
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        if entry.name in self._entries:
            raise ValueError(f"{self.what} '{entry.name}' is registered twice")
        self._entries[entry.name] = entry
        return entry

    def register_function(self, name: str, params: type[BaseModel] = NoParams, **attributes: Any) -> Callable[[T], T]:
        """Decorator: register a function under ``name`` with its parameter schema; ``attributes`` (e.g. a
        dataset's default model) are set on the function too."""

        def decorate(function: T) -> T:
            function.name, function.Params = name, params
            for key, value in attributes.items():
                setattr(function, key, value)
            return self.register(function)

        return decorate

    def names(self, accept: Callable[[T], bool] = lambda entry: True) -> list[str]:
        """The names, in the order ``byzlab list`` and error messages use."""
        names = [name for name, entry in self._entries.items() if accept(entry)]
        return names if self.keep_order else sorted(names)

    def get(self, name: str, accept: Callable[[T], bool] = lambda entry: True, what: str | None = None) -> T:
        entry = self._entries.get(name)
        if entry is None or not accept(entry):
            raise ValueError(f"unknown {what or self.what} '{name}'; known: {', '.join(self.names(accept))}")
        return entry

    def validate_params(self, name: str, params: dict[str, Any]) -> BaseModel:
        """Parse ``params`` with the entry's schema; the error names the parameter and what it allows."""
        entry = self.get(name)
        try:
            return entry.Params(**params)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "?"
            raise ValueError(f"{self.what} '{name}' parameter '{field}': {first['msg']}") from None

    def build(self, name: str, **params: Any) -> T:
        return self.get(name)(self.validate_params(name, params))

    def describe(self, name: str, heading: str = "") -> str:
        """The docstring's first paragraph, then one line per parameter: ``name=default: description``
        (``name (required): description`` for a parameter without default)."""
        entry = self.get(name)
        summary = " ".join((entry.__doc__ or "").strip().split("\n\n")[0].split())
        params = [
            f"{field} (required): {info.description}" if info.is_required()
            else f"{field}={info.get_default(call_default_factory=True)!r}: {info.description}"
            for field, info in entry.Params.model_fields.items()
        ]
        return "\n".join(line for line in [heading, summary, *params] if line)
