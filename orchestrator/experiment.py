"""One experiment end to end: pre-flight checks, actors, the round loop, storage, tracking and resume.

``prepare`` does every check that can fail on bad input (config, data, partition) and writes nothing;
``execute`` checks the cluster's resources, then creates the run directory and runs the rounds. A run
interrupted at any point resumes from its last checkpoint with ``resume``/``execute`` and gives the same
numbers as an uninterrupted one (randomness is keyed by seed, round and client; see ``seeding``).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray

from actors.adversary import draw_malicious
from actors.client import ClientActor
from actors.resources import check_fits, plan_resources
from actors.server import ServerActor
from orchestrator.config import ConfigError, ExperimentConfig, build_config, run_id
from orchestrator.datasets import Dataset, load_dataset
from orchestrator.partition import PARTITIONERS, label_histograms, partition_hash
from orchestrator.seeding import Stream, numpy_rng
from orchestrator.server_data import ServerData, prepare_server_data
from orchestrator.storage import RunDirectory, rows_to_table
from orchestrator.tracking import ParentRun, Tracker

RoundCallback = Callable[[dict[str, Any]], None]

# Column types that cannot be inferred when a rule leaves them empty (all None).
_CLIENT_COLUMN_TYPES = {"weight": pa.float64(), "accepted": pa.bool_()}


@dataclass
class Prepared:
    """A run that passed every pre-flight check; nothing has been written yet."""

    cfg: ExperimentConfig
    dataset: Dataset
    parts: list[np.ndarray]
    malicious: np.ndarray
    server_data: ServerData
    run_dir: RunDirectory
    resuming: bool = False
    finished: bool = False
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


def make_partition(cfg: ExperimentConfig, labels: np.ndarray) -> list[np.ndarray]:
    partitioner = PARTITIONERS[cfg.partition.scheme]
    rng = numpy_rng(cfg.run.seed, Stream.PARTITION)
    try:
        return partitioner(labels, cfg.clients.num_clients, rng, **cfg.partition.parameters())
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None


def load_configured_dataset(cfg: ExperimentConfig) -> Dataset:
    data = cfg.data
    return load_dataset(
        data.dataset, data.data_root, data.download,
        test_fraction=data.test_fraction, split_seed=data.split_seed, emnist_split=data.emnist_split,
    )


def _load_data(cfg: ExperimentConfig) -> tuple[Dataset, list[np.ndarray], np.ndarray, ServerData]:
    """The clients' dataset, its partition, the malicious clients and the data the server holds."""
    dataset, server_data = prepare_server_data(cfg, load_configured_dataset(cfg))
    malicious = draw_malicious(cfg.run.seed, cfg.clients.num_clients, cfg.threat.fraction)
    return dataset, make_partition(cfg, dataset.train_y), malicious, server_data


def prepare(cfg: ExperimentConfig, *, force: bool = False) -> Prepared:
    """Load data and partition it; decide what running ``cfg`` means given what is on disk."""
    dataset, parts, malicious, server_data = _load_data(cfg)
    run_dir = RunDirectory(Path(cfg.run.output_dir) / run_id(cfg))
    finished = False
    if run_dir.exists() and not force:
        if run_dir.read_state()["status"] != "finished":
            raise ConfigError(
                f"an unfinished run with this config exists in {run_dir.path}; continue it with "
                f"`byzlab run --resume {run_dir.path}` or start over with --force"
            )
        finished = True
    return Prepared(cfg, dataset, parts, malicious, server_data, run_dir, finished=finished, force=force)


def prepare_resume(path: str | Path) -> Prepared:
    run_dir = RunDirectory(path)
    if not run_dir.exists():
        raise ConfigError(f"'{path}' is not a byzlab run directory (no run.json)")
    cfg = build_config(run_dir.read_config())
    dataset, parts, malicious, server_data = _load_data(cfg)
    finished = run_dir.read_state()["status"] == "finished"
    return Prepared(cfg, dataset, parts, malicious, server_data, run_dir, resuming=True, finished=finished)


