"""The Tune function trainable: one trial = one experiment, run by the single-experiment runner.

The trial's state lives in its run directory (``<sweep>/runs/<run id>``); every ``run.checkpoint_every``
rounds a copy of that directory is attached to ``tune.report`` as the Tune checkpoint. On restart the
trainable continues from whichever is further along: the run directory (always written before the report,
so it is newer when the driver died before Tune recorded the checkpoint) or ``tune.get_checkpoint()``
(the only copy when the trial restarts on a node without the run directory). A trial whose run directory
is finished reports its stored result and returns without rerunning anything.

Tune reuses the trainable's process for the next trial that asks for the same placement group
(``reuse_actors``), and the trial borrows the client and server actors the previous trial left in
``_WORKERS`` (actors/pool.py): a trial after the first on a slot starts no process and ships no dataset.

A search's trial (sweeps/search.py) gets its sampled values in ``config["search"]``, sets the parameters its
setting searches (``config["trial"]["searched"]``), and validates the result as any config; every round it
reports the search metric so far as ``search_metric``. Two samples may be the same experiment (a ``choice``, a repeated default):
the second waits for the first (a lock per run directory) and then reports its stored result. When the
search's scheduler stops the trial, Tune's ``report`` exits the trial's thread; the run ends ``stopped``
(experiment.StopRun), its MLflow run FINISHED with the ``byzlab.stopped_early`` tag, and a later sample of
the same experiment reports that verdict. Tune ends its trials the same way when its driver is interrupted
(Ctrl-C), so a search with a scheduler interrupted so keeps its running trials as stopped early.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock
from pyarrow.fs import FileType
from ray import tune

from byzlab.actors.pool import WorkerPool
from byzlab.orchestrator.config import ExperimentConfig, build_config, run_id, set_dotted
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.run.experiment import StopRun, execute, is_checkpoint_round, prepare, prepare_resume
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.orchestrator.run.tracking import ParentRun
from byzlab.sweeps.search import SEARCH_DEFAULTS, SEARCH_METRIC, RunningObjective

CHECKPOINT_RUN_DIR = "run"  # the run directory's copy inside a Tune checkpoint
# This process's client and server actors, in its trial's placement group; each trial borrows them in turn.
_WORKERS = WorkerPool()


def _checkpointed_round(run_dir: RunDirectory) -> int:
    state = run_dir.read_state()
    return 10**9 if state["status"] == "finished" else int(state.get("round", 0))


def restore_run_dir(checkpoint: tune.Checkpoint | None, run_dir: RunDirectory) -> None:
    """Replace the run directory by the Tune checkpoint's copy when that copy is further along."""
    if checkpoint is None or checkpoint.filesystem.get_file_info(checkpoint.path).type == FileType.NotFound:
        return  # Tune's state can name a checkpoint it deleted just before the driver died
    with checkpoint.as_directory() as directory:
        saved = RunDirectory(Path(directory) / CHECKPOINT_RUN_DIR)
        if run_dir.exists() and _checkpointed_round(run_dir) >= _checkpointed_round(saved):
            return
        incoming = run_dir.path.with_name(f".{run_dir.path.name}.restoring")
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(saved.path, incoming)
    if run_dir.path.exists():
        outgoing = run_dir.path.with_name(f".{run_dir.path.name}.replaced")
        shutil.rmtree(outgoing, ignore_errors=True)
        os.replace(run_dir.path, outgoing)
        os.replace(incoming, run_dir.path)
        shutil.rmtree(outgoing)
    else:
        os.replace(incoming, run_dir.path)


def _report(metrics: dict[str, Any], run_dir: RunDirectory | None = None) -> None:
    """Report one round to Tune, with a copy of the run directory as checkpoint when given."""
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if run_dir is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        shutil.copytree(run_dir.path, Path(directory) / CHECKPOINT_RUN_DIR)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def sampled_config(trial: dict[str, Any], sampled: dict[str, Any]) -> ExperimentConfig:
    """The trial's config with the searched parameters set to the sampled values; ConfigError naming them."""
    tree = copy.deepcopy(trial["config"])
    values = {key: sampled[variable] for variable, key in trial.get("searched", {}).items() if variable in sampled}
    for key, value in values.items():
        set_dotted(tree, key, value)
    try:
        return build_config(tree)
    except ConfigError as err:
        raise ConfigError(f"sampled {', '.join(f'{k}={v!r}' for k, v in values.items())}: {err}") from None


