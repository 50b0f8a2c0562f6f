"""The structure docs/architecture.md describes, checked: the layer contracts in pyproject.toml, the
installed package list, function sizes, and citations that resolve inside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # byzlab.<name> -> top-level folder
MAX_LINES = 60
PROTOCOL_MAX_LINES = 40  # the round and the run loop read on one screen


def _source_files() -> list[Path]:
    return sorted(p for folder in PACKAGE_DIRS.values() for p in (ROOT / folder).rglob("*.py"))


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def test_import_contracts_hold():
    """Layers, pure tensor code, acyclic folders (import-linter; the output names any broken import)."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_every_folder_with_an_init_is_an_installed_package():
    expected = set()
    for package, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join((package, *relative)))
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == expected


def test_no_function_is_longer_than_a_screen_unless_it_says_why():
    too_long = []
    for path in _source_files():
        for node, lines in _functions(path):
            docstring = ast.get_docstring(node) or ""
            if lines > MAX_LINES and "long because" not in docstring.lower():
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert too_long == []


@pytest.mark.parametrize("path, name", [("actors/server.py", "run_round"), ("orchestrator/run/experiment.py", "execute")])
def test_the_round_and_the_run_fit_on_one_screen(path, name):
    lengths = {node.name: lines for node, lines in _functions(ROOT / path)}
    assert lengths[name] < PROTOCOL_MAX_LINES


def test_citations_stay_inside_the_repository():
    """Docstrings and ready sweep files cite docs/architecture.md and the papers by title, never files
    only this team has; every section of docs/architecture.md they cite exists."""
    outside = re.compile(r"DESIGN\.md|shared/papers|\.\./shared")
    files = _source_files() + sorted((ROOT / "sweeps").glob("*.yaml"))
    assert [str(p.relative_to(ROOT)) for p in files if outside.search(p.read_text())] == []
    headings = set(re.findall(r"^#+ (.+)$", (ROOT / "docs" / "architecture.md").read_text(), flags=re.M))
    cited = {m for p in files for m in re.findall(r'docs/architecture\.md, (?:section )?"([^"]+)"', p.read_text())}
    assert cited - headings == set()


def test_rules_and_attacks_import_without_the_cluster_or_the_upper_layers():
    """`import byzlab.aggregators, byzlab.attacks` in a fresh interpreter loads no Ray, MLflow or Arrow and
    nothing of byzlab above them: the bottom of the stack is usable on its own."""
    probe = ("import sys, byzlab.aggregators, byzlab.attacks; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'pyarrow') "
             "or m.startswith(('byzlab.actors', 'byzlab.sweeps', 'byzlab.orchestrator.')) "
             "and not m.startswith('byzlab.orchestrator.core'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == []
