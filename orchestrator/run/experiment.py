"""One experiment end to end: pre-flight checks, actors, the round loop, storage, tracking and resume
(docs/architecture.md, "Runs, identity, storage").

``prepare`` does every check that can fail on bad input (config, data, partition) and writes nothing;
``execute`` checks the cluster's resources, then opens the run (new or resumed), loops over the rounds and
finishes it. A run interrupted at any point resumes from its last checkpoint with ``resume``/``execute``
and gives the same numbers as an uninterrupted one (randomness is keyed by seed, round and client).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import ray

from byzlab.actors.client import ClientActor
from byzlab.actors.resources import RunResources, check_fits, plan_resources
from byzlab.actors.server import ServerActor
from byzlab.orchestrator.config import ExperimentConfig, build_config, run_id
from byzlab.orchestrator.config.plugins import loaded_plugin_modules, plugin_modules
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.plugins import code_roots, first_line
from byzlab.orchestrator.data.partition import label_histograms, partition_hash
from byzlab.orchestrator.run.storage import RunDirectory, rows_to_table
from byzlab.orchestrator.run.tracking import ParentRun, Tracker
from byzlab.orchestrator.specs.inputs import RunInputs, resolve_inputs

RoundCallback = Callable[[dict[str, Any]], None]
RunState = Literal["new", "resumed", "finished"]  # what executing a prepared run means

# Column types that cannot be inferred when a rule leaves them empty (all None).
_CLIENT_COLUMN_TYPES = {"weight": pa.float64(), "accepted": pa.bool_()}


@dataclass
class Prepared:
    """A run that passed every pre-flight check; nothing has been written yet. ``state``: ``new`` (start,
    replacing an older run with ``force``), ``resumed`` (continue from the last checkpoint) or ``finished``
    (an identical run is complete: nothing to do)."""

    cfg: ExperimentConfig
    inputs: RunInputs
    run_dir: RunDirectory
    state: RunState
    force: bool = False


@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    status: str  # "finished", or "already finished" when an identical run was complete before
    summary: dict[str, float]
    metrics: pa.Table
    mlflow_run_id: str | None


def is_checkpoint_round(cfg: ExperimentConfig, round_index: int) -> bool:
    return round_index % cfg.run.checkpoint_every == 0 or round_index == cfg.run.rounds


def prepare(cfg: ExperimentConfig, *, force: bool = False) -> Prepared:
    """Resolve the run's inputs; decide what running ``cfg`` means given what is on disk."""
    inputs = resolve_inputs(cfg)
    run_dir = RunDirectory(Path(cfg.run.output_dir) / run_id(cfg))
    state: RunState = "new"
    if run_dir.exists() and not force:
        if run_dir.read_state()["status"] != "finished":
            raise ConfigError(
                f"an unfinished run with this config exists in {run_dir.path}; continue it with "
                f"`byzlab run --resume {run_dir.path}` or start over with --force"
            )
        state = "finished"
    return Prepared(cfg, inputs, run_dir, state, force=force)


def prepare_resume(path: str | Path) -> Prepared:
    run_dir = RunDirectory(path)
    if not run_dir.exists():
        raise ConfigError(f"'{path}' is not a byzlab run directory (no run.json)")
    cfg = build_config(run_dir.read_config())
    state: RunState = "finished" if run_dir.read_state()["status"] == "finished" else "resumed"
    return Prepared(cfg, resolve_inputs(cfg), run_dir, state)


def ensure_ray(address: str | None = None, *, log_to_driver: bool = True, plugins: Sequence[str] | None = None) -> None:
    """Join the cluster at ``address`` (or start a local one) unless this process is already connected.
    ``log_to_driver=False`` keeps the workers' output out of this console (a sweep's live table).

    ``plugins``: the modules of the user's components a run names (``plugin_modules(cfg)``; None: every
    component this process imported by import path). When this call starts or joins the cluster, their
    local source is the job's ``runtime_env`` ``py_modules``, so every worker on every node imports the
    driver's code (docs/architecture.md, "Plug-ins"). Each module named is then imported once in a worker:
    one the workers cannot import (a caller's own ``ray.init`` without it) is a ConfigError, one line,
    before anything is written."""
    if not ray.is_initialized():
        roots = code_roots(loaded_plugin_modules() if plugins is None else plugins)
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=log_to_driver,
                 runtime_env={"py_modules": roots} if roots else None)
    if plugins and ray.get_runtime_context().get_actor_id() is None:  # in an actor (a Tune trial) it imported them
        failures = ray.get(_import_in_worker.remote(list(plugins)))
        if failures:
            raise ConfigError(f"plug-in module {failures[0]} does not import in the Ray workers: install it on every "
                              "node or ship it in ray.init(runtime_env={'py_modules': [...]}) (README, \"Your own "
                              "components\")")


@ray.remote(num_cpus=0)
def _import_in_worker(modules: list[str]) -> list[str]:
    """The modules that do not import in this worker, each with the error's first line."""
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # the user's module may raise anything while importing
            failures.append(f"'{module}' ({first_line(err)})")
    return failures


