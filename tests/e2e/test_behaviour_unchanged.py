"""A refactor changes no number: three fixed runs reproduce, bit for bit, the metrics stored before the
architecture refactor (every non-timing column of metrics.parquet and all of clients.parquet).

The stored runs were recorded with the placement of before issue 13 (one client actor, a 1-CPU server); the
default placement (two client actors, the server on their two CPUs) computes every number bit for bit the
same, so the placement's own bookkeeping (which actor hosted each client) is left out of the comparison.

Bit for bit holds on one kind of machine only: torch picks its CPU kernels by the instruction set (AVX2,
AVX-512) and MKL its own by the CPU, and their floating-point sums are ordered differently. So the tables are
stored once per kind of machine, each set under ``recorded/<set>/`` with ``machine.json`` saying what recorded
it, and a run must equal one set bit for bit. A new set is recorded from code that already matched a set on
its machine (a landed commit), never from a change under test.

The configs live in ``tests/e2e/fixtures/behaviour/``, with ``run_ids.json``: the run ids that ten configs had
before the refactor. Re-record only for a change that is meant to change numbers, and say so in the commit:
``python tests/e2e/test_behaviour_unchanged.py SET [CASE ...]`` (every set, on its own kind of machine).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, also when this file runs as the recorder
from machine_kind import describe_machine, stored_behaviour  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"
CASES = ("quickstart", "fmnist_lasa_byzmean", "digits_fedra_signflip_quantity")
# Every set is recorded with the placement of the first (one client actor, a 1-CPU server), so that the
# placement's columns are those of the first set too (tests/e2e/test_worker_reuse_e2e.py compares them).
RECORDING_PLACEMENT = ("run.client_actors=1", "run.client_actor_cpus=1", "run.server_cpus=1")
TABLES = ("metrics", "clients")


def run_case(name: str, output_dir: Path, overrides: tuple[str, ...] = ()) -> dict[str, pa.Table]:
    """Run the fixture config ``name`` from scratch; its deterministic tables by name."""
    from byzlab.orchestrator.config import build_config
    from byzlab.orchestrator.run.experiment import run_experiment
    from byzlab.orchestrator.run.storage import RunDirectory

    raw = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text()) or {}
    cfg = build_config(raw, [f"run.output_dir={output_dir}", "tracking.enabled=false", *overrides])
    run_dir = RunDirectory(run_experiment(cfg).run_dir)
    metrics = pq.read_table(run_dir.metrics_path)
    timing = [c for c in metrics.column_names if c.endswith("_seconds")]  # wall clock differs run to run
    return {"metrics": metrics.drop_columns(timing), "clients": pq.read_table(run_dir.clients_path)}


def numbers(table: pa.Table) -> pa.Table:
    """The table without the placement's columns: which actor hosted each client (``actor``, ``actorK_clients``)."""
    return table.drop_columns([c for c in table.column_names if c == "actor" or re.fullmatch(r"actor\d+_clients", c)])


def bitwise_differences(expected: pa.Table, actual: pa.Table) -> list[str]:
    """Columns that differ: names, null positions, or any value's bits (NaN equals NaN of the same bits)."""
    if expected.column_names != actual.column_names:
        return [f"columns {expected.column_names} != {actual.column_names}"]
    differences = []
    for name in expected.column_names:
        old, new = expected.column(name).combine_chunks(), actual.column(name).combine_chunks()
        if old.type != new.type or not pc.is_null(old).equals(pc.is_null(new)):
            differences.append(f"{name}: type or null positions")
            continue
        old_values = pc.drop_null(old).to_numpy(zero_copy_only=False)
        new_values = pc.drop_null(new).to_numpy(zero_copy_only=False)
        if old_values.dtype.kind == "f":
            old_values, new_values = old_values.view(f"u{old_values.itemsize}"), new_values.view(f"u{old_values.itemsize}")
        if not np.array_equal(old_values, new_values):
            differences.append(f"{name}: values")
    return differences


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("name", CASES)
def test_numbers_match_the_stored_run(name, tmp_path):
    if name.startswith("fmnist"):
        from byzlab.orchestrator.data.datasets import DEBIAN_FASHION_MNIST_DIR

        if not DEBIAN_FASHION_MNIST_DIR.is_dir():
            pytest.skip("needs Debian's dataset-fashion-mnist (installed by .ci/run)")
    tables = run_case(name, tmp_path)
    differences = differences_from_every_set(name, tables)
    assert differences is None, f"{name} equals no recorded set bit for bit on this machine ({describe_machine()}): {differences}"


def differences_from_every_set(name: str, tables: dict[str, pa.Table], view=numbers) -> dict[str, list[str]] | None:
    """None when ``tables`` (some of ``TABLES``, by name) equal one recorded set of the run ``name`` bit for
    bit, as ``view`` shows them; else each set's differing columns."""
    differences = {}
    for table, actual in tables.items():
        for recorded, stored in stored_behaviour(name, table).items():
            differences.setdefault(recorded, []).extend(
                f"{table}.parquet {column}" for column in bitwise_differences(view(stored), view(actual)))
    return None if any(not columns for columns in differences.values()) else differences


@pytest.mark.parametrize("case", json.loads((FIXTURES / "run_ids.json").read_text()), ids=lambda c: " ".join(c["overrides"]) or "defaults")
def test_run_ids_are_those_of_before_the_refactor(case):
    """Configs keep their run ids (recorded before the registries), so an existing finished run is still found."""
    from byzlab.orchestrator.config import build_config, run_id

    assert run_id(build_config({}, case["overrides"])) == case["run_id"]


def test_bitwise_comparison_sees_one_ulp_and_nan_positions():
    base = pa.table({"x": [1.0, float("nan"), None], "n": [1, 2, 3]})
    assert bitwise_differences(base, base) == []
    one_ulp = pa.table({"x": [np.nextafter(1.0, 2.0), float("nan"), None], "n": [1, 2, 3]})
    assert bitwise_differences(base, one_ulp) == ["x: values"]
    moved_null = pa.table({"x": [1.0, None, float("nan")], "n": [1, 2, 3]})
    assert bitwise_differences(base, moved_null) == ["x: type or null positions"]
    assert bitwise_differences(base, base.drop_columns(["n"])) != []


if __name__ == "__main__":  # record (or re-record) one set on this machine: SET [CASE ...]
    import ray

    from machine_kind import BEHAVIOUR_SETS

    target = BEHAVIOUR_SETS / sys.argv[1]
    target.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    for case in sys.argv[2:] or CASES:
        with tempfile.TemporaryDirectory() as directory:
            for table_name, table in run_case(case, Path(directory), RECORDING_PLACEMENT).items():
                pq.write_table(table, target / f"{case}.{table_name}.parquet")
        print(f"recorded {case} in {target}")
    (target / "machine.json").write_text(json.dumps(describe_machine(), indent=1) + "\n")
