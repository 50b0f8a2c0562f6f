"""Locks that keep concurrent processes apart: one process per run directory, and one at a time creating
or migrating a SQLite MLflow store (MLflow's schema migration is not safe to run twice at once).

A run's lock is the file ``<output_dir>/<run id>.lock`` (``filelock``, released when the process ends,
however it ends, and removed when it ends normally); the holder writes its pid beside it
(``<run id>.lock.pid``) so a second process can say who holds the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from byzlab.orchestrator.core.errors import ConfigError

SQLITE_PREFIX = "sqlite:///"


@contextmanager
def run_lock(run_path: Path) -> Iterator[None]:
    """Hold the run directory ``run_path`` for this process; ConfigError (one line, the holder's pid) if
    another process holds it."""
    lock_path = run_path.with_name(run_path.name + ".lock")
    holder_path = run_path.with_name(run_path.name + ".lock.pid")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = holder_path.read_text().strip() if holder_path.is_file() else "unknown"
        raise ConfigError(f"run {run_path} is being run by another process (pid {holder}); wait for it to end, "
                          f"or stop it and continue with `byzlab run --resume {run_path}`") from None
    try:
        holder_path.write_text(str(os.getpid()))
        yield
    finally:
        # Removed while still held: a process that opens the path from now on gets a fresh lock file,
        # which is right, since this one is done with the run.
        holder_path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
        lock.release()


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a SQLite store URI (sqlite:////abs/path -> /abs/path; sqlite:///rel -> rel), None
    for any other store."""
    return Path(tracking_uri.removeprefix(SQLITE_PREFIX)) if tracking_uri.startswith(SQLITE_PREFIX) else None


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise opening a SQLite MLflow store (its creation and schema migration); other stores need
    nothing. Waits for the holder: opening a store takes a second or two."""
    database = sqlite_file(tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(database.name + ".lock")):
        yield
