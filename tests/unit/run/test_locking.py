"""One process per run directory, one at a time opening a new SQLite MLflow store (orchestrator/run/locking.py)."""

import multiprocessing
import os

import pytest

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.run.locking import run_lock
from byzlab.orchestrator.run.tracking import default_tracking_uri, store_client


def _hold_then_report(run_path, ready, release):
    with run_lock(run_path):
        ready.set()
        release.wait(30)


def test_a_held_run_refuses_a_second_process_naming_the_holders_pid(tmp_path):
    run_path = tmp_path / "abc123"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_then_report, args=(run_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ConfigError, match=rf"being run by another process \(pid {holder.pid}\).*--resume"):
            with run_lock(run_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with run_lock(run_path):  # free again once the holder is done
        assert (tmp_path / "abc123.lock.pid").read_text() == str(os.getpid())
    assert not any(tmp_path.iterdir())  # nothing left behind


def _open_store(uri, experiment):
    client = store_client(uri)
    client.create_experiment(experiment)


def test_concurrent_first_opens_of_a_sqlite_store_do_not_crash(tmp_path):
    """Two processes creating and migrating one new store at once (MLflow's migration is not safe twice)."""
    uri = default_tracking_uri(tmp_path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_open_store, args=(uri, f"e{i}")) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert {e.name for e in store_client(uri).search_experiments()} >= {"e0", "e1"}


def test_a_ctrl_c_while_a_new_store_is_migrated_leaves_no_half_migrated_store(tmp_path, monkeypatch):
    """Found by benchmarks/interrupts.py: a Ctrl-C during MLflow's migration of a new SQLite store left a
    column added and the schema version not, and every later open failed. The store is made in a side file
    and renamed into place, so an interruption leaves no store, and the next open makes a whole one."""
    import sqlalchemy.engine

    uri = default_tracking_uri(tmp_path)
    original, calls = sqlalchemy.engine.Connection.execute, []

    def interrupted_midway(self, statement, *args, **kwargs):
        calls.append(statement)
        if len(calls) == 40:  # well into the migrations
            raise KeyboardInterrupt
        return original(self, statement, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(sqlalchemy.engine.Connection, "execute", interrupted_midway)
        with pytest.raises(KeyboardInterrupt):
            store_client(uri)
    assert len(calls) == 40 and not (tmp_path / "mlflow.db").exists()
    store_client(uri).create_experiment("after")
    assert [e.name for e in store_client(uri).search_experiments()] == ["after", "Default"]


def test_a_store_that_does_not_open_is_one_line(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match=r"the MLflow store sqlite:///.*mlflow.db does not open \(.*\); move it aside"):
        store_client(default_tracking_uri(tmp_path))


def test_a_run_left_running_by_a_killed_process_is_continued_not_duplicated(tmp_path):
    """A kill between creating the MLflow run and writing run.json left it RUNNING: the next start adopts
    it by its byzlab.run_id tag; a finished one is never adopted (a --force rerun gets a new run)."""
    from mlflow.entities import RunStatus

    from byzlab.orchestrator.config import build_config
    from byzlab.orchestrator.run.tracking import Tracker, open_experiment

    cfg = build_config({}, [f"run.output_dir={tmp_path}"])
    client, experiment_id = open_experiment(cfg)
    orphan = client.create_run(experiment_id, tags={"byzlab.run_id": "r1"}).info.run_id
    assert Tracker.start(cfg, "again", {"byzlab.run_id": "r1"}).mlflow_run_id == orphan
    client.set_terminated(orphan, RunStatus.to_string(RunStatus.FINISHED))
    assert Tracker.start(cfg, "forced", {"byzlab.run_id": "r1"}).mlflow_run_id != orphan
    assert len(client.search_runs([experiment_id], "tags.`byzlab.run_id` = 'r1'")) == 2
