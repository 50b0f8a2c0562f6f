"""aggregators.numerics: the shared numerics, values worked by hand, and the "one copy" structure (no rule
defines a numerics function again or imports a sibling rule)."""

import ast
import math
from pathlib import Path

import pytest
import torch

from byzlab.aggregators import numerics

AGGREGATORS = Path(__file__).resolve().parents[3] / "aggregators"


# ------------------------------------------------------------------------------- coordinates and medians


def test_coordinate_chunks_cover_the_coordinates_in_budget_sized_slices(monkeypatch):
    # budget 7 elements, 3 per coordinate -> 2 coordinates per slice
    assert list(numerics.coordinate_chunks(5, 3, budget=7)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(numerics.coordinate_chunks(5, 3, chunk=4)) == [slice(0, 4), slice(4, 5)]  # chunk wins
    assert list(numerics.coordinate_chunks(3, 100, budget=7)) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # >= 1
    assert list(numerics.coordinate_chunks(0, 3)) == []
    monkeypatch.setattr(numerics, "CHUNK_ELEMENTS", 6)  # the default budget is read at call time
    assert list(numerics.coordinate_chunks(4, 3)) == [slice(0, 2), slice(2, 4)]


def test_medians_of_odd_and_even_counts():
    odd = torch.tensor([[1.0, -4.0], [2.0, 0.0], [7.0, 9.0]])  # sorted down dim 0
    assert numerics.sorted_median(odd, dim=0).tolist() == [2.0, 0.0]
    even = torch.tensor([[1.0], [2.0], [6.0], [7.0]])
    assert numerics.sorted_median(even, dim=0).tolist() == [4.0]  # (2 + 6) / 2, not the lower 2
    assert numerics.median_last(torch.tensor([[5.0, 1.0, 3.0, 2.0]])).tolist() == [2.5]  # sorts first


@pytest.mark.parametrize("case", range(24))
def test_selected_medians_are_bitwise_the_sorted_medians(case, monkeypatch):
    """Issue 13: medians by selection (numpy's introselect, blocks of rows on threads) equal, bit for bit, the
    definition on sorted values, for odd and even counts, ties, float64, infinities and several blocks."""
    monkeypatch.setattr(numerics, "SELECTION_ROWS", 7)  # several blocks, and a short last one
    g = torch.Generator().manual_seed(case)
    n, d = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
    rows = torch.randn(n, d, generator=g, dtype=(torch.float32, torch.float64)[case % 2])
    if case % 3 == 0:
        rows = rows.round()  # ties
    if case % 4 == 1:
        rows[0, ::3] = float("inf")
        rows[-1, ::5] = -float("inf")
    expected = numerics.sorted_median(torch.sort(rows, dim=0).values, dim=0)
    original = rows.clone()
    assert torch.equal(numerics.coordinate_median(rows), expected)
    assert torch.equal(numerics.median_last(rows.T), expected)
    assert torch.equal(numerics.median_last(rows.T.contiguous().reshape(d, 1, n)), expected.reshape(d, 1))
    assert torch.equal(rows, original)  # selected in a copy


def test_selected_median_of_two_middle_values_near_the_largest_float_does_not_overflow():
    big = torch.finfo(torch.float32).max
    rows = torch.tensor([[big], [big], [0.0], [big * 0.5]])
    assert numerics.coordinate_median(rows).item() == pytest.approx(big * 0.75, rel=1e-6)


def test_trimmed_mean_drops_k_values_per_side():
    rows = torch.tensor([[1.0, 0.0], [100.0, 4.0], [2.0, 4.0], [3.0, 8.0], [-51.0, 4.0]])
    # column 0 sorted: -51, 1, 2, 3, 100 -> k = 1 keeps 1, 2, 3 -> 2; column 1: 0, 4, 4, 4, 8 -> 4
    assert numerics.trimmed_mean(rows, 1).tolist() == [2.0, 4.0]
    assert numerics.trimmed_mean(rows, 0).tolist() == [11.0, 4.0]  # the plain mean, 55 / 5
    assert numerics.trimmed_mean(rows, 2).tolist() == [2.0, 4.0]  # the median of 5


def test_repeated_median_inner_slopes_by_hand():
    # z = (0, 1, 3) at ranks 0, 1, 2:
    #   i = 0: slopes (1 - 0)/1 = 1, (3 - 0)/2 = 1.5        -> median 1.25
    #   i = 1: (0 - 1)/(0 - 1) = 1, (3 - 1)/(2 - 1) = 2      -> 1.5
    #   i = 2: (0 - 3)/(0 - 2) = 1.5, (1 - 3)/(1 - 2) = 2    -> 1.75
    z = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    inner = numerics.repeated_median_slopes(z)
    assert inner.tolist() == [[1.25, 1.5, 1.75], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("case", range(24))
def test_repeated_median_slopes_are_bitwise_the_medians_of_the_sorted_off_diagonal_slopes(case, monkeypatch):
    """Issue 13: the CPU's blocked selection (the diagonal left in as NaN) equals, bit for bit, the definition:
    each row's K - 1 slopes sorted, their median taken; odd and even K, ties, float64, slopes that overflow
    to +-inf (and medians of +inf and -inf: NaN), several blocks."""
    monkeypatch.setattr(numerics, "SLOPE_COORDINATES", 7)  # several blocks, and a short last one
    g = torch.Generator().manual_seed(case)
    c, k = int(torch.randint(0, 40, (1,), generator=g)), int(torch.randint(2, 14, (1,), generator=g))
    z = torch.randn(c, k, generator=g, dtype=(torch.float32, torch.float64)[case % 2])
    if case % 3 == 0:
        z = z.round()  # ties: zero slopes
    if case % 4 == 1:
        z = z * torch.finfo(z.dtype).max / 3  # differences past the largest value: infinite slopes
    z = torch.sort(z, dim=-1).values
    x = torch.arange(k, dtype=z.dtype)
    expected = torch.empty(c, k, dtype=z.dtype)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        slopes = (z[:, others] - z[:, i : i + 1]) / (x[others] - i)
        expected[:, i] = numerics.sorted_median(torch.sort(slopes, dim=-1).values, dim=-1)
    # equal values (0.0 and -0.0 are: selected and sorted, they may come in either order); NaN = inf - inf
    torch.testing.assert_close(numerics.repeated_median_slopes(z), expected, rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------------- distances and Krum

POINTS = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)


def test_squared_distances_from_gram_by_hand_and_batched():
    gram = POINTS @ POINTS.T
    expected = torch.tensor([[0.0, 25.0, 1.0], [25.0, 0.0, 20.0], [1.0, 20.0, 0.0]], dtype=torch.float64)
    assert torch.equal(numerics.squared_distances_from_gram(gram), expected)
    batched = numerics.squared_distances_from_gram(torch.stack([gram, 4 * gram]))
    assert torch.equal(batched, torch.stack([expected, 4 * expected]))  # 2x the points: 4x the squares


def test_pairwise_distances_squared_euclidean_and_l1():
    squared = numerics.pairwise_distances(POINTS, 2)
    assert squared.tolist() == [[0.0, 25.0, 1.0], [25.0, 0.0, 20.0], [1.0, 20.0, 0.0]]
    l1 = numerics.pairwise_distances(POINTS, 1)  # |3| + |4| = 7, |1| = 1, |2| + |4| = 6
    assert l1.tolist() == [[0.0, 7.0, 1.0], [7.0, 0.0, 6.0], [1.0, 6.0, 0.0]]
    assert squared.dtype == torch.float64 and torch.equal(l1, l1.T)
    chunked = numerics.pairwise_distances(torch.randn(6, 50, generator=torch.Generator().manual_seed(0)), 2, chunk=7)
    assert torch.equal(chunked, chunked.T) and torch.all(chunked.diagonal() == 0)


@pytest.mark.parametrize("block", [1, 3, 4096])
def test_l1_distances_over_column_blocks_agree_with_cdist_and_are_exactly_symmetric(block, monkeypatch):
    monkeypatch.setattr(numerics, "L1_BLOCK_COLUMNS", block)
    rows = torch.randn(9, 257, generator=torch.Generator().manual_seed(block))
    dist = numerics.pairwise_distances(rows, 1)
    torch.testing.assert_close(dist, torch.cdist(rows.double(), rows.double(), p=1.0).float(), rtol=1e-6, atol=0)
    assert torch.equal(dist, dist.T) and dist.diagonal().eq(0).all()
    assert dist[0, 1].item() == pytest.approx((rows[0].double() - rows[1].double()).abs().sum().item(), rel=1e-6)


def test_pairwise_distances_of_a_huge_row_are_infinite_not_nan_and_leave_the_others_exact():
    rows = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1e30, -1e30]])  # float32: squares overflow
    dist = numerics.pairwise_distances(rows, 2)
    assert dist.dtype == torch.float32 and not torch.isnan(dist).any()
    assert dist[0, 1] == 25.0 and math.isinf(dist[0, 2]) and math.isinf(dist[2, 1])


