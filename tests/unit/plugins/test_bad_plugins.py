"""A plug-in path that does not import or does not fit its family's contract: one line naming the config
field, the path and what is wrong, before any data is loaded or anything is written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from byzlab.orchestrator import cli

P = "byzlab_fixture_plugins.components:"
BROKEN = "byzlab_fixture_plugins.broken:"
runner = CliRunner()

CASES = [
    (["server.aggregator=nopkg.rules:Rule"],
     "server.aggregator: aggregator 'nopkg.rules:Rule': module 'nopkg.rules' does not import "
     "(ModuleNotFoundError: No module named 'nopkg')"),
    ([f"server.aggregator={P}Missing"],
     f"server.aggregator: aggregator '{P}Missing': module 'byzlab_fixture_plugins.components' has no attribute "
     "'Missing'"),
    (["server.aggregator=byzlab_fixture_plugins.explodes:Rule"],
     "module 'byzlab_fixture_plugins.explodes' does not import (RuntimeError: boom while importing)"),
    ([f"server.aggregator={BROKEN}NotARule"],
     f"server.aggregator: aggregator '{BROKEN}NotARule': must be a subclass of byzlab.aggregators.base.Aggregator, "
     "got class NotARule"),
    ([f"server.aggregator={BROKEN}LazyRule"], "must implement aggregate()"),
    ([f"threat.attack={P}TrimmedMeanRule", "threat.fraction=0.2"],
     f"threat.attack: attack '{P}TrimmedMeanRule': must be a subclass of byzlab.attacks.base.ModelAttack or "),
    ([f"model.name={BROKEN}one_argument_model"],
     f"model.name: model '{BROKEN}one_argument_model': is called as one_argument_model(input_shape, num_classes, "
     "params), but too many positional arguments"),
    ([f"model.name={BROKEN}clashing_model"],
     "parameter 'hidden' is model.hidden of model 'mlp' too, typed tuple"),
    ([f"data.dataset={BROKEN}dataset_without_modality"],
     f"data.dataset: dataset '{BROKEN}dataset_without_modality': needs a modality attribute"),
    ([f"partition.scheme={BROKEN}NOT_CALLABLE"],
     f"partition.scheme: partition scheme '{BROKEN}NOT_CALLABLE': must be a class or a function, got int"),
    ([f"server.pre_aggregators=[{{name: {P}TrimmedMeanRule}}]"],
     "server.pre_aggregators[0].name: pre-aggregator"),
    ([f"model.name={P}tiny_mlp", "model.width=0"], "model.width: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[case[1][:40] for case in CASES])
def test_bad_plugin_is_one_line_and_nothing_is_written(tmp_path, overrides, message):
    output = tmp_path / "results"
    args = ["run", "-o", f"run.output_dir={output}", "-o", "tracking.enabled=false"]
    for override in overrides:
        args += ["-o", override]
    result = runner.invoke(cli.app, args, terminal_width=400)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not output.exists()
    validated = runner.invoke(cli.app, ["validate", str(_empty_config(tmp_path)), *args[1:]], terminal_width=400)
    assert validated.exit_code == 2 and message in validated.stderr


def _empty_config(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("{}\n")
    return path