def summarize(metrics: pa.Table) -> dict[str, float]:
    """acc_last5_mean: mean test accuracy over the last five evaluations (SDEA's metric); acc_best: the
    best evaluation (LASA's); acc_final: the last one."""
    accuracies = [a for a in metrics.column("test_accuracy").to_pylist() if a is not None]
    return {
        "acc_last5_mean": statistics.fmean(accuracies[-5:]),
        "acc_best": max(accuracies),
        "acc_final": accuracies[-1],
    }


def _partition_table(prepared: Prepared) -> pa.Table:
    dataset, parts = prepared.inputs.dataset, prepared.inputs.parts
    histograms = label_histograms(dataset.train_y, parts, dataset.num_classes)
    columns = {"client": np.arange(len(parts)), "num_samples": histograms.sum(axis=1)}
    columns.update({f"label_{c}": histograms[:, c] for c in range(histograms.shape[1])})
    return pa.table(columns)


def _tags(prepared: Prepared) -> dict[str, str]:
    cfg, threat = prepared.cfg, prepared.cfg.threat
    declared = "true count" if threat.declared_byzantine is None else str(threat.declared_byzantine)
    return {
        "byzlab.run_id": prepared.run_dir.run_id,
        "byzlab.run_dir": str(prepared.run_dir.path.resolve()),
        "byzlab.dataset": cfg.data.dataset,
        "byzlab.defense": cfg.server.aggregator,
        "byzlab.attack": threat.attack,
        "byzlab.quantity_attack": threat.quantity_attack,
        "byzlab.threat": (
            f"{threat.attack}+{threat.quantity_attack} fraction={threat.fraction:g} "
            f"({len(prepared.inputs.malicious)} malicious) knowledge={threat.knowledge} declared={declared} "
            f"start={threat.start_round} every={threat.every}"
        ),
        "byzlab.partition_hash": partition_hash(prepared.inputs.parts),
    }


@dataclass
class ActiveRun:
    """A run being executed: where it resumes from, its tracker, and the rows since its last checkpoint
    (appended to the run directory as one segment per table at each checkpoint)."""

    prepared: Prepared
    tracker: Tracker | None
    mlflow_run_id: str | None
    start_round: int
    checkpoint: dict[str, Any] | None
    pending_metrics: list[dict[str, Any]] = field(default_factory=list)
    pending_clients: list[pa.Table] = field(default_factory=list)

    def record(self, report: dict[str, Any]) -> None:
        self.pending_metrics.append(report["metrics"])
        self.pending_clients.append(
            pa.table({k: pa.array(v, type=_CLIENT_COLUMN_TYPES.get(k)) for k, v in report["clients"].items()})
        )
        if self.tracker:
            self.tracker.log_round(report["metrics"])

    def persist(self, round_index: int, server_state: dict[str, Any] | None) -> None:
        """Segments first, then the checkpoint: a crash in between leaves a segment that resume drops.
        ``server_state`` None (an interrupted run) stores the pending rows without a checkpoint."""
        run_dir = self.prepared.run_dir
        if self.pending_metrics:
            first_round = int(self.pending_metrics[0]["round"])
            run_dir.append_segment("metrics", first_round, rows_to_table(self.pending_metrics))
            run_dir.append_segment("clients", first_round, pa.concat_tables(self.pending_clients))
        if server_state is None:
            return
        run_dir.save_checkpoint({"round": round_index, "run_id": run_dir.run_id,
                                 "mlflow_run_id": self.mlflow_run_id or "", "server": server_state})
        run_dir.update_state(round=round_index)
        self.pending_metrics, self.pending_clients = [], []