def test_lexicographic_order_breaks_ties_by_the_second_key_then_the_index():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    ties = torch.tensor([5.0, 5.0, 2.0, 9.0, 5.0])
    # score 0: rows 1 (tie 5), 3 (tie 9); score 1: row 2 (tie 2), then rows 0 and 4 (tie 5) by index
    assert numerics.lexicographic_order(scores, ties).tolist() == [1, 3, 2, 0, 4]


# Five updates: (0,0) (1,0) (0,2) (3,1) (10,-5); squared distances d01=1 d02=4 d03=10 d04=125 d12=5 d13=5
# d14=106 d23=10 d24=149 d34=85
FIVE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [10.0, -5.0]])


def test_krum_order_by_hand():
    dist = numerics.pairwise_distances(FIVE, 2)
    # f = 1: n - f - 2 = 2 neighbours: s = (1+4, 1+5, 4+5, 5+10, 85+106) = (5, 6, 9, 15, 191)
    assert numerics.krum_order(dist, 1).tolist() == [0, 1, 2, 3, 4]
    # without row 0 (r = 4): one neighbour each: s1 = 5, s2 = 5, s3 = 5, s4 = 85; the tie at 5 goes by the
    # total distance to the other active rows: t1 = 5+5+106 = 116, t2 = 5+10+149 = 164, t3 = 5+10+85 = 100
    active = torch.tensor([False, True, True, True, True])
    assert numerics.krum_order(dist, 1, active).tolist() == [3, 1, 2, 4]
    assert numerics.krum_order(dist, 1, torch.tensor([False, False, True, False, False])).tolist() == [2]


