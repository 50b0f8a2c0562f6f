"""orchestrator.core.columns: numpy's sort on threads gives torch.sort's values (issue 13)."""

import pytest
import torch

from byzlab.orchestrator.core import columns


@pytest.mark.parametrize("case", range(12))
def test_sorted_columns_are_torch_sort_values(case, monkeypatch):
    monkeypatch.setattr(columns, "BLOCK_COLUMNS", 5)  # several blocks on the pool, and a short last one
    g = torch.Generator().manual_seed(case)
    n, c = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 23, (1,), generator=g))
    rows = torch.randn(n, 2 * c, generator=g, dtype=(torch.float32, torch.float64)[case % 2])[:, ::2]  # strided
    if case % 3 == 0:
        rows = rows.round()  # ties
    rows[0, ::4] = float("inf")
    expected = torch.sort(rows, dim=0).values
    original = rows.clone()
    assert torch.equal(columns.sorted_columns(rows) + 0.0, expected + 0.0)  # + 0.0: -0.0 and 0.0 alike
    assert torch.equal(rows, original)


def test_work_runs_once_per_block_on_the_threads():
    seen = []
    columns.on_threads(seen.append, [slice(i, i + 1) for i in range(7)])
    assert sorted(s.start for s in seen) == list(range(7))