def run_trial(config: dict[str, Any]) -> None:
    """``config``: {"trial": {"config": resolved experiment config, "labels": ..., "searched": {Tune variable:
    dotted key} for a search}, "search": {Tune variable: sampled value}, "sweep": {"name": ..., "id": ...,
    "parent_run_id": ... or None, "reuse_workers": ..., "metric": the search's, "stoppable": a scheduler may
    stop trials}} (see ``sweeps.runner``; a sweep's Tune state from before worker reuse has no
    "reuse_workers": it reuses).

    The last round is reported after the run finished, with the summary the run computed and a copy of
    the finished run directory as checkpoint."""
    sweep = config["sweep"]
    defaults = config.get(SEARCH_DEFAULTS, False)  # a random search's first point: nothing sampled applies
    cfg = sampled_config(config["trial"], {} if defaults else config.get("search", {}))
    run_dir = RunDirectory(Path(cfg.run.output_dir) / run_id(cfg))
    with _one_at_a_time(run_dir) if config["trial"].get("searched") else contextlib.nullcontext():
        _run(config, cfg, run_dir, sweep)


def _one_at_a_time(run_dir: RunDirectory) -> FileLock:
    """A search may draw the same sample twice (a choice, a repeated default): the second trial waits here
    for the first, then finds the run finished and reports its result."""
    locks = run_dir.path.parent / ".samples"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{run_dir.run_id}.lock")


def _run(config: dict[str, Any], cfg: ExperimentConfig, run_dir: RunDirectory, sweep: dict[str, Any]) -> None:
    restore_run_dir(tune.get_checkpoint(), run_dir)
    metric = config["trial"].get("metric") or sweep.get("metric")  # a worst-case backdoor setting: its own
    earlier = run_dir.read_table("metrics") if metric and run_dir.exists() else None
    objective = RunningObjective(metric, earlier.to_pylist() if earlier is not None else []) if metric else None
    state = run_dir.read_state() if objective is not None and run_dir.exists() else {}
    if state.get("status") == "stopped":
        # the scheduler stopped this experiment as another sample (or before an interruption): its verdict
        _report({**_last_row(earlier), **state["summary"], SEARCH_METRIC: objective.add({}), "run_id": run_dir.run_id})
        return
    prepared = prepare_resume(run_dir.path) if run_dir.exists() else prepare(cfg)
    last_round: dict[str, Any] = {"round": cfg.run.rounds}

    latest: dict[str, Any] = {}

    def on_round(metrics: dict[str, Any]) -> None:
        round_index = int(metrics["round"])
        if objective is not None:  # a search's: its metric so far, and which run (the driver settles stopped ones)
            metrics = {**metrics, SEARCH_METRIC: objective.add(metrics), "run_id": run_dir.run_id}
            # rounds without an evaluation carry the last one: a scheduler compares trials on every report
            latest.update({k: v for k, v in metrics.items() if v is not None})
            metrics = {**latest, **{k: v for k, v in metrics.items() if v is not None}}
        if round_index == cfg.run.rounds:
            last_round.update(metrics)
            return
        try:
            _report(metrics, run_dir if is_checkpoint_round(cfg, round_index) else None)
        except SystemExit:  # Tune ends the trial's thread: its scheduler stopped the trial
            if not sweep.get("stoppable"):
                raise
            raise StopRun from None

    workers = _WORKERS if sweep.get("reuse_workers", True) else None  # a key since worker reuse
    try:
        result = execute(prepared, on_round=on_round, parent=_parent_run(sweep), workers=workers)
    except StopRun:
        raise SystemExit(0) from None  # what Tune's report would have raised: the thread ends here
    final = {**last_round, **result.summary}
    if metric:  # from the whole run (also a stored one, which reported no round here)
        final = {**_last_row(result.metrics), **final, "run_id": run_dir.run_id,
                 SEARCH_METRIC: RunningObjective(metric, result.metrics.to_pylist()).add({})}
    _report(final, run_dir)


def _last_row(metrics: Any) -> dict[str, Any]:
    """The last round's metrics with each one's last value (an evaluation carried over rounds without one)."""
    row: dict[str, Any] = {}
    for values in metrics.to_pylist() if metrics is not None else []:
        row.update({k: v for k, v in values.items() if v is not None})
    return row


def _parent_run(sweep: dict[str, Any]) -> ParentRun | None:
    """The sweep's MLflow run, under which the trial's run is a child; None when tracking is off."""
    if not sweep.get("parent_run_id"):
        return None
    trial_tags = {
        "byzlab.sweep": sweep["name"], "byzlab.sweep_id": sweep["id"],
        "byzlab.trial_id": tune.get_context().get_trial_id(),
    }
    return ParentRun(sweep["parent_run_id"], trial_tags)
