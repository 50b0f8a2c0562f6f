"""One experiment end to end: pre-flight checks, actors, the round loop, storage, tracking and resume
(docs/architecture.md, "Runs, identity, storage").

``prepare`` does every check that can fail on bad input (config, data, partition) and writes nothing;
``execute`` checks the cluster's resources, then opens the run (new or resumed), loops over the rounds and
finishes it. A run interrupted at any point resumes from its last checkpoint with ``resume``/``execute``
and gives the same numbers as an uninterrupted one (randomness is keyed by seed, round and client).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import AuthenticationError, RayActorError

from byzlab.actors.pool import WorkerPool
from byzlab.actors.resources import RunResources, check_fits, check_fits_this_machine, plan_resources
from byzlab.orchestrator.config import ExperimentConfig, build_config, run_id
from byzlab.orchestrator.config.plugins import loaded_plugin_modules, plugin_modules
from byzlab.orchestrator.core import interrupts
from byzlab.orchestrator.core.errors import ConfigError, RunAbortedError
from byzlab.orchestrator.core.plugins import code_roots, first_line
from byzlab.orchestrator.data.partition import label_histograms, partition_hash
from byzlab.orchestrator.run.locking import run_lock
from byzlab.orchestrator.run.storage import RESTORE, DamagedRunError, RunDirectory, check_output_dir, rows_to_table
from byzlab.orchestrator.run.tracking import ParentRun, Tracker, check_tracking_uri, tracked_run_problem
from byzlab.orchestrator.specs.inputs import RunInputs, num_flat_params, resolve_inputs

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


def check_outside_the_run(cfg: ExperimentConfig, address: str | None) -> None:
    """What the run needs outside its directory: a usable MLflow store, and CPUs a local cluster can have."""
    check_tracking_uri(cfg)
    if not ray.is_initialized() and _starts_local_cluster(address):
        check_fits_this_machine(cfg.run)


def prepare(cfg: ExperimentConfig, *, force: bool = False, address: str | None = None) -> Prepared:
    """Resolve the run's inputs; decide what running ``cfg`` (on the cluster at ``address``) means given what
    is on disk. Writes nothing; an existing run directory of ``cfg`` that is damaged is a DamagedRunError
    (one line) unless ``force``."""
    inputs = resolve_inputs(cfg)
    check_output_dir(Path(cfg.run.output_dir))
    check_outside_the_run(cfg, address)
    run_dir = RunDirectory(Path(cfg.run.output_dir) / run_id(cfg))
    state: RunState = "new"
    if run_dir.exists() and not force:
        if run_dir.read_state()["status"] != "finished":
            raise ConfigError(
                f"an unfinished run with this config exists in {run_dir.path}; continue it with "
                f"`byzlab run --resume {run_dir.path}` or start over with --force"
            )
        run_dir.check_finished()
        state = "finished"
    return Prepared(cfg, inputs, run_dir, state, force=force)


def prepare_resume(path: str | Path, *, address: str | None = None) -> Prepared:
    """The run in directory ``path`` as its files say, every file it will read checked first: a damaged one
    is a DamagedRunError naming the file and how to recover; nothing is written."""
    run_dir = RunDirectory(path)
    if not run_dir.exists():
        what = "is a file" if run_dir.path.is_file() else "does not exist" if not run_dir.path.exists() else \
            "has no run.json"
        raise ConfigError(f"'{path}' is not a byzlab run directory ({what}); --resume takes byzlab-results/<run id>")
    finished = run_dir.read_state()["status"] == "finished"
    try:
        cfg = build_config(run_dir.read_config())
    except DamagedRunError:
        raise
    except ConfigError as err:
        raise run_dir.damaged(run_dir.config_path, f"is not a valid config ({err})", RESTORE) from None
    inputs = resolve_inputs(cfg)
    if finished:
        run_dir.check_finished()
        return Prepared(cfg, inputs, run_dir, "finished")
    run_dir.check_resumable(num_flat_params(inputs.client.model), cfg.run.rounds)
    check_outside_the_run(cfg, address)
    mlflow_run_id = run_dir.read_state().get("mlflow_run_id")
    problem = tracked_run_problem(cfg, mlflow_run_id) if cfg.tracking.enabled and mlflow_run_id else None
    if problem:
        raise run_dir.damaged(run_dir.state_path, f"records MLflow run {mlflow_run_id}, {problem}")
    return Prepared(cfg, inputs, run_dir, "resumed")


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
        local = _starts_local_cluster(address)
        try:
            with _loopback_only() if local else _unchanged():
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=log_to_driver, runtime_env={"py_modules": roots} if roots else None)
        except (ConnectionError, AuthenticationError) as err:
            if local:
                raise
            raise ConfigError(_join_failure(address, err)) from None
        if threading.current_thread() is threading.main_thread():
            # Ray's core worker leaves a native SIGTERM handler that aborts the process midway (exit -6,
            # nothing marked): a Python one stops the run as a Ctrl-C does, then exits 143.
            signal.signal(signal.SIGTERM, interrupts.on_sigterm)
    if plugins and ray.get_runtime_context().get_actor_id() is None:  # in an actor (a Tune trial) it imported them
        failures = ray.get(_import_in_worker.remote(list(plugins)))
        if failures:
            raise ConfigError(f"plug-in module {failures[0]} does not import in the Ray workers: install it on every "
                              "node or ship it in ray.init(runtime_env={'py_modules': [...]}) (README, \"Your own "
                              "components\")")


# Ray 2.60 has no bind-address setting: each server binds the loopback address when the node's address is a
# loopback one, and every interface otherwise ("::"/"0.0.0.0"; the runtime-env agent: the node address).
# ray.init and `ray start` turn a loopback --node-ip-address into the machine's routable address unless
# ray_constants.ENABLE_RAY_CLUSTER is false (the macOS/Windows single-machine mode, env var below), which
# makes the node address 127.0.0.1 (::1 where localhost is IPv6). README, "A multi-node cluster, securely".
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _starts_local_cluster(address: str | None) -> bool:
    """Whether ``ray.init(address=address)`` starts a new cluster on this machine (RAY_ADDRESS would join one)."""
    return address == "local" or (address is None and not os.environ.get("RAY_ADDRESS"))


def _join_failure(address: str | None, err: Exception) -> str:
    """One line on a cluster that could not be joined; Ray's own error is the last of ~20 s of retry logs."""
    token = "" if os.environ.get(_AUTH_MODE_ENV, "").lower() == "token" else (
        f"; a cluster with token authentication also needs {_AUTH_MODE_ENV}=token here and its token "
        "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    return (f"cannot join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {first_line(err)}{token} "
            "(README, \"A multi-node cluster, securely\")")


