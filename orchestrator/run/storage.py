"""A run's directory (docs/architecture.md, "Runs, identity, storage").

``config.yaml`` (resolved config), ``run.json`` (status, MLflow run id, last checkpointed round),
``partition.parquet`` (per-client label histograms), ``metrics.parquet`` (one row per round),
``clients.parquet`` (one row per round x client) and ``checkpoints/latest.pt``.

While a run is going, its rows are appended at every checkpoint as one segment per table under
``segments/`` (``metrics-<first round>.parquet``), so a long run never rewrites what it already wrote; a
finished run has them joined once into ``metrics.parquet`` and ``clients.parquet``. Every file is replaced
atomically, so a run killed at any moment leaves each file either old or new, never torn; segments that
start after the checkpointed round (written just before a crash) are dropped on resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml

TableName = Literal["metrics", "clients"]


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

    def exists(self) -> bool:
        return self.state_path.is_file()

    def create(self, config: dict[str, Any], state: dict[str, Any]) -> None:
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        self.segments_path.mkdir(exist_ok=True)
        _atomic_write(self.config_path, lambda p: p.write_text(yaml.safe_dump(config, sort_keys=False)))
        self.write_state(state)

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text())

    def read_state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text())

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_path, state)

    def update_state(self, **changes: Any) -> None:
        self.write_state({**self.read_state(), **changes})

    def write_table(self, path: Path, table: pa.Table) -> None:
        _atomic_write(path, lambda p: pq.write_table(table, p))

    def _joined_path(self, name: TableName) -> Path:
        return self.metrics_path if name == "metrics" else self.clients_path

    def _segments(self, name: TableName) -> list[tuple[int, Path]]:
        """(first round, path) of each segment of table ``name``, in round order."""
        if not self.segments_path.is_dir():
            return []
        found = [(int(p.stem.rpartition("-")[2]), p) for p in self.segments_path.glob(f"{name}-*.parquet")]
        return sorted(found)

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
            table = pq.read_table(joined)
        else:
            segments = [pq.read_table(path) for _, path in self._segments(name)]
            if not segments:
                return None
            table = concat_segments(segments)
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
        if not self.checkpoint_path.is_file():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
