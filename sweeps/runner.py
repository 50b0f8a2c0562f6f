"""Run a sweep with Ray Tune, resume it, and write its report.

A sweep's directory is ``<base run.output_dir>/sweeps/<name>``:

- ``sweep.yaml``: the validated sweep file (resume re-reads it); ``sweep.json``: status, MLflow parent run id
- ``runs/<run id>/``: each trial's run directory (the single-experiment layout)
- ``tune/``: Ray Tune's experiment state and the trials' checkpoints (``Tuner.restore`` reads it)
- ``report/``: tables and plots, also logged to the MLflow parent run

MLflow uses the base config's store (by default ``<output_dir>/mlflow.db``, shared with single runs) with one
parent run per sweep and one child run per trial.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from ray import tune

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.plugins import first_line
from byzlab.actors.resources import RunResources
from byzlab.orchestrator.config import ExperimentConfig, build_config
from byzlab.orchestrator.run.experiment import check_outside_the_run, ensure_ray
from byzlab.orchestrator.specs.inputs import load_configured_dataset, make_partition
from byzlab.orchestrator.run.storage import RunDirectory, write_json
from byzlab.orchestrator.run.tracking import default_tracking_uri, log_params, open_experiment, tracking_uri
from byzlab.sweeps.live import LiveTable
from byzlab.sweeps.placement import ClusterShape, concurrent_trials, plan_trial, trial_bundles, trial_resources
from byzlab.sweeps.report import BACKDOOR_KEY, records_from_mlflow, records_from_sweep_dir, write_report
from byzlab.sweeps.search import RANDOM, SEARCH_DEFAULTS, SEARCH_METRIC, is_backdoor, scheduler, searcher
from byzlab.sweeps.search_report import write_search_report
from byzlab.sweeps.spec import (
    DEFAULT_TABLE_METRIC,
    SPEC_FILE,
    TABLE_METRICS,
    Sweep,
    SweepSpec,
    check_table_metric,
    coupled_keys,
    load_saved_sweep,
)
from byzlab.sweeps.trainable import run_trial

STATE_FILE = "sweep.json"
TUNE_DIR = "tune"
RUNS_DIR = "runs"
REPORT_DIR = "report"
MAX_TRIAL_FAILURES = 2  # Tune restarts a failed trial from its last checkpoint this many times


@dataclass
class SweepPlan:
    """A validated sweep placed on a cluster: where it goes and what each trial reserves."""

    sweep: Sweep
    directory: Path
    base: ExperimentConfig
    cluster: ClusterShape
    resources: list[RunResources]

    def trial_configs(self) -> list[dict[str, Any]]:
        """Each trial's config as the trainable gets it: results under the sweep, MLflow in the base's
        store, GPU shares fixed at launch (so a resumed trial asks for exactly its placement group)."""
        configs = []
        own_metric = backdoor_metric(self.sweep)
        for trial, resources in zip(self.sweep.trials, self.resources):
            tree = trial.config.to_dict()
            tree["run"].update(
                output_dir=str(self.directory / RUNS_DIR),
                client_actor_gpus=resources.client.num_gpus,
                server_gpus=resources.server.num_gpus,
            )
            tree["tracking"]["uri"] = tracking_uri(self.base)
            configs.append({
                "run_id": None if trial.searched else trial.run_id,  # a search's: known once sampled
                "config": tree, "labels": trial.labels, "bundles": trial_bundles(resources),
                **({"searched": {name: s.key for name, s in trial.searched.items()}} if trial.searched else {}),
                **({"metric": own_metric[trial.index]} if trial.index in own_metric else {}),
            })
        return configs


@dataclass
class SweepOutcome:
    directory: Path
    total: int
    finished: int
    failed: list[str] = field(default_factory=list)  # "<trial>: <error>" per failed trial
    report: list[Path] = field(default_factory=list)
    parent_run: tuple[str, str] | None = None  # (MLflow experiment id, parent run id) of a tracked sweep
    ui_options: str = ""  # the `byzlab ui` options that open the sweep's MLflow store

    @property
    def complete(self) -> bool:
        return self.finished == self.total


def sweep_directory(sweep: Sweep) -> Path:
    return Path(build_config(sweep.spec.base).run.output_dir).resolve() / "sweeps" / sweep.spec.name


def _trial_error(trial: Any, err: ConfigError) -> ConfigError:
    labels = ", ".join(f"{k}={v}" for k, v in trial.labels.items())
    return ConfigError(f"trial {trial.index} ({labels}): {err}")


def check_before_ray(sweep: Sweep, address: str | None) -> None:
    """Each trial's MLflow store and, on a local cluster, its CPUs: checked before Ray starts."""
    for trial in sweep.trials:
        try:
            check_outside_the_run(trial.config, address)
        except ConfigError as err:
            raise _trial_error(trial, err) from None


