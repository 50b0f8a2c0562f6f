"""The fixture plug-in package (tests/fixtures/byzlab_fixture_plugins) is importable in these tests, and
every plug-in a test admits leaves the registries when it ends, so no other test sees it."""

from pathlib import Path

import pytest

from byzlab.orchestrator.config.plugins import FAMILIES

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture(autouse=True)
def plugin_sandbox(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    for registry, _, _ in FAMILIES:
        for attribute in ("_entries", "_origins", "_broken", "_aliases"):
            monkeypatch.setattr(registry, attribute, dict(getattr(registry, attribute)))
    yield
