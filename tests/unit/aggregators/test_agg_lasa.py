"""LASA (Xu, Zhang & Hu, WACV 2025): hand-worked filter and aggregate, Top-k over the weight tensors jointly,
PDP / MZ-score edge cases, buffers, fallback, invariants."""

import math

import numpy as np
import pytest
import torch

from byzlab.aggregators import lasa as lasa
from byzlab.aggregators import RoundContext, build
from byzlab.orchestrator.core.layout import Layer

# a.weight (2, 2) at 0..3, b.bias (2,) at 4..5
TWO_LAYERS = (Layer("a.weight", (2, 2), 0, "weight"), Layer("b.bias", (2,), 4, "bias"))


def _ctx(layers=()):
    return RoundContext(layers=layers)


# ------------------------------------------------------------------------------------------- hand-worked
# Three clients, sparsity 0.5: D = 4 weight coordinates -> k = ceil(0.5 * 4) = 2 per client; the bias is dense.
#            a.weight             b.bias
#   c0  [ 3,  4, -1, 0.5]        [1, 0]
#   c1  [ 4, -1,  3, 0.5]        [4, 3]
#   c2  [-3,  1,  0,  -4]        [2, 0]
HAND = torch.tensor(
    [
        [3.0, 4.0, -1.0, 0.5, 1.0, 0.0],
        [4.0, -1.0, 3.0, 0.5, 4.0, 3.0],
        [-3.0, 1.0, 0.0, -4.0, 2.0, 0.0],
    ]
)
# Top-2 of the weight layer: c0 [3, 4, 0, 0], c1 [4, 0, 3, 0], c2 [-3, 0, 0, -4].
#   a.weight: norms (5, 5, 5) -> std 0 -> MZ_m = 0 for all (kept by magnitude);
#             PDP (1, 1, 0) (c2: two negative signs) -> median 1, std = sqrt(2/3 - (2/3)^2)
#             = sqrt(2)/3 = 0.4714 -> MZ_d = (0, 0, -1 / 0.4714 = -2.1213) -> c2 excluded: S = {c0, c1}.
#   b.bias:   norms (1, 5, 2) -> median 2, mean 8/3, std = sqrt(((-5/3)^2 + (7/3)^2 + (-2/3)^2) / 3)
#             = sqrt(26/9) = 1.6997 -> MZ_m = (-0.5883, 1.7650, 0) -> c1 excluded;
#             PDP (1, 1, 1) (zeros carry no sign) -> std 0 -> MZ_d = 0: S = {c0, c2}.
# Filter statistics do not depend on the clipping (they use the unclipped Top_k(Delta_i), Alg. 1 l. 6-7).
# kept share: c0 2/2, c1 1/2, c2 1/2 -> all accepted (kept in at least half of the layers);
# weights = mean over layers of [i in S]/|S| = ((1/2 + 1/2)/2, (1/2 + 0)/2, (0 + 1/2)/2) = (1/2, 1/4, 1/4).
# Clipping: parameter norms^2 = c0 9+16+1+0.25+1 = 27.25, c1 16+1+9+0.25+16+9 = 51.25, c2 9+1+16+4 = 30
#   -> median M = sqrt(30) (c2); scales s = (1, sqrt(30/51.25) = sqrt(24/41) = 0.76509, 1).
S1 = math.sqrt(24 / 41)


