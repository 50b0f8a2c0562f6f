"""Plug-ins an installed distribution registers under byzlab's entry point groups. The distribution is real
metadata (a ``*.dist-info`` folder with ``entry_points.txt``) on the import path: importlib.metadata finds
it as it finds a pip-installed one; nothing is installed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from byzlab import aggregators
from byzlab.orchestrator import cli
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.config.plugins import install
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.learning.models import MODELS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ENTRY_POINTS = """\
[byzlab.aggregators]
trimmed = byzlab_fixture_plugins.components:TrimmedMeanRule
not_a_rule = byzlab_fixture_plugins.broken:NotARule
fedavg = byzlab_fixture_plugins.components:TrimmedMeanRule
[byzlab.models]
tiny = byzlab_fixture_plugins.components:tiny_mlp
[byzlab.datasets]
blobs = byzlab_fixture_plugins.components:blobs
[byzlab.partitions]
round_robin = byzlab_fixture_plugins.components:round_robin
missing = byzlab_fixture_plugins.components:nowhere
[byzlab.attacks]
shift = byzlab_fixture_plugins.components:ShiftAttack
"""


@pytest.fixture
def distribution(tmp_path, monkeypatch):
    """A distribution 'byzlab-fixture-dist' 1.0 declaring byzlab plug-ins, on sys.path."""
    info = tmp_path / "byzlab_fixture_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: byzlab-fixture-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_entry_points_join_the_registries_marked_and_broken_ones_say_why(distribution):
    install()
    assert aggregators.AGGREGATORS.origin("trimmed").startswith("entry point of byzlab-fixture-dist 1.0")
    assert aggregators.AGGREGATORS.origin("fedavg") is None  # the built-in keeps its name
    broken = aggregators.AGGREGATORS.broken()
    assert "must be a subclass of byzlab.aggregators.base.Aggregator" in broken["not_a_rule"]
    assert "takes the name of a built-in aggregator" in broken["fedavg"]
    listing = CliRunner().invoke(cli.app, ["list", "aggregators"], terminal_width=300).stdout
    assert "trimmed" in listing and "(plug-in: entry point of byzlab-fixture-dist 1.0" in listing
    assert "not_a_rule" in listing and "(plug-in, not loaded)" in listing
    models = CliRunner().invoke(cli.app, ["list", "models"], terminal_width=300).stdout
    assert "tiny" in models and "width=16: hidden units" in models
    with pytest.raises(ConfigError, match="^server.aggregator: aggregator 'not_a_rule': must be a subclass"):
        build_config({}, ["server.aggregator=not_a_rule"])


def test_entry_point_components_validate_by_their_names(distribution):
    install()
    cfg = build_config({}, ["data.dataset=blobs", "model.name=tiny", "model.width=5", "partition.scheme=round_robin",
                            "server.aggregator=trimmed", "threat.attack=shift", "threat.fraction=0.2"])
    assert cfg.model.parameters() == {"width": 5} and cfg.partition.parameters() == {"offset": 0}
    assert MODELS.origin("tiny").startswith("entry point")


def test_entry_points_are_in_the_schema_built_at_import_and_in_byzlab_list(distribution):
    """A fresh interpreter: the entry points load before the schema classes are built from the registries."""
    script = (
        "import json; from byzlab.orchestrator.config.schema import ExperimentConfig, experiment_schema\n"
        "from byzlab.orchestrator.config import build_config\n"
        "names = ExperimentConfig.model_fields['model'].annotation.model_fields['name'].annotation.__args__\n"
        "cfg = build_config({'model': {'name': 'tiny', 'width': 3}, 'partition': {'scheme': 'round_robin'}})\n"
        "print(json.dumps({'base': experiment_schema() is ExperimentConfig, 'tiny': 'tiny' in names,"
        " 'model': cfg.to_dict()['model']}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(distribution), str(FIXTURES)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "base": True, "tiny": True, "model": {"name": "tiny", "width": 3}}