def plan(sweep: Sweep, directory: Path | None = None) -> SweepPlan:
    """Place every trial on the connected cluster; ConfigError naming a trial the cluster cannot hold."""
    cluster = ClusterShape.current()
    resources = []
    for trial in sweep.trials:
        try:
            resources.append(plan_trial(trial.config, cluster))
        except ConfigError as err:
            raise _trial_error(trial, err) from None
    base = build_config(sweep.spec.base)
    return SweepPlan(sweep, directory or sweep_directory(sweep), base, cluster, resources)


def check_data(sweep: Sweep) -> None:
    """Load each dataset and draw each partition the trials use once, so a missing dataset or an
    impossible partition stops the sweep before any trial starts."""
    datasets: dict[str, Any] = {}
    partitions: set[str] = set()
    for trial in sweep.trials:
        cfg = trial.config
        data_key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if data_key not in datasets:
            datasets[data_key] = load_configured_dataset(cfg)
        partition_key = json.dumps(
            [data_key, cfg.partition.model_dump(mode="json"), cfg.clients.num_clients, cfg.run.seed], sort_keys=True
        )
        if partition_key not in partitions:
            make_partition(cfg, datasets[data_key])
            partitions.add(partition_key)


def describe(plan_: SweepPlan, max_concurrent: int | None) -> list[str]:
    """The dry run's account: trials, what each reserves, how many run at once, the total work."""
    trials = plan_.sweep.trials
    kind = "settings to search" if plan_.sweep.searching else "trials"
    lines = [f"sweep '{plan_.sweep.spec.name}': {len(trials)} {kind} -> {plan_.directory}"]
    requests: dict[str, int] = {}
    for resources in plan_.resources:
        text = f"{resources.describe()} = {resources.total_cpus:g} CPUs, {resources.total_gpus:g} GPUs"
        requests[text] = requests.get(text, 0) + 1
    for text, count in requests.items():
        lines.append(f"  {count} trial(s) reserve: {text}")
    at_once = min(concurrent_trials(r, plan_.cluster) for r in plan_.resources)
    if max_concurrent is not None:
        at_once = min(at_once, max_concurrent)
    lines.append(f"cluster: {plan_.cluster.describe()} -> up to {at_once} trial(s) at a time")
    search = plan_.sweep.spec.search
    if plan_.sweep.searching:
        samples = search.num_samples * (len(trials) if search.algorithm == RANDOM else 1)
        lines.append(f"search ({search.algorithm}): {samples} samples of {len(trials)} setting(s)"
                     + (f", ASHA on {search.scheduler.metric} (the work below is what runs without it)"
                        if search.scheduler else ""))
    rounds = updates = epochs = steps = 0
    for trial in trials:
        run, clients = trial.config.run, trial.config.clients
        repeats = 1 if not trial.searched else search.num_samples if search.algorithm == RANDOM else (
            search.num_samples / len(trials))  # a model-based searcher: num_samples in all
        rounds += repeats * run.rounds
        updates += repeats * run.rounds * clients.clients_per_round
        if clients.local_steps is None:
            epochs += repeats * run.rounds * clients.clients_per_round * clients.local_epochs
        else:
            steps += repeats * run.rounds * clients.clients_per_round * clients.local_steps
    local_work = [f"{n:,.0f} local {unit}" for n, unit in ((epochs, "epochs"), (steps, "steps")) if n]
    lines.append(f"total work: {rounds:,.0f} rounds, {updates:,.0f} client updates ({', '.join(local_work)})")
    return lines


