"""Tabular data end to end: a Lending-Club-style CSV, one client per US state (the residual reweighting
paper's LOAN federation, §4.1), its three-layer network (App. A.2: 46, 23 and the classes)."""

from pathlib import Path

import pytest

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import run_experiment

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _run(tmp_path, path, *overrides):
    cfg = build_config({}, [
        f"run.output_dir={tmp_path}", "tracking.enabled=false", "data.dataset=csv", f"data.csv_path={path}",
        "data.label_column=loan_status", "data.group_column=addr_state", "data.drop_columns=[id]",
        "partition.scheme=natural", "clients.num_clients=6", "model.hidden=[46, 23]", "clients.lr=0.1",
        "clients.local_epochs=1", "run.rounds=10", *overrides,
    ])
    return run_experiment(cfg)


def test_a_natural_federation_learns_and_a_robust_rule_withstands_the_attack(tmp_path, loan_csv):
    path = loan_csv(rows=1200)
    clean = _run(tmp_path / "clean", path)
    attack = ["threat.fraction=0.2", "threat.attack=sign_flip", "threat.attack_params.scale=10"]
    mean = _run(tmp_path / "mean", path, *attack)
    median = _run(tmp_path / "median", path, *attack, "server.aggregator=median")
    assert clean.summary["acc_last5_mean"] > 0.8  # three classes, the largest holds 37% of the rows
    assert mean.summary["acc_last5_mean"] < 0.6
    assert median.summary["acc_last5_mean"] > mean.summary["acc_last5_mean"] + 0.2


def test_the_readme_tabular_example_runs(tmp_path, monkeypatch):
    """`byzlab run examples/loan-tiny.yaml` from the repository root (its csv_path is relative)."""
    from byzlab.orchestrator.config import load_config

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    cfg = load_config("examples/loan-tiny.yaml", [f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    assert (cfg.data.dataset, cfg.partition.scheme, cfg.server.aggregator) == ("csv", "natural", "median")
    assert run_experiment(cfg).summary["acc_last5_mean"] > 0.7


def test_a_feature_value_backdoor_succeeds_against_fedavg(tmp_path, loan_csv):
    """Residual reweighting App. A.5 on LOAN: the trigger sets features above their maximum and asks for the
    target class. The control run stamps the same trigger on the test rows but poisons no training row: its
    rate is what the trigger alone does to the clean model."""
    path = loan_csv(rows=1200)
    backdoor = ["threat.fraction=0.2", "threat.attack=feature_backdoor", "threat.attack_params.features=[loan_amnt]",
                "threat.attack_params.target=0", "threat.attack_params.local_epochs=5"]
    attacked = _run(tmp_path / "attacked", path, *backdoor)
    control = _run(tmp_path / "control", path, *backdoor, "threat.attack_params.poisoned_per_batch=0")
    assert attacked.metrics.column("backdoor_asr").to_pylist()[-1] >= 0.8
    assert control.metrics.column("backdoor_asr").to_pylist()[-1] <= 0.3
    assert attacked.summary["acc_final"] >= 0.8