@contextmanager
def _unchanged() -> Iterator[None]:
    yield


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local cluster starts: its node address is loopback, so the GCS, raylet, driver, workers and
    agents listen on loopback only (the processes started now inherit the setting; this process gets its own
    back afterwards). Ray's token authentication, on by default for a new local cluster (RAY_AUTH_MODE unset;
    ray.init makes the token), is left on: other local users reach loopback ports too."""
    from ray._private import ray_constants

    mode = os.environ.get(_AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        logging.getLogger(__name__).warning(
            "%s=%s: the local Ray cluster runs without token authentication; any local user can reach it",
            _AUTH_MODE_ENV, mode)
    saved_env, saved_flag = os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env


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

    def restart_from_checkpoint(self) -> None:
        """Drop the rounds since the last checkpoint (their actors died): the run continues from it, and
        since every round is keyed by (seed, round, client), the rerun rounds give the same numbers."""
        run_dir = self.prepared.run_dir
        self.checkpoint = run_dir.load_checkpoint()
        self.start_round = self.checkpoint["round"] if self.checkpoint else 0
        run_dir.rewind(self.start_round)
        self.pending_metrics, self.pending_clients = [], []

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
        tracker = Tracker.reopen(cfg, mlflow_run_id) if mlflow_run_id else None
        run = ActiveRun(prepared, tracker, mlflow_run_id, 0, None)
        run.restart_from_checkpoint()
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


def _loop(run: ActiveRun, server: Any, on_round: RoundCallback | None) -> str:
    """Rounds after the checkpoint to the last; returns the server's device.

    The server computes round r + 1 while this process records round r (its rows, MLflow, the checkpoint,
    ``on_round``'s report to Tune), so that bookkeeping adds no time to a round. The actor runs its calls in
    the order they were sent, so a checkpoint's state, asked for before round r + 1 is sent, is the state
    after round r. A run ended by ``StopRun`` waits for the round in flight before the actors go back to
    the pool: the next run re-initialises them, and no call of this run may reach them after that."""
    cfg = run.prepared.cfg
    if run.checkpoint is not None:
        ray.get(server.load_state_dict.remote(run.checkpoint["server"]))
    rounds = range(run.start_round + 1, cfg.run.rounds + 1)
    in_flight = server.run_round.remote(rounds[0]) if rounds else None
    for round_index in rounds:
        report = ray.get(in_flight)
        state = server.state_dict.remote() if is_checkpoint_round(cfg, round_index) else None
        in_flight = server.run_round.remote(round_index + 1) if round_index < cfg.run.rounds else None
        try:
            run.record(report)
            if state is not None:
                run.persist(round_index, ray.get(state))
            if on_round:
                on_round(report["metrics"])
        except StopRun:
            if in_flight is not None:
                ray.wait([in_flight])
            raise
    return ray.get(server.describe.remote())["device"]


class StopRun(Exception):
    """Raised by an ``on_round`` callback to end the run after the round it was called for: a search's
    scheduler (ASHA) stopped the trial. The run is kept as ``stopped`` with the summary of its rounds so far
    (resumable like an interrupted run), and its MLflow run ends FINISHED with the tag
    ``byzlab.stopped_early`` = the last round."""


def _stop(run: ActiveRun) -> dict[str, float]:
    """End a run a scheduler stopped: its rows kept, its summary so far recorded; returns that summary."""
    run.persist(run.start_round, None)
    run_dir = run.prepared.run_dir
    metrics = run_dir.read_table("metrics")
    evaluated = any(a is not None for a in metrics.column("test_accuracy").to_pylist())
    summary = summarize(metrics) if evaluated else {}
    last_round = int(max(metrics.column("round").to_pylist()))
    if run.tracker:
        run.tracker.log_summary(summary, tags={"byzlab.stopped_early": str(last_round)})
        run.tracker.finish("FINISHED")
    run_dir.update_state(status="stopped", summary=summary, stopped_round=last_round)
    return summary


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
            parent: ParentRun | None = None, workers: WorkerPool | None = None) -> RunResult:
    """Run (or continue) the prepared experiment to its last round; ``on_round`` is called after each
    round's rows (and, on checkpoint rounds, the checkpoint) are written. ``parent``: the sweep's MLflow
    run, for a child run. ``workers``: the pool whose actors the run borrows and leaves for the next run
    (a sweep's trainable); None: actors of the run's own, killed when it ends."""
    if prepared.state == "finished":
        return _stored_result(prepared.run_dir)
    ensure_ray(address, plugins=plugin_modules(prepared.cfg))
    resources = _reserve(prepared.cfg)
    with run_lock(prepared.run_dir.path):  # a second process on this run fails here, naming this one
        prepared = _as_on_disk(prepared)
        if prepared.state == "finished":
            return _stored_result(prepared.run_dir)
        with WorkerPool.for_run(workers) as pool:
            pool.lend(prepared.inputs, resources)  # new actors start their processes while the run opens
            run = _open(prepared, parent)
            device = _rounds_surviving_actor_deaths(run, resources, on_round, pool)
        try:
            return _finish(run, device)
        except BaseException as err:  # a Ctrl-C while finishing: resumable, MLflow not left RUNNING
            _interrupt(run, err)
            raise


def _rounds_surviving_actor_deaths(run: ActiveRun, resources: RunResources, on_round: RoundCallback | None,
                                   workers: WorkerPool) -> str:
    """The rounds, on fresh actors from the last checkpoint whenever an actor dies (a worker killed, a node
    lost), up to ``run.actor_restarts`` times; past that the run stops, resumable. Returns the device.
    The actors are borrowed from ``workers``; they stay there unless the run did not end normally."""
    cfg = run.prepared.cfg
    for restarts in itertools.count():
        try:
            server, _ = workers.borrow(run.prepared.inputs, resources)
            return _loop(run, server, on_round)
        except StopRun:
            _stop(run)  # the actors are sound: they stay in the pool for the next run
            raise
        except RayActorError as err:
            workers.discard()
            if restarts == cfg.run.actor_restarts:
                _interrupt(run, err)
                raise RunAbortedError(
                    f"a Ray actor died after {restarts} restarts (run.actor_restarts): {first_line(err)}; "
                    f"continue with: byzlab run --resume {run.prepared.run_dir.path}") from None
            run.restart_from_checkpoint()
        except BaseException as err:
            workers.discard()
            _interrupt(run, err)
            raise
    raise AssertionError("unreachable")


def _as_on_disk(prepared: Prepared) -> Prepared:
    """``prepared`` as the run directory now says, read under the run's lock: another process may have
    created or finished the run since ``prepare`` looked."""
    run_dir = prepared.run_dir
    if prepared.force or not run_dir.exists():
        return prepared
    if run_dir.read_state()["status"] == "finished":
        return dataclasses.replace(prepared, state="finished")
    if prepared.state == "new":
        raise ConfigError(f"an unfinished run with this config exists in {run_dir.path} (started by another "
                          f"process); continue it with `byzlab run --resume {run_dir.path}`")
    return prepared


def run_experiment(cfg: ExperimentConfig, *, force: bool = False, on_round: RoundCallback | None = None,
                   address: str | None = None) -> RunResult:
    return execute(prepare(cfg, force=force, address=address), on_round=on_round, address=address)


def resume_experiment(path: str | Path, *, on_round: RoundCallback | None = None,
                      address: str | None = None) -> RunResult:
    return execute(prepare_resume(path, address=address), on_round=on_round, address=address)
