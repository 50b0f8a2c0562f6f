"""What decides a computation's last bits besides the code: torch picks its CPU kernels by the instruction
set (AVX2, AVX-512) and MKL its own by the CPU, and their floating-point sums are ordered differently. The
tests that compare outputs bit for bit with stored ones keep one stored set per kind of machine, each saying
what recorded it."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


def describe_machine() -> dict[str, str]:
    import numpy as np
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return {"torch cpu capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": names[0] if names else platform.processor(), "machine": platform.machine(),
            "torch": torch.__version__, "numpy": np.__version__}


BEHAVIOUR_SETS = Path(__file__).parent / "e2e" / "fixtures" / "behaviour" / "recorded"


def stored_behaviour(name: str, table: str) -> dict[str, pa.Table]:
    """The stored table (``metrics`` or ``clients``) of the behaviour run ``name``, by recorded set."""
    import pyarrow.parquet as pq

    return {recorded.name: pq.read_table(recorded / f"{name}.{table}.parquet")
            for recorded in sorted(BEHAVIOUR_SETS.iterdir()) if recorded.is_dir()}


def stored_first_rounds(name: str, rounds: int) -> list[list[dict[str, float]]]:
    """Test accuracy and loss of the behaviour run ``name``'s first ``rounds`` rounds, one list per recorded set."""
    return [table.select(["test_accuracy", "test_loss"]).to_pylist()[:rounds]
            for table in stored_behaviour(name, "metrics").values()]