def dry_run(sweep: Sweep, *, address: str | None = None, max_concurrent: int | None = None) -> list[str]:
    """Validate placement on the cluster and describe the sweep; loads no data (nothing is downloaded)."""
    check_before_ray(sweep, address)
    ensure_ray(address, log_to_driver=False)
    return describe(plan(sweep), max_concurrent)


def _write_state(directory: Path, **changes: Any) -> dict[str, Any]:
    path = directory / STATE_FILE
    state = {**(json.loads(path.read_text()) if path.is_file() else {}), **changes}
    write_json(path, state)
    return state


def damaged_sweep(directory: Path, name: str, problem: str) -> ConfigError:
    """The one-line error for file ``name`` of a sweep directory: what is wrong and how to recover."""
    return ConfigError(
        f"sweep directory {directory} is damaged: {name} {problem}; restore {name} from a copy, or start the "
        f"sweep over with `byzlab sweep <its sweep file> --force` (finished trials run again)"
    )


def read_state(directory: Path) -> dict[str, Any]:
    """``sweep.json``: a JSON object with the sweep's status, id and MLflow parent run (``null`` untracked)."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"'{directory}' is not a byzlab sweep directory (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSON or UTF-8 decoding
        raise damaged_sweep(directory, STATE_FILE, f"is not a JSON record ({first_line(err)[:160]})") from None
    if not isinstance(state, dict):
        raise damaged_sweep(directory, STATE_FILE, f"holds a {type(state).__name__}, not a JSON object")
    missing = [key for key in ("status", "sweep_id", "parent_run_id") if key not in state]
    if missing:
        raise damaged_sweep(directory, STATE_FILE, f"has no {', '.join(missing)}")
    if not isinstance(state["sweep_id"], str) or not isinstance(state["parent_run_id"], (str, type(None))):
        raise damaged_sweep(directory, STATE_FILE, "has a sweep_id or parent_run_id that is not a string")
    return state


def _parent_run(plan_: SweepPlan, sweep_id: str) -> str:
    """The sweep's MLflow run: found by its sweep id (a driver killed right after creating it), or created."""
    client, experiment_id = open_experiment(plan_.base)
    existing = client.search_runs([experiment_id], f"tags.`byzlab.sweep_id` = '{sweep_id}'", max_results=1)
    if existing:
        return existing[0].info.run_id
    spec = plan_.sweep.spec
    tags = {"byzlab.sweep": spec.name, "byzlab.sweep_id": sweep_id, "byzlab.sweep_dir": str(plan_.directory)}
    if spec.description:
        tags["mlflow.note.content"] = spec.description
    run = client.create_run(experiment_id, run_name=f"sweep-{spec.name}", tags=tags)
    params = {
        "sweep.name": spec.name, "sweep.trials": len(plan_.sweep.trials),
        **{f"sweep.grid.{'/'.join(coupled_keys(key))}": values for key, values in spec.grid.items()},
        "sweep.defenses": list(spec.defenses or [plan_.base.server.aggregator]),
        "sweep.attacks": list(spec.attacks or [plan_.base.threat.attack]),
        "sweep.seeds": spec.seeds or [plan_.base.run.seed],
    }
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def _trial_dirname(trial: Any) -> str:
    return trial.config["trial"]["run_id"] or trial.trial_id


def _trainable() -> Any:
    return tune.with_resources(run_trial, trial_resources)


def backdoor_metric(sweep: Sweep) -> dict[int, str]:
    """The worst-attack search's settings measured by the backdoor's success rate (maximised) instead of the
    accuracy, by trial index."""
    if sweep.spec.objective != "worst_attack":
        return {}
    return {t.index: BACKDOOR_KEY for t in sweep.trials if t.searched and is_backdoor(t.config.threat.attack)}


def search_objective(spec: SweepSpec) -> tuple[str, str]:
    """The metric a search optimises and which way: the sweep's, else the report's; max unless lower is better,
    and the other way round for the worst attack."""
    metric = spec.search.metric or spec.report.metric
    worse = "max" if TABLE_METRICS[metric].lower_is_better else "min"
    better = "min" if worse == "max" else "max"
    return metric, spec.search.mode or (worse if spec.objective == "worst_attack" else better)


