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
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pyarrow.fs import FileType
from ray import tune

from byzlab.actors.pool import WorkerPool
from byzlab.orchestrator.config import build_config, run_id
from byzlab.orchestrator.run.experiment import execute, is_checkpoint_round, prepare, prepare_resume
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.orchestrator.run.tracking import ParentRun

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


def run_trial(config: dict[str, Any]) -> None:
    """``config``: {"trial": {"config": resolved experiment config, "labels": ...},
    "sweep": {"name": ..., "id": ..., "parent_run_id": ... or None, "reuse_workers": ...}} (see
    ``sweeps.runner``; a sweep's Tune state from before worker reuse has no "reuse_workers": it reuses).

    The last round is reported after the run finished, with the summary the run computed and a copy of
    the finished run directory as checkpoint."""
    cfg = build_config(config["trial"]["config"])
    run_dir = RunDirectory(Path(cfg.run.output_dir) / run_id(cfg))
    restore_run_dir(tune.get_checkpoint(), run_dir)
    prepared = prepare_resume(run_dir.path) if run_dir.exists() else prepare(cfg)
    last_round: dict[str, Any] = {"round": cfg.run.rounds}

    def on_round(metrics: dict[str, Any]) -> None:
        round_index = int(metrics["round"])
        if round_index == cfg.run.rounds:
            last_round.update(metrics)
        else:
            _report(metrics, run_dir if is_checkpoint_round(cfg, round_index) else None)

    workers = _WORKERS if config["sweep"].get("reuse_workers", True) else None  # a key since worker reuse
    result = execute(prepared, on_round=on_round, parent=_parent_run(config["sweep"]), workers=workers)
    _report({**last_round, **result.summary}, run_dir)


def _parent_run(sweep: dict[str, Any]) -> ParentRun | None:
    """The sweep's MLflow run, under which the trial's run is a child; None when tracking is off."""
    if not sweep.get("parent_run_id"):
        return None
    trial_tags = {
        "byzlab.sweep": sweep["name"], "byzlab.sweep_id": sweep["id"],
        "byzlab.trial_id": tune.get_context().get_trial_id(),
    }
    return ParentRun(sweep["parent_run_id"], trial_tags)