def ensure_ray(address: str | None = None, *, log_to_driver: bool = True) -> None:
    """Join the cluster at ``address`` (or start a local one) unless this process is already connected.
    ``log_to_driver=False`` keeps the workers' output out of this console (a sweep's live table)."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=log_to_driver)


def summarize(metrics: pa.Table) -> dict[str, float]:
    """acc_last5_mean: mean test accuracy over the last five evaluations (SDEA's metric); acc_best: the
    best evaluation (LASA's); acc_final: the last one."""
    accuracies = [a for a in metrics.column("test_accuracy").to_pylist() if a is not None]
    return {
        "acc_last5_mean": statistics.fmean(accuracies[-5:]),
        "acc_best": max(accuracies),
        "acc_final": accuracies[-1],
    }


def _clients_table(columns: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({k: pa.array(v, type=_CLIENT_COLUMN_TYPES.get(k)) for k, v in columns.items()})


def _partition_table(prepared: Prepared) -> pa.Table:
    histograms = label_histograms(prepared.dataset.train_y, prepared.parts, prepared.dataset.num_classes)
    columns = {"client": np.arange(len(prepared.parts)), "num_samples": histograms.sum(axis=1)}
    columns.update({f"label_{c}": histograms[:, c] for c in range(histograms.shape[1])})
    return pa.table(columns)


def _tags(cfg: ExperimentConfig, prepared: Prepared) -> dict[str, str]:
    threat = cfg.threat
    declared = "true count" if threat.declared_byzantine is None else str(threat.declared_byzantine)
    return {
        "byzlab.run_id": prepared.run_dir.run_id,
        "byzlab.run_dir": str(prepared.run_dir.path.resolve()),
        "byzlab.dataset": cfg.data.dataset,
        "byzlab.defense": cfg.server.aggregator,
        "byzlab.attack": cfg.threat.attack,
        "byzlab.quantity_attack": threat.quantity_attack,
        "byzlab.threat": (
            f"{threat.attack}+{threat.quantity_attack} fraction={threat.fraction:g} ({len(prepared.malicious)} "
            f"malicious) knowledge={threat.knowledge} declared={declared} start={threat.start_round} "
            f"every={threat.every}"
        ),
        "byzlab.partition_hash": partition_hash(prepared.parts),
    }


def _launch_actors(prepared: Prepared, resources) -> tuple[Any, list[Any]]:
    cfg, dataset = prepared.cfg, prepared.dataset
    num_actors = cfg.run.client_actors
    actor_of_client = np.arange(cfg.clients.num_clients) % num_actors
    train_x, train_y = ray.put(dataset.train_x), ray.put(dataset.train_y)
    clients = [
        ClientActor.options(num_cpus=resources.client.num_cpus, num_gpus=resources.client.num_gpus).remote(
            cfg, train_x, train_y,
            {c: prepared.parts[c] for c in np.flatnonzero(actor_of_client == a)}, prepared.malicious,
            dataset.input_shape, dataset.num_classes, resources.client.num_threads,
        )
        for a in range(num_actors)
    ]
    server = ServerActor.options(num_cpus=resources.server.num_cpus, num_gpus=resources.server.num_gpus).remote(
        cfg, clients, actor_of_client, prepared.malicious, ray.put(dataset.test_x), ray.put(dataset.test_y),
        prepared.server_data, dataset.input_shape, dataset.num_classes, resources.server.num_threads,
    )
    return server, clients


def _stored_result(run_dir: RunDirectory) -> RunResult:
    state = run_dir.read_state()
    metrics = run_dir.read_table(run_dir.metrics_path)
    return RunResult(run_dir.path, run_dir.run_id, "already finished", summarize(metrics), metrics,
                     state.get("mlflow_run_id"))


def execute(prepared: Prepared, *, on_round: RoundCallback | None = None, address: str | None = None,
            parent: ParentRun | None = None) -> RunResult:
    """Run (or continue) the prepared experiment to its last round; ``on_round`` is called after each
    round's tables and checkpoint are written. ``parent``: the sweep's MLflow run, for a child run."""
    if prepared.finished:
        return _stored_result(prepared.run_dir)
    cfg, run_dir = prepared.cfg, prepared.run_dir
    ensure_ray(address)
    cluster = ray.cluster_resources()
    resources = plan_resources(cfg.run, cluster.get("GPU", 0.0))
    check_fits(resources, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0))

    if prepared.resuming:
        state = run_dir.read_state()
        checkpoint = run_dir.load_checkpoint()
        start_round = checkpoint["round"] if checkpoint else 0
        mlflow_run_id = state.get("mlflow_run_id")
        tracker = Tracker.reopen(cfg, mlflow_run_id) if mlflow_run_id else None
        stored_metrics = run_dir.read_table(run_dir.metrics_path, up_to_round=start_round)
        stored_clients = run_dir.read_table(run_dir.clients_path, up_to_round=start_round)
        metric_rows = stored_metrics.to_pylist() if stored_metrics is not None else []
        client_tables = [stored_clients] if stored_clients is not None else []
    else:
        if prepared.force and run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        tags = _tags(cfg, prepared)
        run_name = f"{cfg.server.aggregator}-{cfg.threat.attack}-{cfg.data.dataset}-{run_dir.run_id[:8]}"
        tracker = Tracker.start(cfg, run_name, tags, parent) if cfg.tracking.enabled else None
        mlflow_run_id = tracker.mlflow_run_id if tracker else None
        run_dir.create(
            cfg.to_dict(),
            {"run_id": run_dir.run_id, "status": "created", "round": 0, "mlflow_run_id": mlflow_run_id,
             "partition_hash": tags["byzlab.partition_hash"], "malicious": prepared.malicious.tolist(),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )
        checkpoint, start_round, metric_rows, client_tables = None, 0, [], []
    if not run_dir.partition_path.is_file():  # absent only if the run was killed right after creation
        run_dir.write_table(run_dir.partition_path, _partition_table(prepared))

    def persist(round_index: int, server_state: dict[str, Any] | None) -> None:
        """Tables first, then the checkpoint: a crash in between leaves extra rows that resume drops."""
        if metric_rows:
            run_dir.write_table(run_dir.metrics_path, rows_to_table(metric_rows))
            run_dir.write_table(run_dir.clients_path, pa.concat_tables(client_tables))
        if server_state is not None:
            run_dir.save_checkpoint(
                {"round": round_index, "run_id": run_dir.run_id, "mlflow_run_id": mlflow_run_id or "",
                 "server": server_state}
            )
            run_dir.update_state(round=round_index)

    run_dir.update_state(status="running")
    server, clients = _launch_actors(prepared, resources)
    try:
        if checkpoint is not None:
            ray.get(server.load_state_dict.remote(checkpoint["server"]))
        for round_index in range(start_round + 1, cfg.run.rounds + 1):
            report = ray.get(server.run_round.remote(round_index))
            metric_rows.append(report["metrics"])
            client_tables.append(_clients_table(report["clients"]))
            if tracker:
                tracker.log_round(report["metrics"])
            if is_checkpoint_round(cfg, round_index):
                persist(round_index, ray.get(server.state_dict.remote()))
            if on_round:
                on_round(report["metrics"])
        device = ray.get(server.describe.remote())["device"]
    except BaseException as err:
        persist(start_round, None)
        run_dir.update_state(status="interrupted")
        if tracker:
            tracker.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    finally:
        for actor in [server, *clients]:
            ray.kill(actor)

    metrics = rows_to_table(metric_rows)
    summary = summarize(metrics)
    if tracker:  # before the run directory says finished: a run killed in between logs this on resume
        tracker.log_summary(summary, tags={"byzlab.device": device})
        tracker.log_artifacts(
            [run_dir.config_path, run_dir.partition_path, run_dir.metrics_path, run_dir.clients_path]
        )
        tracker.finish("FINISHED")
    run_dir.update_state(status="finished", summary=summary)
    return RunResult(run_dir.path, run_dir.run_id, "finished", summary, metrics, mlflow_run_id)


def run_experiment(cfg: ExperimentConfig, *, force: bool = False, on_round: RoundCallback | None = None,
                   address: str | None = None) -> RunResult:
    return execute(prepare(cfg, force=force), on_round=on_round, address=address)


def resume_experiment(path: str | Path, *, on_round: RoundCallback | None = None,
                      address: str | None = None) -> RunResult:
    return execute(prepare_resume(path), on_round=on_round, address=address)