@pytest.mark.parametrize(
    "norm_clip, expected",
    [
        # a.weight = ([3,4,0,0] + [4,0,3,0]) / 2 = [3.5, 2, 1.5, 0]; b.bias = ([1,0] + [2,0]) / 2 = [1.5, 0]
        (False, [3.5, 2.0, 1.5, 0.0, 1.5, 0.0]),
        # a.weight = ([3,4,0,0] + 0.76509 [4,0,3,0]) / 2 = [3.0302, 2, 1.1476, 0]; b.bias as above (c1 excluded)
        (True, [(3 + 4 * S1) / 2, 2.0, 3 * S1 / 2, 0.0, 1.5, 0.0]),
    ],
)
def test_hand_worked_three_clients_two_layers(norm_clip, expected):
    result = build("lasa", sparsity=0.5, norm_clip=norm_clip)(HAND, _ctx(TWO_LAYERS))
    assert torch.allclose(result.update, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(result.weights, torch.tensor([0.5, 0.25, 0.25]))
    assert result.accepted.tolist() == [True, True, True]
    assert result.info["kept_share_min"] == 0.5 and result.info["kept_share_max"] == 1.0
    assert result.info["kept_share_mean"] == pytest.approx(2 / 3)
    assert result.info["k"] == 2 and result.info["layers"] == 2 and result.info["fallback_layers"] == 0
    assert result.info["clipped"] == (1 if norm_clip else 0)
    assert result.info["median_norm"] == pytest.approx(math.sqrt(30))


def test_hand_worked_statistics_match_the_helpers():
    # the per-layer values the comment above works out, from the module's own helpers
    sparse_w = torch.tensor([[3.0, 4, 0, 0], [4, 0, 3, 0], [-3, 0, 0, -4]])
    assert lasa.positive_direction_purity(sparse_w).tolist() == [1.0, 1.0, 0.0]
    mz = lasa.mz_scores(torch.tensor([[5.0, 1.0], [5.0, 5.0], [5.0, 2.0]]))  # columns: a.weight, b.bias norms
    assert mz[:, 0].tolist() == [0.0, 0.0, 0.0]
    std = math.sqrt(26 / 9)
    assert torch.allclose(mz[:, 1], torch.tensor([-1 / std, 3 / std, 0.0], dtype=torch.float64))
    mz_d = lasa.mz_scores(torch.tensor([[1.0], [1.0], [0.0]]))[:, 0]
    assert torch.allclose(mz_d, torch.tensor([0.0, 0.0, -3 / math.sqrt(2)], dtype=torch.float64))


def test_three_clients_one_excluded_in_one_layer_is_rejected_overall_when_also_out_elsewhere():
    # Same layout, c2 now also a magnitude outlier in the bias: b = [40, 0] -> bias norms (1, 5, 40):
    #   median 5, mean 46/3, std = sqrt(((-43/3)^2 + (-31/3)^2 + (74/3)^2)/3) = 17.518
    #   -> MZ_m = (-4/17.518, 0, 35/17.518) = (-0.228, 0, 1.998) -> S = {c0, c1};
    #   a.weight as before (c2 out by direction).
    # c2 is kept in 0 of 2 layers -> not accepted, weight 0; weights (1/2, 1/2, 0).
    updates = HAND.clone()
    updates[2, 4] = 40.0
    result = build("lasa", sparsity=0.5, norm_clip=False)(updates, _ctx(TWO_LAYERS))
    assert result.accepted.tolist() == [True, True, False]
    assert torch.allclose(result.weights, torch.tensor([0.5, 0.5, 0.0]))
    # a.weight [3.5, 2, 1.5, 0]; b.bias = ([1, 0] + [4, 3]) / 2 = [2.5, 1.5]
    assert torch.allclose(result.update, torch.tensor([3.5, 2.0, 1.5, 0.0, 2.5, 1.5]))


# ------------------------------------------------------------------------------------------------ top-k
@pytest.mark.parametrize(
    "sparsity, size, k",
    [(0.3, 10, 7), (0.7, 10, 3), (0.5, 5, 3), (0.3, 27, 19), (0.0, 8, 8), (0.99, 10, 1), (0.5, 0, 0)],
)
def test_top_k_count_is_ceil_of_one_minus_sparsity_times_size(sparsity, size, k):
    # (0.7, 10): (1 - 0.7) * 10 = 3.0000000000000004 in floats, still k = 3; (0.5, 5): ceil(2.5) = 3
    assert lasa.top_k_count(sparsity, size) == k


def test_top_k_mask_keeps_exactly_k_largest_magnitudes_per_row():
    values = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    mask = lasa.top_k_mask(values, 35)
    assert mask.sum(dim=1).tolist() == [35] * 4
    kept_min = values.abs().masked_fill(~mask, float("inf")).min(dim=1).values
    dropped_max = values.abs().masked_fill(mask, -1.0).max(dim=1).values
    assert (kept_min > dropped_max).all()
    # ties: exactly k even when all magnitudes are equal
    assert lasa.top_k_mask(torch.ones(2, 10), 7).sum(dim=1).tolist() == [7, 7]


@pytest.mark.parametrize("case", range(12))
def test_top_k_mask_by_selection_is_the_mask_of_torch_topk(case):
    """Issue 13: thresholds by selection give torch.topk's mask bit for bit; rows with magnitudes tied at the
    threshold (values on a coarse grid, all equal) go through torch.topk on that row."""
    g = torch.Generator().manual_seed(case)
    n, size = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(2, 300, (1,), generator=g))
    values = torch.randn(n, size, generator=g)
    if case % 3 == 0:
        values = values.round()
    if case % 4 == 0:
        values[0] = 1.0
    k = int(torch.randint(1, size + 1, (1,), generator=g))
    if k >= size:
        expected = torch.ones(n, size, dtype=torch.bool)
    elif k <= size - k:
        idx = torch.topk(values.abs(), k, dim=1, sorted=False).indices
        expected = torch.zeros(n, size, dtype=torch.bool).scatter_(1, idx, True)
    else:
        idx = torch.topk(values.abs(), size - k, dim=1, largest=False, sorted=False).indices
        expected = torch.ones(n, size, dtype=torch.bool).scatter_(1, idx, False)
    assert torch.equal(lasa.top_k_mask(values, k), expected)


