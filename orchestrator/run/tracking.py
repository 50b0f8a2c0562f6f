"""MLflow tracking of one experiment: one MLflow run, resumed (never duplicated) when the run resumes.

The default store is a SQLite file under the output directory with artifacts beside it, both by absolute
path, so runs started from any working directory land in the same place.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from byzlab.orchestrator.config import ExperimentConfig, flatten
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.plugins import first_line
from byzlab.orchestrator.run.locking import SQLITE_PREFIX, sqlite_file, store_lock
from byzlab.orchestrator.run.storage import check_output_dir

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

_MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call
STEP_KEY = "round_seconds"  # logged every round: its history tells which steps are already in MLflow


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"


def tracking_uri(cfg: ExperimentConfig) -> str:
    return cfg.tracking.uri or default_tracking_uri(cfg.run.output_dir)


_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_STORE_SCHEMES = ("sqlite", *_DATABASE_SCHEMES, "http", "https", "databricks")
_CONNECT_SECONDS = 3.0


def check_tracking_uri(cfg: ExperimentConfig) -> None:
    """``tracking.uri`` names a store MLflow can use: ConfigError, one line naming the field, before Ray
    starts or anything is written. Checked without writing: the scheme (MLflow 3 keeps no runs in a bare
    directory), a SQLite file's folder, a database URL's driver, and that an HTTP server's port answers."""
    uri = cfg.tracking.uri
    if not cfg.tracking.enabled or uri is None:  # the default store lies under run.output_dir, checked there
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("", "file"):
        raise ConfigError(f"tracking.uri '{uri}': MLflow 3 keeps no runs in a directory; give sqlite:///<file>.db, "
                          "http(s)://<host>:<port> or a database URL")
    if scheme not in _STORE_SCHEMES:
        raise ConfigError(f"tracking.uri '{uri}': unknown scheme '{parsed.scheme}'; one of {', '.join(_STORE_SCHEMES)}")
    if scheme == "sqlite":
        database = sqlite_file(uri)
        if database is None or database.is_dir():
            raise ConfigError(f"tracking.uri '{uri}': a SQLite store is sqlite:///<relative file> or "
                              "sqlite:////<absolute file>")
        check_output_dir(database.parent, field="tracking.uri")
    elif scheme in _DATABASE_SCHEMES:
        _check_database_driver(uri)
    elif scheme in ("http", "https"):
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "", port), timeout=_CONNECT_SECONDS).close()
        except OSError as err:
            raise ConfigError(f"tracking.uri '{uri}': nothing answers at {parsed.hostname}:{port} "
                              f"({err.strerror or err}); start the MLflow server first") from None


def _check_database_driver(uri: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ConfigError(f"tracking.uri '{uri}' is not a database URL SQLAlchemy knows: {err}") from None
    except ImportError as err:
        raise ConfigError(f"tracking.uri '{uri}': the database driver is not installed ({err}); install it "
                          "with pip") from None


def tracked_run_problem(cfg: ExperimentConfig, mlflow_run_id: str) -> str | None:
    """Why the MLflow run a run directory records cannot be continued (None when it can): its store or the
    run is gone, or the run was deleted. Reads the store without creating or migrating it."""
    uri = tracking_uri(cfg)
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        return f"but the MLflow store {database} is gone"
    try:
        run = MlflowClient(tracking_uri=uri).get_run(mlflow_run_id)
    except SQLAlchemyError as err:
        return f"but the MLflow store {uri} does not open ({first_line(err)[:200]}); move it aside"
    except MlflowException:
        return f"which the MLflow store {uri} does not hold"
    if run.info.lifecycle_stage == "deleted":
        return f"which was deleted in MLflow (undo: MLFLOW_TRACKING_URI={uri} mlflow runs restore --run-id {mlflow_run_id})"
    return None


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
    """A client on the store at ``uri``, the store created and migrated first, one process at a time;
    ConfigError (one line) when the store does not open."""
    with store_lock(uri):
        database = sqlite_file(uri)
        if database is not None and not database.exists():
            _create_sqlite_store(database)
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # the first query creates or migrates the store
        except (MlflowException, SQLAlchemyError) as err:
            raise ConfigError(f"the MLflow store {uri} does not open ({first_line(err)[:200]}); move it aside to "
                              "start a new one (the runs' own directories keep every number)") from None
    return client


def _create_sqlite_store(database: Path) -> None:
    """Create and migrate a new SQLite store in a side file, then rename it into place: MLflow's migrations
    are not atomic in SQLite, and a Ctrl-C midway left a half-migrated store that never opened again."""
    for left in database.parent.glob(f".{database.name}.creating-*"):  # from interrupted attempts
        left.unlink()
    # A new name per attempt: MLflow caches a store (and its open database) per URI.
    partial = database.with_name(f".{database.name}.creating-{uuid.uuid4().hex}")
    MlflowClient(tracking_uri=f"{SQLITE_PREFIX}{partial}").search_experiments(max_results=1)
    os.replace(partial, database)


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
