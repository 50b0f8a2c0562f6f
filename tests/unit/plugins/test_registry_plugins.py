"""The registry's door for plug-ins, on a toy family: a contract, entry points (importlib.metadata's
EntryPoint objects, as a distribution declares them), import paths, and the reasons it gives."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from byzlab.orchestrator.core import plugins
from byzlab.orchestrator.core.plugins import PluginError, code_roots, import_object, is_import_path
from byzlab.orchestrator.core.registry import NoParams, Registry


class GainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gain: float = Field(1.0, gt=0, description="multiplier")


def gain(value, params):
    """Multiply by the gain."""
    return value * params.gain


gain.Params = GainParams


def bare(value, params):
    """No Params: takes none."""
    return value


def _needs_two_arguments(entry):
    if entry.__code__.co_argcount != 2:
        raise TypeError("must take (value, params)")


def _toy() -> Registry:
    registry = Registry("toy", contract=_needs_two_arguments, group="byzlab.toys")

    @registry.register_function("double")
    def double(value, params):
        """Twice the value."""
        return 2 * value

    return registry


def three(a, b, c):
    """Three arguments: refused by the toy contract."""


def test_import_paths_are_admitted_on_first_use_under_their_path():
    registry = _toy()
    path = f"{__name__}:gain"
    entry = registry.get(path)
    assert entry is gain and entry.name == path and registry.origin(path) == "import path"
    assert registry.validate_params(path, {"gain": 3}).gain == 3
    assert registry.get(f"{__name__}:bare").Params is NoParams
    assert registry.names() == sorted(["double", path, f"{__name__}:bare"])
    with pytest.raises(PluginError, match=r"^toy '.*:three': must take \(value, params\)$"):
        registry.get(f"{__name__}:three")
    assert f"{__name__}:three" not in registry.names()


def test_import_errors_are_one_line():
    assert is_import_path("a.b:c") and is_import_path("a:B.c") and not is_import_path("fedavg")
    assert not is_import_path("a.b:") and not is_import_path("a b:c")
    with pytest.raises(PluginError, match=r"^module 'no_such_pkg_x' does not import \(ModuleNotFoundError: No module"):
        import_object("no_such_pkg_x:thing")
    with pytest.raises(PluginError, match=r"^module 'json' has no attribute 'nope'$"):
        import_object("json:nope")
    assert import_object("json:decoder.JSONDecoder") is importlib.import_module("json.decoder").JSONDecoder


def test_entry_points_are_admitted_refused_with_a_reason_and_loaded_once(monkeypatch):
    points = [
        importlib.metadata.EntryPoint("gain", f"{__name__}:gain", "byzlab.toys"),
        importlib.metadata.EntryPoint("three", f"{__name__}:three", "byzlab.toys"),
        importlib.metadata.EntryPoint("double", f"{__name__}:bare", "byzlab.toys"),
        importlib.metadata.EntryPoint("ghost", "no_such_pkg_x:thing", "byzlab.toys"),
        importlib.metadata.EntryPoint("other", f"{__name__}:bare", "byzlab.other_group"),
    ]
    calls = []

    def entry_points(group):
        calls.append(group)
        return [point for point in points if point.group == group]

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", entry_points)
    registry = _toy()
    registry.load_entry_points()
    assert registry.names() == ["double", "gain"] and registry.get("gain") is gain
    assert registry.origin("gain") == f"entry point ({__name__}:gain)" and registry.origin("double") is None
    assert registry.broken() == {
        "double": f"the entry point {__name__}:bare takes the name of a built-in toy",
        "ghost": "the entry point no_such_pkg_x:thing does not load (ModuleNotFoundError: No module named "
                 "'no_such_pkg_x')",
        "three": "must take (value, params)",
    }
    with pytest.raises(PluginError, match=r"^toy 'three': must take \(value, params\)$"):
        registry.get("three")
    registry.load_entry_points()  # again: nothing twice
    assert registry.names() == ["double", "gain"] and calls == ["byzlab.toys", "byzlab.toys"]
    assert registry.canonical(f"{__name__}:gain") == "gain"  # the path to an admitted object is that entry


def test_only_local_source_is_shipped():
    assert code_roots([__name__]) == [str(Path(__file__).resolve())]  # a single-file module: that file
    assert code_roots(["pydantic.main", "json", "byzlab.orchestrator.core.plugins"]) == []