@pytest.mark.parametrize("case", range(9))
def test_row_statistics_are_the_norms_and_sign_counts_of_the_sparsified_row(case):
    """Issue 13: a client's layer statistics on the CPU (numpy in reused work rows) are bit for bit the float64
    norms of the row and of its sparsified row as the row blocks of other devices compute them, and the
    sparsified row's numbers of positive and negative entries; the work rows are wider than the layer and
    reused (two calls)."""
    g = torch.Generator().manual_seed(case)
    size = int(torch.randint(1, 5000, (1,), generator=g))
    x = torch.randn(size, generator=g, dtype=(torch.float32, torch.float64, torch.float16)[case % 3])
    x[torch.rand(size, generator=g) < 0.2] = 0.0
    mask = None if case % 4 == 0 else torch.rand(size, generator=g) < 0.7
    work = lasa._RowWork(size + 3, x.dtype)
    sparse = x if mask is None else x * mask
    for _ in range(2):
        norm, sparse_norm, positive, negative = work.statistics(x, mask)
        assert torch.equal(norm, torch.linalg.vector_norm(x.unsqueeze(0), dim=1, dtype=torch.float64)[0])
        assert torch.equal(sparse_norm, torch.linalg.vector_norm(sparse.unsqueeze(0), dim=1, dtype=torch.float64)[0])
        assert (positive, negative) == (int((sparse > 0).sum()), int((sparse < 0).sum()))


def test_top_k_runs_over_all_weight_tensors_jointly_and_1d_stays_dense():
    # One client: its norm is the median (clip factor 1) and every std is 0 (kept everywhere), so the
    # aggregate is its sparsified update. Weight coordinates D = 6 + 3 = 9, sparsity 0.3 -> k = ceil(6.3) = 7:
    # all 6 large entries of w1 and the largest of w2 (0.3) survive; per-layer Top-k would have kept
    # ceil(0.7*6) = 5 of w1 and ceil(0.7*3) = 3 of w2. Bias and buffer (smaller still) stay dense.
    layers = (
        Layer("w1", (2, 3), 0, "weight"),
        Layer("w2", (3, 1), 6, "weight"),
        Layer("bias", (3,), 9, "bias"),
        Layer("bn.running_mean", (2,), 12, "buffer"),
    )
    u = torch.tensor([10.0, -11, 12, -13, 14, 15, 0.1, -0.2, 0.3, 0.01, -0.02, 0.03, 0.004, -0.005])
    result = build("lasa")(u.unsqueeze(0), _ctx(layers))
    expected = u.clone()
    expected[6:8] = 0.0
    assert torch.equal(result.update, expected)
    assert int((result.update[:9] != 0).sum()) == 7 and result.info["k"] == 7


# ------------------------------------------------------------------------------------ PDP / MZ edge cases
def test_pdp_values_and_all_zero_layer_is_one_half():
    x = torch.tensor([[0.0, 0, 0], [1, 2, -3], [1, 0, 0], [-1, -1, 0]])
    # (1 + 0/0 -> neutral) = 0.5; (1 + (2-1)/3)/2 = 2/3; (1 + 1/1)/2 = 1; (1 - 2/2)/2 = 0
    assert torch.allclose(lasa.positive_direction_purity(x), torch.tensor([0.5, 2 / 3, 1.0, 0.0], dtype=torch.float64))