def _open(prepared: Prepared, parent: ParentRun | None) -> ActiveRun:
    """Resume from the last checkpoint, or create the run directory and its MLflow run."""
    cfg, run_dir = prepared.cfg, prepared.run_dir
    if prepared.state == "resumed":
        mlflow_run_id = run_dir.read_state().get("mlflow_run_id")
        checkpoint = run_dir.load_checkpoint()
        start_round = checkpoint["round"] if checkpoint else 0
        run_dir.rewind(start_round)
        tracker = Tracker.reopen(cfg, mlflow_run_id) if mlflow_run_id else None
        run = ActiveRun(prepared, tracker, mlflow_run_id, start_round, checkpoint)
    else:
        if prepared.force and run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        tags = _tags(prepared)
        run_name = f"{cfg.server.aggregator}-{cfg.threat.attack}-{cfg.data.dataset}-{run_dir.run_id[:8]}"
        tracker = Tracker.start(cfg, run_name, tags, parent) if cfg.tracking.enabled else None
        mlflow_run_id = tracker.mlflow_run_id if tracker else None
        run_dir.create(
            cfg.to_dict(),
            {"run_id": run_dir.run_id, "status": "created", "round": 0, "mlflow_run_id": mlflow_run_id,
             "partition_hash": tags["byzlab.partition_hash"], "malicious": prepared.inputs.malicious.tolist(),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )
        run = ActiveRun(prepared, tracker, mlflow_run_id, 0, None)
    if not run_dir.partition_path.is_file():  # absent only if the run was killed right after creation
        run_dir.write_table(run_dir.partition_path, _partition_table(prepared))
    run_dir.update_state(status="running")
    return run


def _launch_actors(inputs: RunInputs, num_actors: int, resources: RunResources) -> tuple[Any, list[Any]]:
    dataset = inputs.dataset
    actor_of_client = np.arange(len(inputs.parts)) % num_actors
    train_x, train_y = ray.put(dataset.train_x), ray.put(dataset.train_y)
    client_spec = ray.put(inputs.client)
    clients = [
        ClientActor.options(num_cpus=resources.client.num_cpus, num_gpus=resources.client.num_gpus).remote(
            client_spec, train_x, train_y, {c: inputs.parts[c] for c in np.flatnonzero(actor_of_client == a)},
            resources.client.num_threads,
        )
        for a in range(num_actors)
    ]
    server = ServerActor.options(num_cpus=resources.server.num_cpus, num_gpus=resources.server.num_gpus).remote(
        inputs.server, clients, actor_of_client, ray.put(dataset.test_x), ray.put(dataset.test_y),
        inputs.server_data, resources.server.num_threads,
    )
    return server, clients


def _loop(run: ActiveRun, server: Any, on_round: RoundCallback | None) -> str:
    """Rounds after the checkpoint to the last; returns the server's device."""
    cfg = run.prepared.cfg
    if run.checkpoint is not None:
        ray.get(server.load_state_dict.remote(run.checkpoint["server"]))
    for round_index in range(run.start_round + 1, cfg.run.rounds + 1):
        report = ray.get(server.run_round.remote(round_index))
        run.record(report)
        if is_checkpoint_round(cfg, round_index):
            run.persist(round_index, ray.get(server.state_dict.remote()))
        if on_round:
            on_round(report["metrics"])
    return ray.get(server.describe.remote())["device"]


def _interrupt(run: ActiveRun, err: BaseException) -> None:
    """Keep the rows of the rounds since the checkpoint (resume drops and reruns them)."""
    run.persist(run.start_round, None)
    run.prepared.run_dir.update_state(status="interrupted")
    if run.tracker:
        run.tracker.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED")


def _finish(run: ActiveRun, device: str) -> RunResult:
    run_dir = run.prepared.run_dir
    metrics = run_dir.join_segments()["metrics"]
    summary = summarize(metrics)
    if run.tracker:  # before the run directory says finished: a run killed in between logs this on resume
        run.tracker.log_summary(summary, tags={"byzlab.device": device})
        run.tracker.log_artifacts(
            [run_dir.config_path, run_dir.partition_path, run_dir.metrics_path, run_dir.clients_path]
        )
        run.tracker.finish("FINISHED")
    run_dir.update_state(status="finished", summary=summary)
    return RunResult(run_dir.path, run_dir.run_id, "finished", summary, metrics, run.mlflow_run_id)


def _stored_result(run_dir: RunDirectory) -> RunResult:
    metrics = run_dir.read_table("metrics")
    return RunResult(run_dir.path, run_dir.run_id, "already finished", summarize(metrics), metrics,
                     run_dir.read_state().get("mlflow_run_id"))


def _reserve(cfg: ExperimentConfig) -> RunResources:
    """The run's actor bundles, checked against the cluster before anything is written."""
    cluster = ray.cluster_resources()
    resources = plan_resources(cfg.run, cluster.get("GPU", 0.0))
    check_fits(resources, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0))
    return resources


def execute(prepared: Prepared, *, on_round: RoundCallback | None = None, address: str | None = None,
            parent: ParentRun | None = None) -> RunResult:
    """Run (or continue) the prepared experiment to its last round; ``on_round`` is called after each
    round's rows (and, on checkpoint rounds, the checkpoint) are written. ``parent``: the sweep's MLflow
    run, for a child run."""
    if prepared.state == "finished":
        return _stored_result(prepared.run_dir)
    ensure_ray(address, plugins=plugin_modules(prepared.cfg))
    resources = _reserve(prepared.cfg)
    run = _open(prepared, parent)
    server, clients = _launch_actors(prepared.inputs, prepared.cfg.run.client_actors, resources)
    try:
        device = _loop(run, server, on_round)
    except BaseException as err:
        _interrupt(run, err)
        raise
    finally:
        for actor in [server, *clients]:
            ray.kill(actor)
    return _finish(run, device)


def run_experiment(cfg: ExperimentConfig, *, force: bool = False, on_round: RoundCallback | None = None,
                   address: str | None = None) -> RunResult:
    return execute(prepare(cfg, force=force), on_round=on_round, address=address)


def resume_experiment(path: str | Path, *, on_round: RoundCallback | None = None,
                      address: str | None = None) -> RunResult:
    return execute(prepare_resume(path), on_round=on_round, address=address)
