import pytest
import yaml
from typer.testing import CliRunner

from byzlab.orchestrator import cli

runner = CliRunner()


def test_validate_prints_the_resolved_config_and_run_id(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("partition:\n  scheme: shards\nrun:\n  rounds: 3\n")
    result = runner.invoke(cli.app, ["validate", str(path), "-o", "run.seed=4"])
    assert result.exit_code == 0, result.output
    body, _, last = result.stdout.strip().rpartition("\n")
    resolved = yaml.safe_load(body)
    assert resolved["partition"] == {"scheme": "shards", "classes_per_client": 2}
    assert resolved["run"]["seed"] == 4 and resolved["model"]["name"] == "mlp"
    assert last.startswith("# valid; run id ")


@pytest.mark.parametrize("args, message", [
    (["-o", "partition.beta=-1"], "partition.beta: Input should be greater than 0 (got -1)"),
    (["-o", "clients.clients_per_round=50"], "clients_per_round (50) must be at most num_clients (10)"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, args, message):
    path = tmp_path / "exp.yaml"
    path.write_text("{}\n")
    result = runner.invoke(cli.app, ["validate", str(path), *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_list_shows_every_kind_with_parameters():
    aggregators = runner.invoke(cli.app, ["list", "aggregators"], terminal_width=200)
    assert aggregators.exit_code == 0
    assert "fedavg" in aggregators.stdout and "weighting='samples'" in aggregators.stdout
    for what, expected in [("datasets", "fashion-mnist"), ("partitions", "dirichlet"), ("models", "resnet18"),
                           ("datasets", "(default model: mlp)"), ("partitions", "beta=0.5"),
                           ("pre-aggregators", "bucketing"), ("pre-aggregators", "threshold (required)"),
                           ("server-optimizers", "fedyogi"), ("server-optimizers", "beta2=0.99")]:
        result = runner.invoke(cli.app, ["list", what], terminal_width=200)
        assert result.exit_code == 0 and expected in result.stdout
    assert runner.invoke(cli.app, ["list", "widgets"]).exit_code == 2


def test_list_attacks_shows_every_attack_with_kind_and_defaults():
    from byzlab import attacks

    result = runner.invoke(cli.app, ["list", "attacks"], terminal_width=250)
    assert result.exit_code == 0
    for name in attacks.names():
        assert f"{name} " in result.stdout
    for expected in ("(model attack)", "(data attack)", "(quantity attack)", "epsilon=0.5", "sigma=0.5"):
        assert expected in result.stdout


@pytest.mark.usefixtures("ray_cluster")
def test_run_then_rerun_then_resume_a_finished_run(tmp_path):
    args = ["run", "-o", "run.rounds=2", "-o", f"run.output_dir={tmp_path}", "-o", "tracking.enabled=false"]
    first = runner.invoke(cli.app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "done  acc_last5_mean" in first.stdout
    run_dir = next(tmp_path.iterdir())
    assert str(run_dir) in first.stdout.replace("\n", "")
    second = runner.invoke(cli.app, args, terminal_width=200)
    assert second.exit_code == 0 and "already complete" in second.stdout
    resumed = runner.invoke(cli.app, ["run", "--resume", str(run_dir)], terminal_width=200)
    assert resumed.exit_code == 0 and "already complete" in resumed.stdout
    mixed = runner.invoke(cli.app, ["run", "--resume", str(run_dir), "-o", "run.rounds=3"])
    assert mixed.exit_code == 2 and "--resume takes the run directory only" in mixed.stderr
    missing = runner.invoke(cli.app, ["run", "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a byzlab run directory" in missing.stderr


def test_ui_binds_to_localhost_only(tmp_path, monkeypatch):
    missing = runner.invoke(cli.app, ["ui", "--output-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no MLflow store" in missing.stderr
    (tmp_path / "mlflow.db").touch()
    launched = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: launched.append(argv))
    result = runner.invoke(cli.app, ["ui", "--output-dir", str(tmp_path), "--port", "5111"])
    assert result.exit_code == 0, result.output
    argv = launched[0]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5111"
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
