"""The benchmark scripts, imported as modules (benchmarks/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _imported(file_name: str) -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location(f"{Path(file_name).stem}_benchmark", BENCHMARKS / file_name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def gpu_benchmark() -> Iterator[ModuleType]:
    yield from _imported("gpu.py")


@pytest.fixture(scope="module")
def overhead() -> Iterator[ModuleType]:
    yield from _imported("overhead.py")


@pytest.fixture(scope="module")
def sweep_overhead() -> Iterator[ModuleType]:
    yield from _imported("sweep_overhead.py")


@pytest.fixture(scope="module")
def fidelity() -> Iterator[ModuleType]:
    yield from _imported("fidelity.py")
