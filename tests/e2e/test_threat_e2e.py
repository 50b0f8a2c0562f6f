"""The threat model end to end on digits: FedAvg collapses under model attacks, a backdoor succeeds, and
the threat model is recorded in MLflow."""

import pytest
from mlflow import MlflowClient

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import run_experiment
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.orchestrator.run.tracking import default_tracking_uri
from byzlab.orchestrator.specs.threat import draw_malicious


def _attacked(tmp_path, *overrides):
    cfg = build_config({}, [f"run.output_dir={tmp_path}", "threat.fraction=0.2", "tracking.enabled=false", *overrides])
    return run_experiment(cfg)


@pytest.mark.usefixtures("ray_cluster")
def test_fedavg_collapses_under_byzmean_and_scaled_sign_flip(tmp_path):
    baseline = _attacked(tmp_path)
    clients = RunDirectory(baseline.run_dir).read_table("clients").to_pandas()
    drawn = draw_malicious(0, 10, 0.2)
    assert sorted(clients.loc[clients["malicious"], "client"].unique()) == drawn.tolist()
    assert baseline.summary["acc_final"] >= 0.85
    # ByzMean makes the mean of all updates equal the first group's LIE vector; with the z derived from
    # n = 10, f = 2 (0.25) FedAvg hardly moves, with z = 2 it is driven off the benign mean every round.
    byzmean = _attacked(tmp_path, "threat.attack=byzmean", "threat.attack_params.base_params.z=2")
    sign_flip = _attacked(tmp_path, "threat.attack=sign_flip", "threat.attack_params.scale=4")
    for attacked in (byzmean, sign_flip):
        assert attacked.summary["acc_last5_mean"] <= 0.3
    assert byzmean.metrics.column("dist_to_honest_mean").to_pylist()[0] > 5 * (
        baseline.metrics.column("dist_to_honest_mean").to_pylist()[0])


@pytest.mark.usefixtures("ray_cluster")
def test_backdoor_succeeds_against_fedavg_and_the_threat_model_is_recorded(tmp_path):
    result = _attacked(tmp_path, "threat.attack=backdoor", "tracking.enabled=true")
    asr = result.metrics.column("backdoor_asr").to_pylist()
    assert asr[-1] >= 0.9
    assert result.summary["acc_final"] >= 0.85

    run = MlflowClient(default_tracking_uri(tmp_path)).get_run(result.mlflow_run_id)
    assert run.data.params["threat.attack"] == "backdoor"
    assert run.data.params["threat.attack_params.target"] == "2"
    assert run.data.params["threat.knowledge"] == "omniscient"
    assert run.data.tags["byzlab.attack"] == "backdoor"
    assert "fraction=0.2 (2 malicious)" in run.data.tags["byzlab.threat"]
    assert run.data.metrics["backdoor_asr"] == asr[-1]
