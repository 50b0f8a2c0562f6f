"""A run's directory (docs/architecture.md, "Runs, identity, storage").

``config.yaml`` (resolved config), ``run.json`` (status, MLflow run id, last checkpointed round),
``partition.parquet`` (per-client label histograms), ``metrics.parquet`` (one row per round),
``clients.parquet`` (one row per round x client) and ``checkpoints/latest.pt``.

While a run is going, its rows are appended at every checkpoint as one segment per table under
``segments/`` (``metrics-<first round>.parquet``), so a long run never rewrites what it already wrote; a
finished run has them joined once into ``metrics.parquet`` and ``clients.parquet``. Every file is replaced
atomically, so a run killed at any moment leaves each file either old or new, never torn; segments that
start after the checkpointed round (written just before a crash) are dropped on resume.

A file that is damaged all the same (edited, truncated by a full disk, copied from another run) is a
:class:`DamagedRunError` when it is read: one line naming the file, what is wrong with it and how to
recover (restore the file, or start the run over with ``--force``), never a parser's traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml

from byzlab.orchestrator.config import read_yaml
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.plugins import first_line

TableName = Literal["metrics", "clients"]
STATUSES = ("created", "running", "interrupted", "stopped", "finished")  # stopped: early, by a search's scheduler
START_OVER = "start the run over with `byzlab run <its config> --force`"
RESTORE = "restore {file} from a copy, or " + START_OVER


class DamagedRunError(ConfigError):
    """A file of a run directory that cannot be used as it is; the message names it and how to recover."""


def _first(err: BaseException) -> str:
    """An error's first line, short enough for a one-line message."""
    line = first_line(err)
    return line if len(line) <= 160 else line[:157] + "..."


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2)))


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with possibly different keys (e.g. test metrics only on eval rounds) -> one table, nulls where
    a row lacks a key."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return pa.table({key: [row.get(key) for row in rows] for key in keys})


def concat_segments(tables: list[pa.Table]) -> pa.Table:
    """Tables whose columns may differ (a metric that first appears in a later segment): one table,
    columns in order of first appearance, nulls where a segment lacks a column."""
    return pa.concat_tables(tables, promote_options="default")


