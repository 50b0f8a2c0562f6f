"""``finite_rows``: the round's mask of rows without NaN / Inf, from each row's extremes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlab.aggregators import finite_rows

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def special_values(dtype: torch.dtype) -> list[float]:
    largest = torch.finfo(dtype).max
    return [float("nan"), float("inf"), -float("inf"), largest, -largest, 0.0, -0.0, torch.finfo(dtype).tiny]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 6), d=st.integers(1, 70), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       transposed=st.booleans())
def test_equals_the_rows_where_every_entry_is_finite(n, d, dtype, seed, transposed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype)
    specials = torch.tensor(special_values(dtype), dtype=dtype)
    spots = torch.rand(n, d, generator=g) < 0.05
    x[spots] = specials[torch.randint(0, len(specials), (int(spots.sum()),), generator=g)]
    if transposed:  # a non-contiguous view
        x = x.t().contiguous().t()
    assert torch.equal(finite_rows(x), torch.isfinite(x).all(dim=1))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_one_bad_entry_anywhere_marks_only_its_row(value):
    x = torch.zeros(3, 1000)
    for column in (0, 517, 999):
        x[1].zero_()
        x[1, column] = value
        assert finite_rows(x).tolist() == [True, False, True]


def test_rows_of_huge_finite_values_and_no_columns_are_finite():
    largest = torch.finfo(torch.float32).max
    assert finite_rows(torch.tensor([[largest, -largest], [1.0, 2.0]])).tolist() == [True, True]
    assert finite_rows(torch.empty(2, 0)).tolist() == [True, True]