def test_all_zero_client_layer_has_neutral_direction_and_is_kept():
    # Bias-only layer (dense): c0 [0, 0], c1 [1, -1], c2 [2, -2] -> PDP (0.5, 0.5, 0.5): std 0, all pass direction.
    # norms (0, sqrt 2, 2 sqrt 2): MZ_m = (-1.2247, 0, 1.2247), inside lambda_m = 2 -> all kept.
    # Without clipping the update is the plain mean [1, -1].
    layers = (Layer("b", (2,), 0, "bias"),)
    updates = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, -2.0]])
    result = build("lasa", lambda_m=2.0, norm_clip=False)(updates, _ctx(layers))
    assert result.accepted.tolist() == [True, True, True]
    assert torch.allclose(result.update, torch.tensor([1.0, -1.0]))
    assert torch.allclose(result.weights, torch.full((3,), 1 / 3))


def test_mz_score_median_of_even_count_and_zero_std():
    values = torch.tensor([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0], [10.0, 3.0]])
    # column 0: median (2 + 3)/2 = 2.5, mean 4, population std sqrt((9 + 4 + 1 + 36)/4) = sqrt(12.5)
    # column 1: std 0 -> MZ 0
    mz = lasa.mz_scores(values)
    assert torch.allclose(mz[:, 0], (torch.tensor([1.0, 2, 3, 10]) - 2.5).double() / math.sqrt(12.5))
    assert mz[:, 1].tolist() == [0.0] * 4


def test_zero_std_means_every_client_kept_even_with_zero_radii():
    # Different vectors with equal norms (5) and equal PDPs (1): both stds are 0, MZ = 0 <= 0.
    updates = torch.tensor([[3.0, 4.0], [4.0, 3.0], [0.0, 5.0]])
    result = build("lasa", lambda_m=0.0, lambda_d=0.0, sparsity=0.0)(updates, _ctx())
    assert result.accepted.all() and result.info["fallback_layers"] == 0
    assert torch.allclose(result.update, updates.mean(dim=0))


def test_clients_exactly_on_the_radius_stay_whatever_the_rounding():
    """Three clients of norm 0.07 and three of 0.51: median 0.29, population std 0.22, so MZ = ±1 exactly,
    computed as -1 and 1.0000000000000002; with lambda_m = 1 all six lie on the radius and stay (a bare
    ``<= 1`` dropped the second three). Equal PDPs: the direction filter keeps everyone."""
    updates = torch.tensor([[0.07, 0.0]] * 3 + [[0.51, 0.0]] * 3)
    norms = torch.linalg.vector_norm(updates.double(), dim=1, keepdim=True)
    assert lasa.mz_scores(norms).abs().max() > 1  # the rounding this test is about
    result = build("lasa", lambda_m=1.0, sparsity=0.0, norm_clip=False)(updates, _ctx())
    assert result.accepted.all() and result.info["fallback_layers"] == 0
    assert not lasa.within(torch.tensor([1.0 + 1e-6]), 1.0).any()  # a real excess is still one


# ------------------------------------------------------------------------------------------------ fallback
@pytest.mark.parametrize("norm_clip, expected", [(False, [1.0, -1.0]), (True, [1 / 3, -1 / 3])])
def test_empty_kept_set_falls_back_to_all_clients(norm_clip, expected):
    # One layer (no layout), k = ceil(0.7 * 2) = 2: dense. c0 [1, 1], c1 [-1, -1], c2 [3, -3]:
    #   norms (sqrt 2, sqrt 2, 3 sqrt 2): median sqrt 2, std = 2 sqrt 2 * sqrt 2 / 3 = 4/3
    #     -> MZ_m = (0, 0, 2.1213): c2 out by magnitude;
    #   PDP (1, 0, 0.5): median 0.5, std sqrt(1/6) = 0.4082 -> MZ_d = (1.2247, -1.2247, 0): c0, c1 out by direction.
    #   S is empty -> all three are averaged: without clipping ([1,1] + [-1,-1] + [3,-3]) / 3 = [1, -1];
    #   with clipping c2 is scaled to the median norm sqrt 2 -> [1, -1]: ([1,1] + [-1,-1] + [1,-1]) / 3.
    updates = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [3.0, -3.0]])
    result = build("lasa", norm_clip=norm_clip)(updates, _ctx())
    assert torch.allclose(result.update, torch.tensor(expected), atol=1e-6)
    assert result.info["fallback_layers"] == 1
    assert result.accepted.tolist() == [True, True, True]  # they are what was averaged
    assert torch.allclose(result.weights, torch.full((3,), 1 / 3))