def check_output_dir(output_dir: Path, field: str = "run.output_dir") -> None:
    """``output_dir`` (the config's ``field``) is a directory, or can be made one, where this process may
    write: ConfigError naming it otherwise (before anything is written)."""
    existing = next((p for p in (output_dir, *output_dir.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{field} '{output_dir}': '{existing}' is a file, not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field} '{output_dir}': this user cannot write in '{existing}'")


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.state_path = self.path / "run.json"
        self.partition_path = self.path / "partition.parquet"
        self.metrics_path = self.path / "metrics.parquet"
        self.clients_path = self.path / "clients.parquet"
        self.segments_path = self.path / "segments"
        self.checkpoint_path = self.path / "checkpoints" / "latest.pt"

    @property
    def run_id(self) -> str:
        return self.path.name

    def damaged(self, path: Path, problem: str, remedy: str = START_OVER) -> DamagedRunError:
        """The error for file ``path`` of this directory: what is wrong and what to do."""
        name = path.relative_to(self.path) if path.is_relative_to(self.path) else path
        return DamagedRunError(f"run directory {self.path} is damaged: {name} {problem}; "
                               f"{remedy.format(file=name)}")

    def exists(self) -> bool:
        return self.state_path.is_file()

    def create(self, config: dict[str, Any], state: dict[str, Any]) -> None:
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        self.segments_path.mkdir(exist_ok=True)
        _atomic_write(self.config_path, lambda p: p.write_text(yaml.safe_dump(config, sort_keys=False)))
        self.write_state(state)

    def read_config(self) -> dict[str, Any]:
        """The resolved config the run was created with (``config.yaml``), as written."""
        if not self.config_path.is_file():
            raise self.damaged(self.config_path, "is missing", RESTORE)
        try:
            return read_yaml(self.config_path)
        except ConfigError as err:
            raise self.damaged(self.config_path, f"does not read: {err}", RESTORE) from None

    def read_state(self) -> dict[str, Any]:
        """``run.json``: a JSON object whose ``status`` is one of STATUSES and whose ``round`` (if any) is a
        round number."""
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # ValueError: JSON or UTF-8 decoding
            raise self.damaged(self.state_path, f"is not a JSON record ({_first(err)})") from None
        if not isinstance(state, dict):
            raise self.damaged(self.state_path, f"holds a {type(state).__name__}, not a JSON object")
        if state.get("status") not in STATUSES:
            found = f"status {state['status']!r}" if "status" in state else "no status"
            raise self.damaged(self.state_path, f"has {found} (one of {', '.join(STATUSES)} expected)")
        round_index = state.get("round", 0)
        if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
            raise self.damaged(self.state_path, f"has round {round_index!r} (a round number expected)")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_path, state)

    def update_state(self, **changes: Any) -> None:
        self.write_state({**self.read_state(), **changes})

    def write_table(self, path: Path, table: pa.Table) -> None:
        _atomic_write(path, lambda p: pq.write_table(table, p))

    def _joined_path(self, name: TableName) -> Path:
        return self.metrics_path if name == "metrics" else self.clients_path

    def _segments(self, name: TableName) -> list[tuple[int, Path]]:
        """(first round, path) of each segment of table ``name``, in round order (other files are ignored)."""
        if not self.segments_path.is_dir():
            return []
        pattern = re.compile(rf"{name}-(\d+)\.parquet")
        found = [(int(m.group(1)), p) for p in self.segments_path.iterdir() if (m := pattern.fullmatch(p.name))]
        return sorted(found)

    def _read_parquet(self, path: Path) -> pa.Table:
        """One of the run's tables; DamagedRunError naming it when it is not Parquet or has no round column."""
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise self.damaged(path, f"is not a readable Parquet table ({_first(err)})", RESTORE) from None
        if "round" not in table.column_names:
            raise self.damaged(path, "has no round column", RESTORE)
        return table

    def append_segment(self, name: TableName, first_round: int, table: pa.Table) -> None:
        """Store the rows of rounds ``first_round``.. of table ``name`` (replacing a segment that started
        there before: a rerun of rounds after a resume)."""
        self.segments_path.mkdir(parents=True, exist_ok=True)
        self.write_table(self.segments_path / f"{name}-{first_round:07d}.parquet", table)

    def rewind(self, round_index: int) -> None:
        """Before a resume from the checkpoint of ``round_index``: keep only the rows of rounds up to it,
        as segments. Segments of later rounds (written just before a crash) go; joined tables (a run
        killed between joining and saying finished) become the first segment again."""
        for name in ("metrics", "clients"):
            joined = self._joined_path(name)
            if joined.is_file():
                table = self.read_table(name, up_to_round=round_index)
                for _, path in self._segments(name):
                    path.unlink()
                self.append_segment(name, 1, table)
                joined.unlink()
            for first_round, path in self._segments(name):
                if first_round > round_index:
                    path.unlink()

    def read_table(self, name: TableName, up_to_round: int | None = None) -> pa.Table | None:
        """Table ``name`` (rows of rounds <= ``up_to_round`` when given): the joined file of a finished
        run, else its segments; None if nothing was written yet."""
        joined = self._joined_path(name)
        if joined.is_file():
            table = self._read_parquet(joined)
        else:
            segments = [self._read_parquet(path) for _, path in self._segments(name)]
            if not segments:
                return None
            try:
                table = concat_segments(segments)
            except (pa.ArrowException, ValueError) as err:  # a column's type differs between segments
                raise self.damaged(self.segments_path, f"hold {name} segments that do not join ({_first(err)})",
                                   RESTORE) from None
        if up_to_round is not None:
            table = table.filter(pc.less_equal(table["round"], up_to_round))
        return table

    def join_segments(self) -> dict[TableName, pa.Table]:
        """Write ``metrics.parquet`` and ``clients.parquet`` from the segments, then remove them."""
        tables: dict[TableName, pa.Table] = {}
        for name in ("metrics", "clients"):
            tables[name] = self.read_table(name)
            if self._segments(name):
                self.write_table(self._joined_path(name), tables[name])
        shutil.rmtree(self.segments_path, ignore_errors=True)
        return tables

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _atomic_write(self.checkpoint_path, lambda p: torch.save(checkpoint, p))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint (None before the first); DamagedRunError when the file does not load, is not a
        checkpoint of this run, or holds NaN or infinite parameters."""
        if not self.checkpoint_path.is_file():
            return None
        try:
            checkpoint = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a torn or foreign file makes the unpickler raise anything
            raise self.damaged(self.checkpoint_path, f"does not load ({_first(err)})", RESTORE) from None
        self._check_checkpoint(checkpoint)
        return checkpoint

    def _check_checkpoint(self, checkpoint: Any) -> None:
        """What resuming reads: the round, this run's id, the server's flat parameters (finite) and the
        optimizer's tensors (finite)."""
        problem = None
        server = checkpoint.get("server") if isinstance(checkpoint, dict) else None
        params = server.get("global_params") if isinstance(server, dict) else None
        round_index = checkpoint.get("round") if isinstance(checkpoint, dict) else None
        if not isinstance(params, torch.Tensor) or params.ndim != 1 or not params.is_floating_point():
            problem = "is not a byzlab checkpoint (no server parameters)"
        elif not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
            problem = f"has round {round_index!r} (a round number expected)"
        elif checkpoint.get("run_id") not in (None, self.run_id, self._created_as()):
            problem = f"is the checkpoint of run {checkpoint['run_id']}, not of this one"
        elif not all(torch.isfinite(t).all() for t in (params, *_optimizer_tensors(server))):
            problem = "holds NaN or infinite parameters (a diverged or corrupted model cannot continue)"
        if problem:
            raise self.damaged(self.checkpoint_path, problem, RESTORE)

    def _created_as(self) -> str | None:
        """The run id run.json was created with (a copy of the directory may carry another name)."""
        try:
            return self.read_state().get("run_id")
        except DamagedRunError:
            return None

    def check_resumable(self, num_params: int, rounds: int) -> None:
        """Before a resume: the checkpoint (if any) loads and fits a model of ``num_params`` flat parameters
        and a run of ``rounds`` rounds, and the rows that ``rewind`` keeps read. DamagedRunError otherwise."""
        checkpoint = self.load_checkpoint()
        start = 0
        if checkpoint is not None:
            size, start = checkpoint["server"]["global_params"].numel(), checkpoint["round"]
            if size != num_params:
                raise self.damaged(self.checkpoint_path, f"holds {size} parameters, but the run's model has "
                                   f"{num_params} (a checkpoint of another model)", RESTORE)
            if start > rounds:
                raise self.damaged(self.checkpoint_path, f"is of round {start}, after the run's last ({rounds})",
                                   RESTORE)
        for name in ("metrics", "clients"):
            joined = self._joined_path(name)
            kept = [joined] if joined.is_file() else [path for first, path in self._segments(name) if first <= start]
            for path in kept:
                self._read_parquet(path)

    def check_finished(self) -> None:
        """Before reporting a finished run: its metrics read and hold at least one test accuracy."""
        table = self.read_table("metrics")
        found = table is not None and "test_accuracy" in table.column_names
        accuracies = table.column("test_accuracy").to_pylist() if found else []
        if not any(a is not None and math.isfinite(a) for a in accuracies):
            raise self.damaged(self.metrics_path, "holds no test accuracy, though run.json says finished")


def _optimizer_tensors(server: dict[str, Any]) -> list[torch.Tensor]:
    """The server optimizer's state tensors (a checkpoint from before server optimizers: FedAvgM's velocity)."""
    return _tensors(server.get("optimizer", server.get("velocity")))


def _tensors(state: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a nested state (dicts, lists)."""
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors(value)]
    return []