# ------------------------------------------------------------------------------------------ client weights


def test_claimed_counts_are_float64_with_negative_claims_as_zero():
    counts = numerics.claimed_counts(torch.tensor([3.0, -2.0, 0.0]), 3, "cpu")
    assert counts.dtype == torch.float64 and counts.tolist() == [3.0, 0.0, 0.0]
    assert numerics.claimed_counts(None, 2, "cpu").tolist() == [1.0, 1.0]
    assert math.isnan(numerics.claimed_counts(torch.tensor([math.nan]), 1, "cpu")[0])


def test_client_weights_by_sample_count_or_uniform():
    like = torch.zeros(2, 5)
    weights = numerics.client_weights("samples", torch.tensor([1.0, 3.0]), like)
    assert weights.dtype == torch.float32 and weights.tolist() == [0.25, 0.75]
    assert numerics.client_weights("samples", torch.tensor([-5.0, 2.0]), like).tolist() == [0.0, 1.0]
    assert numerics.client_weights("samples", torch.tensor([0.0, -1.0]), like).tolist() == [0.5, 0.5]  # sum 0
    assert numerics.client_weights("uniform", torch.tensor([1.0, 3.0]), like).tolist() == [0.5, 0.5]
    assert numerics.client_weights("samples", None, like.double()).dtype == torch.float64


def test_clip_scales_project_onto_the_ball():
    scales = numerics.clip_scales(torch.tensor([0.0, 0.5, 2.0, 4.0]), 1.0)
    assert scales.tolist() == [1.0, 1.0, 0.5, 0.25]


# ---------------------------------------------------------------------------------------------- randomness


def test_generator_or_seeded():
    given = torch.Generator().manual_seed(3)
    assert numerics.generator_or_seeded(given, 0) is given
    stand_in = numerics.generator_or_seeded(None, 7)
    assert torch.equal(torch.rand(4, generator=stand_in), torch.rand(4, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("d, k", [(100, 40), (10_000, 37), (5, 5)])
def test_sample_coordinates_is_a_uniform_subset_without_replacement(d, k):
    idx = numerics.sample_coordinates(d, k, torch.Generator().manual_seed(0))
    if k >= d:
        assert idx is None
        return
    assert idx.numel() == k and idx.unique().numel() == k and 0 <= int(idx.min()) and int(idx.max()) < d
    assert torch.equal(idx, idx.sort().values)
    again = numerics.sample_coordinates(d, k, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_sample_coordinates_rejection_branch_is_uniform():
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(100)
    for _ in range(2000):  # k = 5 of d = 100 takes the draw-and-reject branch (16 k < d)
        counts[numerics.sample_coordinates(100, 5, g)] += 1
    assert counts.sum() == 10_000 and (counts - 100).abs().max() < 45  # expected 100 each, sd ~ 10


# ------------------------------------------------------------------------------------------------ one copy

NOT_RULES = {"__init__", "base", "registry", "numerics", "pre_aggregators", "pipeline"}


def _module(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def test_no_rule_module_redefines_a_shared_function():
    shared = {node.name for node in _module(AGGREGATORS / "numerics.py").body if isinstance(node, ast.FunctionDef)}
    again = [
        f"{path.name}: {node.name}"
        for path in sorted(AGGREGATORS.glob("*.py")) if path.stem != "numerics"
        for node in ast.walk(_module(path)) if isinstance(node, ast.FunctionDef) and node.name in shared
    ]
    assert again == []


def test_no_rule_module_imports_a_sibling_rule():
    rules = {path.stem for path in AGGREGATORS.glob("*.py")} - NOT_RULES
    imports = []
    for path in sorted(AGGREGATORS.glob("*.py")):
        for node in ast.walk(_module(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("byzlab.aggregators"):
                names = [node.module.split(".")[-1]] + [alias.name for alias in node.names]
                if path.stem != "__init__" and rules & set(names):
                    imports.append(f"{path.name}: from {node.module} import ...")
    assert imports == []