# ------------------------------------------------------------------------------------------------- buffers
def test_buffers_are_filtered_but_neither_clipped_nor_in_the_clip_norm():
    # w (1, 2): c0 [1, 1], c1 [2, 2], c2 [3, 3]; buffer (2,): [10, 10], [12, 12], [11, 11]; lambda_m = 2
    # keeps everyone (weight norms sqrt2 (1, 2, 3): MZ (-1.22, 0, 1.22); buffer norms sqrt2 (10, 12, 11):
    # MZ (-1.22, 1.22, 0)); all PDPs 1.
    # Clip norms use the weights only: (sqrt2, 2 sqrt2, 3 sqrt2) -> M = 2 sqrt2 -> scales (1, 1, 2/3)
    #   w = ([1,1] + [2,2] + 2/3 [3,3]) / 3 = [5/3, 5/3]; buffer unscaled: (10 + 12 + 11) / 3 = 11.
    # (With the buffer in the norm, M = sqrt(18 + 242) (c2) and c1 would be the one clipped.)
    layers = (Layer("w", (1, 2), 0, "weight"), Layer("bn.running_var", (2,), 2, "buffer"))
    updates = torch.tensor([[1.0, 1, 10, 10], [2, 2, 12, 12], [3, 3, 11, 11]])
    result = build("lasa", sparsity=0.0, lambda_m=2.0)(updates, _ctx(layers))
    assert torch.allclose(result.update, torch.tensor([5 / 3, 5 / 3, 11.0, 11.0]))
    assert result.info["clipped"] == 1
    # a poisoned running_var is filtered like any layer: c2's buffer [1000, 1000] -> buffer norms
    # sqrt2 (10, 12, 1000): MZ_m(c2) = 2.12 > lambda_m = 2 -> buffer = (10 + 12) / 2 = 11 again
    updates[2, 2:] = 1000.0
    result = build("lasa", sparsity=0.0, lambda_m=2.0)(updates, _ctx(layers))
    assert torch.allclose(result.update, torch.tensor([5 / 3, 5 / 3, 11.0, 11.0]))
    assert torch.allclose(result.weights, torch.tensor([(1 / 3 + 1 / 2) / 2, (1 / 3 + 1 / 2) / 2, (1 / 3) / 2]))


# ---------------------------------------------------------------------------------------------- invariants
MODEL = (
    Layer("conv.weight", (3, 2, 2), 0, "weight"),
    Layer("conv.bias", (3,), 12, "bias"),
    Layer("bn.running_mean", (3,), 15, "buffer"),
    Layer("fc.weight", (2, 4), 18, "weight"),
    Layer("fc.bias", (2,), 26, "bias"),
)
D_MODEL = 28


def test_permuting_clients_permutes_weights_and_accepted_and_keeps_the_update(clustered_updates):
    updates, _ = clustered_updates(D_MODEL)
    updates[3] *= 5.0  # one magnitude outlier, so the decisions are not all equal
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    base = build("lasa")(updates, _ctx(MODEL))
    permuted = build("lasa")(updates[perm], _ctx(MODEL))
    assert not base.accepted.all()
    assert torch.allclose(permuted.update, base.update, atol=1e-6)
    assert torch.allclose(permuted.weights, base.weights[perm])
    assert torch.equal(permuted.accepted, base.accepted[perm])


def test_identical_inputs_return_their_top_k_sparsified_version(clustered_updates):
    # n copies of u: every norm is the median (clip factor 1) and every std is 0 (all kept), so the
    # aggregate is Top_k(u) over the weight tensors (D = 12 + 8 = 20, k = ceil(0.7 * 20) = 14), biases and
    # buffers dense: not u itself unless sparsity = 0.
    u = clustered_updates(D_MODEL)[1]
    result = build("lasa")(u.repeat(6, 1), _ctx(MODEL))
    weight_cols = torch.cat([torch.arange(0, 12), torch.arange(18, 26)])
    expected = u.clone()
    dropped = weight_cols[torch.topk(u[weight_cols].abs(), 20 - 14, largest=False).indices]
    expected[dropped] = 0.0
    assert torch.allclose(result.update, expected)
    assert int((result.update[weight_cols] != 0).sum()) == 14
    assert result.accepted.all() and torch.allclose(result.weights, torch.full((6,), 1 / 6))
    dense = build("lasa", sparsity=0.0)(u.repeat(6, 1), _ctx(MODEL))
    assert torch.allclose(dense.update, u)


