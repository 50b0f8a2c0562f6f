"""A run directory's tables: appended per checkpoint as segments, joined once when the run finishes,
rewound to the checkpoint on resume."""

import pyarrow as pa
import pyarrow.parquet as pq

from byzlab.orchestrator.run.storage import RunDirectory, rows_to_table


def _rows(first, last, **extra):
    return rows_to_table([{"round": r, "train_loss": 1.0 / r, **extra} for r in range(first, last + 1)])


def test_segments_read_as_one_table_with_columns_in_order_of_first_appearance(tmp_path):
    run_dir = RunDirectory(tmp_path)
    assert run_dir.read_table("metrics") is None
    run_dir.append_segment("metrics", 1, _rows(1, 5))
    run_dir.append_segment("metrics", 6, _rows(6, 10, test_accuracy=0.5))  # a metric that appears later
    table = run_dir.read_table("metrics")
    assert table.column_names == ["round", "train_loss", "test_accuracy"]
    assert table["round"].to_pylist() == list(range(1, 11))
    assert table["test_accuracy"].to_pylist() == [None] * 5 + [0.5] * 5
    assert run_dir.read_table("metrics", up_to_round=7)["round"].to_pylist() == list(range(1, 8))


def test_appending_never_rewrites_an_earlier_segment(tmp_path):
    run_dir = RunDirectory(tmp_path)
    run_dir.append_segment("metrics", 1, _rows(1, 5))
    first = run_dir.segments_path / "metrics-0000001.parquet"
    before = first.stat().st_mtime_ns, first.read_bytes()
    run_dir.append_segment("metrics", 6, _rows(6, 10))
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before


def test_join_writes_the_tables_once_and_removes_the_segments(tmp_path):
    run_dir = RunDirectory(tmp_path)
    run_dir.append_segment("metrics", 1, _rows(1, 5))
    run_dir.append_segment("metrics", 6, _rows(6, 8, test_accuracy=0.9))
    clients = pa.table({"round": [1, 1], "client": [0, 1]})
    run_dir.append_segment("clients", 1, clients)
    tables = run_dir.join_segments()
    assert not run_dir.segments_path.exists()
    assert pq.read_table(run_dir.metrics_path).equals(tables["metrics"])
    assert tables["metrics"]["round"].to_pylist() == list(range(1, 9))
    assert pq.read_table(run_dir.clients_path).equals(clients)
    assert run_dir.read_table("metrics").equals(tables["metrics"])  # a finished run reads its joined table


def test_rewind_drops_the_rows_past_the_checkpoint(tmp_path):
    """A crash between writing a segment and the checkpoint leaves a segment past the checkpoint."""
    run_dir = RunDirectory(tmp_path)
    run_dir.append_segment("metrics", 1, _rows(1, 5))
    run_dir.append_segment("metrics", 6, _rows(6, 10))
    run_dir.append_segment("clients", 6, pa.table({"round": [6]}))
    run_dir.rewind(5)
    assert run_dir.read_table("metrics")["round"].to_pylist() == list(range(1, 6))
    assert run_dir.read_table("clients") is None


def test_rewind_turns_joined_tables_back_into_segments(tmp_path):
    """A run killed after joining its tables but before saying finished resumes from its checkpoint."""
    run_dir = RunDirectory(tmp_path)
    run_dir.append_segment("metrics", 1, _rows(1, 5))
    run_dir.append_segment("metrics", 6, _rows(6, 10))
    run_dir.append_segment("clients", 1, pa.table({"round": [1, 10]}))
    run_dir.join_segments()
    run_dir.rewind(8)
    assert not run_dir.metrics_path.exists() and not run_dir.clients_path.exists()
    assert run_dir.read_table("metrics")["round"].to_pylist() == list(range(1, 9))
    assert run_dir.read_table("clients")["round"].to_pylist() == [1]
