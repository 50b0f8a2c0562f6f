"""Components by name, each with a pydantic ``Params`` schema: the one mechanism behind every registry of
byzlab — aggregators, pre-aggregators, attacks, datasets, partition schemes and models
(docs/architecture.md, "Registries").

An entry is a class or a function with a ``name`` and a ``Params`` schema. Classes carry both as class
attributes (``@registry.register``); functions get them from ``@registry.register_function(name, Params)``.
The schema's field descriptions and the entry's docstring are what ``byzlab list`` prints.

The user's own components (docs/architecture.md, "Plug-ins") join a registry as entries like the built-ins:
those installed distributions declare under the registry's entry point ``group`` when
:meth:`Registry.load_entry_points` runs, and one named by import path (``"mypkg.rules:MyRule"``) the first
time that name is asked for, in whichever process asks (the driver, a Ray worker). Either is admitted only
if the family's ``contract`` holds, and is registered under the name the config uses.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from byzlab.orchestrator.core import plugins
from byzlab.orchestrator.core.plugins import PluginError

T = TypeVar("T")


class NoParams(BaseModel):
    """The schema of a component without parameters: any given parameter is an error."""

    model_config = ConfigDict(extra="forbid")


def params_of(entry: Any) -> type[BaseModel]:
    """An entry's parameter schema; NoParams for a plug-in function that declares none."""
    return getattr(entry, "Params", NoParams)


Contract = Callable[[Any], None]  # raises TypeError / ValueError saying what a plug-in lacks


class Registry(Generic[T]):
    def __init__(self, what: str, *, keep_order: bool = False, contract: Contract | None = None,
                 group: str | None = None) -> None:
        self.what = what  # "aggregator", "dataset", ...: used in error messages
        self.keep_order = keep_order  # list names in registration order (else alphabetically)
        self.contract = contract  # what a plug-in of this family must be (checked before it is admitted)
        self.group = group  # the entry point group of its plug-ins ("byzlab.aggregators"), if any
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # plug-in name -> where it came from (built-ins have none)
        self._broken: dict[str, str] = {}  # entry point name -> why it could not be admitted
        self._aliases: dict[str, str] = {}  # import path -> the name its object is registered under

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
        """The entry ``name``; an import path not registered yet is imported and admitted first (one whose
        object is registered already, a built-in or an entry point, is that entry: see ``canonical``)."""
        entry = self._entries.get(self._aliases.get(name, name))
        if entry is None and name in self._broken:
            raise PluginError(f"{self.what} '{name}': {self._broken[name]}")
        if entry is None and plugins.is_import_path(name):
            entry = self._import(name)
        if entry is None or not accept(entry):
            raise ValueError(f"unknown {what or self.what} '{name}'; known: {', '.join(self.names(accept))}")
        return entry

    def add_plugin(self, name: str, entry: Any, origin: str) -> T:
        """Admit the user's component ``entry`` under ``name`` (the name configs use): a function without a
        ``Params`` schema takes no parameters (NoParams); the family's contract must hold; its defaults
        stay out of resolved configs (``record_defaults = False``), so installing a plug-in changes no
        run id. PluginError (one line: the name and what is wrong) otherwise."""
        for known, registered in self._entries.items():
            if registered is entry:
                raise PluginError(f"{self.what} '{name}': it is the registered {self.what} '{known}' already")
        self.check_plugin(name, entry)
        try:
            entry.Params, entry.name, entry.record_defaults = params_of(entry), name, False
        except AttributeError as err:
            raise PluginError(f"{self.what} '{name}': cannot carry its name and Params ({err})") from None
        self._origins[name] = origin
        return self.register(entry)

    def check_plugin(self, name: str, entry: Any) -> None:
        """PluginError (one line) unless ``entry`` can be a component of this family: a class or function,
        a pydantic ``Params`` schema (or none), and the family's contract."""
        try:
            if not callable(entry):
                raise TypeError(f"must be a class or a function, got {type(entry).__name__}")
            params = params_of(entry)
            if not (isinstance(params, type) and issubclass(params, BaseModel)):
                raise TypeError(f"its Params must be a pydantic BaseModel class, got {params!r}")
            if self.contract is not None:
                self.contract(entry)
        except (TypeError, ValueError, AttributeError) as err:
            raise PluginError(f"{self.what} '{name}': {err}") from None

    def _import(self, name: str) -> T:
        try:
            entry = plugins.import_object(name)
        except PluginError as err:
            raise PluginError(f"{self.what} '{name}': {err}") from None
        for known, registered in self._entries.items():
            if registered is entry:
                self._aliases[name] = known
                return registered
        return self.add_plugin(name, entry, plugins.IMPORT_PATH_ORIGIN)

    def canonical(self, name: str) -> str:
        """The name the entry ``name`` is registered under: ``name`` itself, or the built-in or entry point
        an import path's object already is (``"byzlab.aggregators.mean:FedAvg"`` -> ``"fedavg"``)."""
        self.get(name)
        return self._aliases.get(name, name)

    def load_entry_points(self) -> None:
        """Admit the plug-ins installed distributions declare under ``group``. One that does not load or
        does not fit is kept out, with the reason (``broken``: ``byzlab list`` shows it, and a config naming
        it gets it as its error), so one broken distribution never stops the others."""
        if self.group is None:
            return
        for point in plugins.entry_points(self.group):
            if point.name in self._origins or point.name in self._broken:
                continue  # admitted (or refused) already
            if point.name in self._entries:
                self._broken[point.name] = f"the entry point {point.value} takes the name of a built-in {self.what}"
                continue
            try:
                self.add_plugin(point.name, point.load(), plugins.entry_point_origin(point))
            except PluginError as err:
                self._broken[point.name] = str(err).removeprefix(f"{self.what} '{point.name}': ")
            except Exception as err:  # the distribution's module raised while importing
                self._broken[point.name] = f"the entry point {point.value} does not load ({plugins.first_line(err)})"

    def origin(self, name: str) -> str | None:
        """Where plug-in ``name`` came from (``import path``, ``entry point of dist 1.0 (...)``); None for
        a built-in."""
        return self._origins.get(name)

    def broken(self) -> dict[str, str]:
        """Entry points that were refused, by name: why."""
        return dict(self._broken)

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