def _search_options(plan_: SweepPlan, max_concurrent: int | None) -> dict[str, Any]:
    """Tune's search space, searcher, scheduler and sample count for a sweep with distributions. The first
    point runs the searched parameters at their defaults: for random search, a point that sets
    ``search_defaults`` (the trainable then applies no sampled value: a default such as LIE's z = None lies in
    no distribution); a model-based searcher gets the default values, where they lie in its space."""
    spec = plan_.sweep.spec
    searched = {name: s for trial in plan_.sweep.trials for name, s in trial.searched.items()}
    metric, mode = search_objective(spec)
    if spec.search.algorithm == RANDOM:
        points = [{SEARCH_DEFAULTS: True}]
    elif all(s.distribution.contains(s.default) for s in searched.values()):
        points = [{f"search/{name}": s.default for name, s in searched.items()}]  # flattened, as they take it
    else:
        points = []
    rounds = max(trial.config.run.rounds for trial in plan_.sweep.trials)
    try:
        algorithm = searcher(spec.search, SEARCH_METRIC, mode, points, max_concurrent)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return {
        "space": {"search": {name: s.distribution.domain() for name, s in searched.items()}, SEARCH_DEFAULTS: False},
        "tune": {"search_alg": algorithm, "scheduler": scheduler(spec.search, rounds),
                 "num_samples": spec.search.num_samples},
        "sweep": {"metric": metric, "stoppable": spec.search.scheduler is not None},
    }


def _new_tuner(plan_: SweepPlan, state: dict[str, Any], max_concurrent: int | None,
               callbacks: Sequence[tune.Callback] = ()) -> tune.Tuner:
    """Tune reuses a finished trial's trainable (and so its actors, sweeps/trainable.py) for the next trial
    that asks for the same placement group, unless the sweep file sets ``reuse_workers: false``. A search
    samples its distributions with the sweep's searcher (one setting: a constant trial config for a
    model-based searcher, which cannot take Tune's grid)."""
    spec = plan_.sweep.spec
    configs = plan_.trial_configs()
    sweep = {"name": spec.name, "id": state["sweep_id"], "parent_run_id": state["parent_run_id"],
             "reuse_workers": spec.reuse_workers}
    param_space: dict[str, Any] = {"trial": tune.grid_search(configs), "sweep": sweep}
    search: dict[str, Any] = {}
    if plan_.sweep.searching:
        options = _search_options(plan_, max_concurrent)
        search = options["tune"]
        sweep.update(options["sweep"])
        param_space.update(options["space"])
        if spec.search.algorithm != RANDOM:
            param_space["trial"] = configs[0]
    return tune.Tuner(
        _trainable(),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent, trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname, reuse_actors=spec.reuse_workers, **search,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(plan_.directory),
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[LiveTable(), *callbacks],
            verbose=0,
        ),
    )


