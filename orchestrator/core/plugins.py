"""Finding the user's own components (docs/architecture.md, "Plug-ins"): an object named by import path in a
config (``model.name: "mypkg.models:build"``), or one that an installed distribution registers under a
Python entry point group (``byzlab.aggregators``, ``byzlab.models``, ...).

This module imports them and says in one line what went wrong (:class:`PluginError`); a
:class:`~byzlab.orchestrator.core.registry.Registry` admits them under their name once its family's
contract holds. :func:`code_roots` names the local source a Ray job ships so its workers import the same
code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

from byzlab.orchestrator.core.errors import ConfigError

# "package.module:attribute" (the attribute may be dotted: "pkg.mod:Outer.build"); the form entry points use.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

ENTRY_POINT_ORIGIN = "entry point"
IMPORT_PATH_ORIGIN = "import path"


class PluginError(ConfigError):
    """A plug-in that does not import or does not fit its family's contract, said in one line."""


def is_import_path(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:attribute`` (built-in names never hold a colon)."""
    return isinstance(name, str) and _IMPORT_PATH.match(name) is not None


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def import_object(path: str) -> Any:
    """The object ``path`` (``"package.module:attribute"``) names; :class:`PluginError` (one line) when the
    module does not import or lacks the attribute."""
    module_name, _, attribute = path.partition(":")
    if not is_import_path(path):
        raise PluginError(f"'{path}' is not an import path of the form package.module:attribute")
    if module_name == "__main__":
        raise PluginError("the Ray workers cannot import __main__; define it in an importable module")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:  # anything the user's module raises while importing is the user's error to read
        raise PluginError(f"module '{module_name}' does not import ({first_line(err)})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise PluginError(f"module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    return target


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points installed distributions declare in ``group``, by name (one per name: the first)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for point in importlib.metadata.entry_points(group=group):
        found.setdefault(point.name, point)
    return [found[name] for name in sorted(found)]


def entry_point_origin(point: importlib.metadata.EntryPoint) -> str:
    """``"entry point of <distribution> <version>"``, as ``byzlab list`` shows it."""
    dist = getattr(point, "dist", None)
    owner = f" of {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"{ENTRY_POINT_ORIGIN}{owner} ({point.value})"


def component(params: type | None = None, **attributes: Any) -> Callable[[Any], Any]:
    """Decorator for a plug-in function: set its parameter schema (``Params``) and its family's attributes
    (a dataset's ``default_model`` and ``modality``, a partition's ``needs_groups``) without registering
    it anywhere; the config names it by import path, or an entry point registers it::

        @component(BlobParams, default_model="mlp", modality="tabular")
        def blobs(root, download, params): ...
    """

    def decorate(function: Any) -> Any:
        if params is not None:
            function.Params = params
        for key, value in attributes.items():
            setattr(function, key, value)
        return function

    return decorate


def _installed_prefixes() -> list[Path]:
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(site.getusersitepackages())
    return [Path(p).resolve() for p in paths if p]


def code_roots(modules: Iterable[str]) -> list[str]:
    """The local source of ``modules``: the directory of each one's top-level package (or its single file),
    for a Ray ``runtime_env`` ``py_modules`` list. Installed code (site-packages, the standard library) and
    byzlab itself are left out: they are installed on every node or nowhere, never shipped."""
    installed = _installed_prefixes()
    roots: list[str] = []
    for top in sorted({name.split(".")[0] for name in modules} - {"byzlab", "__main__"}):
        module = sys.modules.get(top) or importlib.import_module(top)
        candidates = list(getattr(module, "__path__", []) or []) or [getattr(module, "__file__", None)]
        for candidate in filter(None, candidates):
            path = Path(candidate).resolve()
            if path.exists() and not any(path.is_relative_to(prefix) for prefix in installed):
                roots.append(os.fspath(path))
    return roots
