"""MLflow tracking of one experiment: one MLflow run, resumed (never duplicated) when the run resumes.

The default store is a SQLite file under the output directory with artifacts beside it, both by absolute
path, so runs started from any working directory land in the same place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from byzlab.orchestrator.config import ExperimentConfig, flatten
from byzlab.orchestrator.run.locking import store_lock

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

_MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call
STEP_KEY = "round_seconds"  # logged every round: its history tells which steps are already in MLflow


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"


def tracking_uri(cfg: ExperimentConfig) -> str:
    return cfg.tracking.uri or default_tracking_uri(cfg.run.output_dir)


def _experiment_id(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another run of a sweep
        return client.get_experiment_by_name(name).experiment_id


def store_client(uri: str) -> MlflowClient:
    """A client on the store at ``uri``, the store created and migrated first, one process at a time."""
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the first query creates and migrates a new store
    return client


def open_experiment(cfg: ExperimentConfig) -> tuple[MlflowClient, str]:
    """A client on the config's store and the id of its MLflow experiment (created if needed, with
    artifacts under ``run.output_dir/mlartifacts`` for the default store)."""
    client = store_client(tracking_uri(cfg))
    artifact_root = Path(cfg.run.output_dir) / "mlartifacts" if cfg.tracking.uri is None else None
    with store_lock(tracking_uri(cfg)):  # two first runs must not both create the experiment
        return client, _experiment_id(client, cfg.tracking.experiment, artifact_root)


@dataclass(frozen=True)
class ParentRun:
    """A sweep's MLflow run: experiments tracked under it are its child runs (tag mlflow.parentRunId)."""

    run_id: str
    child_tags: dict[str, str] = field(default_factory=dict)


def find_run(client: MlflowClient, experiment_id: str, byzlab_run_id: str, parent_run_id: str | None) -> str | None:
    """The MLflow run already opened for the experiment ``byzlab_run_id``: a child run of the sweep's
    ``parent_run_id`` (a trial killed before it recorded its MLflow run id continues that run), or, for a
    run of its own, one left RUNNING by a process killed before the run directory recorded it. Continuing
    it leaves no orphan RUNNING run beside the finished one."""
    condition = (f"tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id is not None
                 else "attributes.status = 'RUNNING'")
    runs = client.search_runs([experiment_id], filter_string=f"{condition} and tags.`byzlab.run_id` = '{byzlab_run_id}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def log_params(client: MlflowClient, mlflow_run_id: str, params: dict[str, Any]) -> None:
    batch = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(batch), _MAX_PARAMS_PER_BATCH):
        client.log_batch(mlflow_run_id, params=batch[start : start + _MAX_PARAMS_PER_BATCH])


class Tracker:
    """Logs one experiment's params, per-round metrics (step = round), summary and artifacts."""

    def __init__(self, client: MlflowClient, mlflow_run_id: str) -> None:
        self.client = client
        self.mlflow_run_id = mlflow_run_id
        history = client.get_metric_history(mlflow_run_id, STEP_KEY)
        self.last_logged_round = max((m.step for m in history), default=0)

    @classmethod
    def start(cls, cfg: ExperimentConfig, run_name: str, tags: dict[str, str],
              parent: ParentRun | None = None) -> Tracker:
        """Open the experiment's MLflow run (under ``parent`` when given) and log the flattened config."""
        client, experiment_id = open_experiment(cfg)
        existing = find_run(client, experiment_id, tags["byzlab.run_id"], parent.run_id if parent else None)
        if existing is not None:
            return cls.reopen(cfg, existing)
        if parent is not None:
            tags = {**tags, **parent.child_tags, "mlflow.parentRunId": parent.run_id}
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
        log_params(client, run.info.run_id, flatten(cfg.to_dict()))
        return cls(client, run.info.run_id)

    @classmethod
    def reopen(cls, cfg: ExperimentConfig, mlflow_run_id: str) -> Tracker:
        client = store_client(tracking_uri(cfg))
        client.update_run(mlflow_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return cls(client, mlflow_run_id)

    def log_round(self, metrics: dict[str, Any]) -> None:
        """Log one round's metrics in one batch, unless MLflow already holds that step (a resumed run
        recomputes rounds after its last checkpoint; their values are the same, so they are skipped)."""
        step = int(metrics["round"])
        if step <= self.last_logged_round:
            return
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if key != "round" and value is not None
        ]
        self.client.log_batch(self.mlflow_run_id, metrics=batch)
        self.last_logged_round = step

    def log_summary(self, summary: dict[str, float], tags: dict[str, str] | None = None) -> None:
        """Log the summary once (at step 0): a run killed after logging it and resumed does not log it again."""
        logged = self.client.get_run(self.mlflow_run_id).data.metrics
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if k not in logged]
        self.client.log_batch(
            self.mlflow_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in (tags or {}).items()]
        )

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.mlflow_run_id, str(path))

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.mlflow_run_id, status=status)
