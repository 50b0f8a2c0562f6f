"""A run's directory (DESIGN.md, "Runs, identity, storage").

``config.yaml`` (resolved config), ``run.json`` (status, MLflow run id, last checkpointed round),
``partition.parquet`` (per-client label histograms), ``metrics.parquet`` (one row per round),
``clients.parquet`` (one row per round x client) and ``checkpoints/latest.pt``. Every file is replaced
atomically, so a run killed at any moment leaves each file either old or new, never torn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml


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


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.state_path = self.path / "run.json"
        self.partition_path = self.path / "partition.parquet"
        self.metrics_path = self.path / "metrics.parquet"
        self.clients_path = self.path / "clients.parquet"
        self.checkpoint_path = self.path / "checkpoints" / "latest.pt"

    @property
    def run_id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.state_path.is_file()

    def create(self, config: dict[str, Any], state: dict[str, Any]) -> None:
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
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

    def read_table(self, path: Path, up_to_round: int | None = None) -> pa.Table | None:
        """The stored table (rows of rounds <= ``up_to_round`` when given), or None if never written."""
        if not path.is_file():
            return None
        table = pq.read_table(path)
        if up_to_round is not None:
            table = table.filter(pc.less_equal(table["round"], up_to_round))
        return table

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _atomic_write(self.checkpoint_path, lambda p: torch.save(checkpoint, p))

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