def test_far_outlier_is_excluded_in_every_layer(clustered_updates):
    updates, centre = clustered_updates(D_MODEL)
    updates[4] = -100 * centre  # far and opposed: its layer norms are ~100x the others' (MZ_m ~ 3)
    result = build("lasa")(updates, _ctx(MODEL))
    assert not result.accepted[4] and result.accepted.sum() >= 5
    assert result.weights[4] == 0
    honest_mean = torch.cat([updates[:4], updates[5:]]).mean(dim=0)
    assert torch.linalg.vector_norm(result.update - honest_mean) < 0.5 * torch.linalg.vector_norm(centre)


def test_nonfinite_rows_are_dropped_before_the_filter(clustered_updates):
    updates, _ = clustered_updates(D_MODEL)
    updates[2, 5] = float("nan")
    result = build("lasa")(updates, _ctx(MODEL))
    assert torch.isfinite(result.update).all()
    assert not result.accepted[2] and result.weights[2] == 0 and result.info["nonfinite_dropped"] == 1


# -------------------------------------------------------------------------------------------- parameters
def test_parameters_defaults_and_validation():
    p = lasa.LASAParams()
    assert (p.sparsity, p.lambda_m, p.lambda_d, p.norm_clip) == (0.3, 1.0, 1.0, True)
    with pytest.raises(ValueError, match="sparsity"):
        build("lasa", sparsity=1.0)
    with pytest.raises(ValueError, match="lambda_m"):
        build("lasa", lambda_m=-1.0)
    with pytest.raises(ValueError, match="unknown_param"):
        build("lasa", unknown_param=1)


def test_layout_must_cover_the_update():
    with pytest.raises(ValueError, match="layout covers 6 coordinates, the updates have 7"):
        build("lasa")(torch.ones(3, 7), _ctx(TWO_LAYERS))


@pytest.mark.parametrize("case", range(16))
def test_select_is_the_value_of_a_partition(case, monkeypatch):
    """Issue 13: selection through a sample's bracket gives np.partition's value (NaN last) on random values,
    ties, values on a coarse grid, infinities, NaN, a bracket that misses (strided pattern) and small arrays."""
    monkeypatch.setattr(lasa, "SAMPLE_FROM", 1000)
    monkeypatch.setattr(lasa, "SAMPLE_STRIDE", 7)
    rng = np.random.default_rng(case)
    size = int(rng.integers(1, 5000))
    values = rng.standard_normal(size).astype((np.float32, np.float64)[case % 2])
    if case % 4 == 1:
        values = np.round(values * 2) / 2  # ties
    if case % 5 == 2 and size > 3:
        values[:3] = [np.inf, -np.inf, np.nan]
    if case % 6 == 3:
        values = np.tile(np.arange(7.0), size // 7 + 1)[:size].astype(values.dtype)  # the sample sees one value
        values[::7] = 100.0
    for rank in {0, size // 3, size // 2, size - 1}:
        work = values.copy()
        above, outside = np.empty(size, bool), np.empty(size, bool)
        value, reordered = lasa.select(work, rank, above, outside)
        expected = np.partition(values, rank)[rank]
        assert (value == expected) or (np.isnan(value) and np.isnan(expected))
        if not reordered:
            assert np.array_equal(work, values, equal_nan=True)


@pytest.mark.parametrize("grid", [False, True])
def test_statistics_a_client_at_a_time_equal_the_blocks_of_rows(grid, monkeypatch):
    """Issue 13: the CPU's per-client statistics (every layer; ROW_WISE_FROM = 1) give bit for bit what the
    blocks of rows give (no layer; the path of small layers and other devices), ties at the Top-k threshold
    and buffers included."""
    g = torch.Generator().manual_seed(3)
    layers = (Layer("w1", (40, 5), 0, "weight"), Layer("b1", (5,), 200, "bias"), Layer("w2", (5, 12), 205, "weight"),
              Layer("bn.running_var", (12,), 265, "buffer"), Layer("w3", (30,), 277, "weight"))
    u = 0.01 * torch.randn(9, 307, generator=g) + 0.05 * torch.randn(307, generator=g)
    u[:2] *= -10
    if grid:
        u = (u * 100).round() / 100
    results = []
    for row_wise_from in (1, 10**9):
        monkeypatch.setattr(lasa, "ROW_WISE_FROM", row_wise_from)
        results.append(build("lasa")(u.clone(), _ctx(layers)))
    a, b = results
    assert torch.equal(a.update, b.update) and torch.equal(a.weights, b.weights)
    assert torch.equal(a.accepted, b.accepted) and a.info == b.info