def launch(sweep: Sweep, *, address: str | None = None, max_concurrent: int | None = None,
           force: bool = False, callbacks: Sequence[tune.Callback] = ()) -> SweepOutcome:
    """Check everything, create the sweep directory and parent run, run all trials, write the report.
    ``callbacks``: Tune callbacks besides the live table (benchmarks/sweep_overhead.py times trials so)."""
    directory = sweep_directory(sweep)
    if (directory / STATE_FILE).is_file() and not force:
        status = read_state(directory).get("status")
        follow_up = "its report: `byzlab report" if status == "finished" else "continue it with `byzlab resume"
        raise ConfigError(
            f"sweep '{sweep.spec.name}' already exists in {directory} (status: {status}); {follow_up} "
            f"{directory}`, or start over with --force"
        )
    check_before_ray(sweep, address)
    ensure_ray(address, log_to_driver=False)
    plan_ = plan(sweep, directory)
    check_data(sweep)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / SPEC_FILE).write_text(yaml.safe_dump(sweep.spec.model_dump(mode="json"), sort_keys=False))
    state = _write_state(
        directory, name=sweep.spec.name, sweep_id=uuid.uuid4().hex[:12], status="starting", trials=len(sweep.trials),
        parent_run_id=None, tracking_uri=None, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    state = _start_tracking(plan_, state)
    return _run(plan_, _new_tuner(plan_, state, max_concurrent, callbacks), state["parent_run_id"])


def _start_tracking(plan_: SweepPlan, state: dict[str, Any]) -> dict[str, Any]:
    """Open (or reopen) the parent run and record it in sweep.json before any trial starts."""
    if not plan_.base.tracking.enabled:
        return _write_state(plan_.directory, status="running")
    parent_run_id = state["parent_run_id"] or _parent_run(plan_, state["sweep_id"])
    client, _ = open_experiment(plan_.base)
    client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    return _write_state(
        plan_.directory, status="running", parent_run_id=parent_run_id, tracking_uri=tracking_uri(plan_.base)
    )


class _StaleTuneStateNoise(logging.Filter):
    """Tune saves its experiment state every few seconds, so after a SIGKILL it can be a little behind:
    restored, it deletes checkpoints it had already deleted (logging a FileNotFoundError traceback, then
    carrying on) and finds no results for trials that had reported none yet. Neither matters here: each
    trial continues from its run directory when that is further along. Only these two messages are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exception = record.exc_info[1] if record.exc_info else None
        if isinstance(exception, FileNotFoundError) and "Error handling checkpoint" in str(record.msg):
            return False
        return "Could not fetch metrics for" not in record.getMessage()


def resume(directory: str | Path, *, address: str | None = None) -> SweepOutcome:
    """Continue a sweep: finished trials are kept, unfinished and failed ones continue from their last
    checkpoint, trials never started start."""
    directory = Path(directory).resolve()
    state = read_state(directory)
    try:
        sweep = load_saved_sweep(directory)
    except ConfigError as err:
        raise damaged_sweep(directory, SPEC_FILE, f"does not read: {err}") from None
    check_before_ray(sweep, address)
    ensure_ray(address, log_to_driver=False)
    plan_ = plan(sweep, directory)
    state = _start_tracking(plan_, state)
    tune_path = directory / TUNE_DIR
    noise = _StaleTuneStateNoise()
    for name in ("ray.tune.execution.tune_controller", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).addFilter(noise)
    if tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(str(tune_path), _trainable(), resume_unfinished=True, resume_errored=True)
    else:  # the driver died before Tune saved its state: start the trials again (their run dirs resume)
        shutil.rmtree(tune_path, ignore_errors=True)
        tuner = _new_tuner(plan_, state, None)
    return _run(plan_, tuner, state["parent_run_id"])


def _run(plan_: SweepPlan, tuner: tune.Tuner, parent_run_id: str | None) -> SweepOutcome:
    directory = plan_.directory
    # The live table replaces Tune's console output; forced experiment snapshots (num_to_keep) are wanted.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a search's trial may report no evaluation yet (run.eval_every > 1): the scheduler then waits for one
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    try:
        results = tuner.fit()
    except BaseException:
        _write_state(directory, status="interrupted")
        _end_parent_run(plan_, parent_run_id, "KILLED")
        raise
    failed = [
        f"{', '.join(result.config['trial']['labels'].values())}: {str(result.error).strip().splitlines()[-1]}"
        for result in results
        if result.error is not None
    ]
    if plan_.sweep.searching:  # a search's trials: Tune's, each a finished or stopped run unless it failed
        _settle_stopped(plan_, results)
        total, finished = len(results), sum(result.error is None for result in results)
    else:
        run_dirs = [RunDirectory(directory / RUNS_DIR / trial.run_id) for trial in plan_.sweep.trials]
        total = len(plan_.sweep.trials)
        finished = sum(run_dir.exists() and run_dir.read_state()["status"] == "finished" for run_dir in run_dirs)
    outcome = SweepOutcome(directory, total, finished, failed)
    if finished:
        outcome.report = report(directory)
    status = "finished" if outcome.complete else ("failed" if failed else "interrupted")
    _write_state(directory, status=status, finished_trials=finished)
    _end_parent_run(plan_, parent_run_id, {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
    if parent_run_id:
        outcome.parent_run = (open_experiment(plan_.base)[1], parent_run_id)
        outcome.ui_options = _ui_options(plan_.base)
    return outcome


SETTLE_SECONDS = 30.0


def _settle_stopped(plan_: SweepPlan, results: Any) -> None:
    """The runs the scheduler stopped, recorded as stopped before the report reads them. A stopped trial's
    thread records that itself (experiment.StopRun) while Tune moves on, so the last ones may still be at
    it when Tune returns: wait for them (at most SETTLE_SECONDS), then record what a thread ended before
    recording (its process gone) from here: status ``stopped``, the MLflow run FINISHED with its tag."""
    stopped = []
    for result in results:
        metrics = result.metrics or {}
        rounds = result.config["trial"]["config"]["run"]["rounds"]
        if result.error is None and metrics.get("run_id") and int(metrics.get("round", rounds)) < rounds:
            stopped.append((RunDirectory(plan_.directory / RUNS_DIR / metrics["run_id"]), int(metrics["round"])))
    deadline = time.monotonic() + SETTLE_SECONDS
    while any(d.read_state()["status"] == "running" for d, _ in stopped) and time.monotonic() < deadline:
        time.sleep(0.2)
    for run_dir, last_round in stopped:
        state = run_dir.read_state()
        if state["status"] != "running":
            continue
        run_dir.update_state(status="stopped", stopped_round=last_round)
        if state.get("mlflow_run_id") and plan_.base.tracking.enabled:
            client = MlflowClient(tracking_uri=tracking_uri(plan_.base))
            client.set_tag(state["mlflow_run_id"], "byzlab.stopped_early", str(last_round))
            client.set_terminated(state["mlflow_run_id"], status="FINISHED")


def _ui_options(base: ExperimentConfig) -> str:
    """``byzlab ui`` options that open this config's MLflow store from any directory."""
    if base.tracking.uri is not None:
        return f"--uri {shlex.quote(base.tracking.uri)}"
    return f"--output-dir {shlex.quote(str(Path(base.run.output_dir).resolve()))}"


def _end_parent_run(plan_: SweepPlan, parent_run_id: str | None, status: str) -> None:
    if parent_run_id:
        client, _ = open_experiment(plan_.base)
        client.set_terminated(parent_run_id, status=status)


def report(source: str | Path, *, out: Path | None = None, output_dir: Path = Path("byzlab-results"),
           uri: str | None = None, metric: str | None = None) -> list[Path]:
    """Write the report of a sweep directory or of an MLflow experiment's finished runs, and log it to the
    sweep's parent run. ``output_dir`` / ``uri`` locate the MLflow store of an experiment name. ``metric``:
    the table's (None: the sweep file's ``report.metric``, acc_last5_mean for an experiment name)."""
    source_path = Path(source)
    if metric is not None:
        try:
            check_table_metric(metric)
        except ValueError as err:
            raise ConfigError(f"--metric: {err}") from None
    if (source_path / STATE_FILE).is_file():
        state = read_state(source_path)
        store, parent_run_id = state.get("tracking_uri"), state.get("parent_run_id")
        out = out or source_path / REPORT_DIR
        sweep = load_saved_sweep(source_path)
        if sweep.searching:
            search_metric, mode = search_objective(sweep.spec)
            paths = write_search_report(sweep, source_path, out, metric or search_metric, mode, backdoor_metric(sweep))
            _log_report(store, parent_run_id, paths)
            return paths
        records = records_from_sweep_dir(source_path)
        metric = metric or sweep.spec.report.metric
        bound = {"defense_keys": sweep.spec.report.defense_keys, "attack_keys": sweep.spec.report.attack_keys}
    else:
        store = uri or default_tracking_uri(output_dir)
        if uri is None and not (output_dir / "mlflow.db").is_file():
            raise ConfigError(f"'{source}' is neither a sweep directory nor an experiment in {output_dir / 'mlflow.db'}")
        records, parent_run_id = records_from_mlflow(str(source), store)
        out = out or output_dir / "reports" / str(source)
        bound = {}
    if not records:
        raise ConfigError(f"'{source}' has no finished trial to report on")
    paths = write_report(records, out, metric or DEFAULT_TABLE_METRIC, **bound)
    _log_report(store, parent_run_id, paths)
    return paths


def _log_report(store: str | None, parent_run_id: str | None, paths: list[Path]) -> None:
    if store and parent_run_id:
        client = MlflowClient(tracking_uri=store)
        for path in paths:
            client.log_artifact(parent_run_id, str(path), artifact_path=REPORT_DIR)
