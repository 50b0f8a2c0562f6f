"""Residual-based reweighting (Fu et al., arXiv:1912.11464, Algorithm 1): hand-worked values and properties."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import theilslopes

from byzlab.aggregators.base import RoundContext
from byzlab.aggregators.registry import build, validate_params
from byzlab.aggregators.residual import ResidualParams, fit_line, leverage, residual_step

F64 = torch.float64


def run(updates, **params):
    return build("residual", **params)(updates, RoundContext())


def close(actual, expected, atol=1e-4):
    expected = torch.as_tensor(expected, dtype=actual.dtype if actual.is_floating_point() else F64)
    return torch.allclose(actual.to(expected.dtype), expected, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------ worked by hand

# Shared by the two worked examples. K = 5: Z = lam sqrt(2/K) = 2 sqrt(0.4) = 1.264911.
# Leverage (eq. 7, X = [1, x], x = 0..4, xbar = 2, S = sum (x - 2)^2 = 10): h = 1/5 + (x - 2)^2 / 10
#   = 0.6, 0.3, 0.2, 0.3, 0.6 by rank; sqrt(1 - h) = 0.632456, 0.836660, 0.894427, 0.836660, 0.632456.
# tau factor (eq. 3): gamma (1 + 5/(K-1)) = 1.4826 * 2.25 = 3.33585.
# Eq. 6 with Psi(t)/t = min(1, Z/|t|): w = min(1, Z sqrt(1-h) / |e|); at ranks 0 and 4, Z sqrt(1-h) = 2 * 0.4 = 0.8.
COORD0 = [1.0, 1.1, 0.9, 1.05, 10.0]
COORD1 = [0.0, 0.6, 0.25, -0.1, 0.1]


def test_worked_example_one_coordinate_with_an_outlier():
    # y = 1.0, 1.1, 0.9, 1.05, 10.0 (clients 0..4); sorted z = 0.9, 1.0, 1.05, 1.1, 10.0
    #   -> ranks x (client order) = 1, 3, 0, 2, 4.
    # Eq. 1, inner medians m_i = med_{j != i} (z_j - z_i) / (j - i), i = rank:
    #   i=0: 0.1, 0.15/2 = 0.075, 0.2/3 = 0.066667, 9.1/4 = 2.275 -> (0.075 + 0.1)/2      = 0.0875
    #   i=1: 0.1, 0.05, 0.1/2 = 0.05, 9.0/3 = 3.0                -> (0.05 + 0.1)/2       = 0.075
    #   i=2: 0.15/2 = 0.075, 0.05, 0.05, 8.95/2 = 4.475          -> (0.05 + 0.075)/2     = 0.0625
    #   i=3: 0.2/3 = 0.066667, 0.1/2 = 0.05, 0.05, 8.9           -> (0.05 + 0.066667)/2  = 0.058333
    #   i=4: 2.275, 3.0, 4.475, 8.9                              -> (3.0 + 4.475)/2      = 3.7375
    #   b1 = med(0.0875, 0.075, 0.0625, 0.058333, 3.7375) = 0.075.
    # Eq. 2 at the centre: med_i(z_i + m_i (2 - i)) = med(0.9 + 0.175, 1.0 + 0.075, 1.05, 1.1 - 0.058333,
    #   10 - 7.475) = med(1.075, 1.075, 1.05, 1.041667, 2.525) = 1.075; b0 = 1.075 - 2 * 0.075 = 0.925.
    # Line at ranks 0..4: 0.925, 1.0, 1.075, 1.15, 1.225; residuals by rank: -0.025, 0, -0.025, -0.05, 8.775.
    # Eq. 4: med|r| = med(0, 0.025, 0.025, 0.05, 8.775) = 0.025; eq. 3: tau = 3.33585 * 0.025 = 0.083396.
    # Eq. 5: e = r / tau: rank 0 -0.299774, rank 1 0, rank 2 -0.299774, rank 3 -0.599547, rank 4 105.220558.
    # Eq. 6: |e| / sqrt(1-h) = 0.4740, 0, 0.3352, 0.7166 (< Z: w = 1) and 105.22 / 0.632456 = 166.4 (> Z):
    #   w = 0.8 / 105.220558 = 0.007603.
    # Eqs. 8-9: 0.007603 <= delta = 0.01 -> w = 0 and y -> line(4) = 1.225.
    # sigma (Bessel) of w = 1, 1, 1, 1, 0: mean 0.8, sum of squares 4 * 0.04 + 0.64 = 0.8, / 4 -> sqrt(0.2) = 0.447214.
    # Eq. 10: W = 0.447214 for clients 0-3 and 0 for client 4 -> weights 1/4, 1/4, 1/4, 1/4, 0.
    # Eq. 11: (1.0 + 1.1 + 0.9 + 1.05) / 4 = 1.0125 (the corrected 1.225 has weight 0).
    y = torch.tensor([COORD0], dtype=F64)
    s = residual_step(y)
    assert torch.equal(s.rank, torch.tensor([[1, 3, 0, 2, 4]]))
    assert close(s.slope, [0.075]) and close(s.intercept, [0.925])
    assert close(s.line, [[1.0, 1.15, 0.925, 1.075, 1.225]])
    assert close(s.residual, [[0.0, -0.05, -0.025, -0.025, 8.775]])
    assert close(s.tau, [0.083396])
    assert close(s.e, [[0.0, -0.599547, -0.299774, -0.299774, 105.220558]])
    assert close(s.leverage, [[0.3, 0.3, 0.6, 0.2, 0.6]])
    assert close(s.confidence, [[1.0, 1.0, 1.0, 1.0, 0.007603]], atol=1e-6)
    assert s.kept.tolist() == [[True, True, True, True, False]]
    assert close(s.weight, [[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert close(s.corrected, [[1.0, 1.1, 0.9, 1.05, 1.225]])
    assert close(s.sigma, [0.447214])

    result = run(y.T)
    assert close(result.weights, [0.25, 0.25, 0.25, 0.25, 0.0], atol=1e-12)
    assert close(result.update, [1.0125], atol=1e-12)
    assert result.accepted.tolist() == [True, True, True, True, False]
    assert result.info["corrected_fraction"] == pytest.approx(1 / 5)
    assert result.info["fallback_uniform"] == 0.0


def test_worked_example_two_coordinates_model_weights():
    # Coordinate 1: y = 0.0, 0.6, 0.25, -0.1, 0.1; sorted z = -0.1, 0.0, 0.1, 0.25, 0.6 -> ranks 1, 4, 3, 0, 2.
    # Inner medians: i=0: 0.1, 0.1, 0.35/3 = 0.116667, 0.7/4 = 0.175 -> 0.108333
    #                i=1: 0.1, 0.1, 0.25/2 = 0.125, 0.6/3 = 0.2     -> 0.1125
    #                i=2: 0.1, 0.1, 0.15, 0.5/2 = 0.25               -> 0.125
    #                i=3: 0.116667, 0.125, 0.15, 0.35                -> 0.1375
    #                i=4: 0.175, 0.2, 0.25, 0.35                     -> 0.225      => b1 = 0.125
    # Centre: med(-0.1 + 0.216667, 0 + 0.1125, 0.1, 0.25 - 0.1375, 0.6 - 0.45) = med(0.116667, 0.1125, 0.1,
    #   0.1125, 0.15) = 0.1125. Line by rank: -0.1375, -0.0125, 0.1125, 0.2375, 0.3625.
    # Residuals by rank: 0.0375, 0.0125, -0.0125, 0.0125, 0.2375 = (3, 1, -1, 1, 19) * 0.0125; med|r| = 0.0125,
    #   so e = (3, 1, -1, 1, 19) / 3.33585 = 0.899321, 0.299774, -0.299774, 0.299774, 5.695700.
    # Eq. 6: rank 0: 0.899321 / 0.632456 = 1.42 > Z -> w = 0.8 / 0.899321 = 0.889560;
    #        rank 4: w = 0.8 / 5.695700 = 0.140457; ranks 1-3: |e| / sqrt(1-h) <= 0.36 < Z -> 1. None <= delta.
    # w (client order) = 1, 0.140457, 1, 0.889560, 1; mean 4.030017 / 5 = 0.806003;
    #   sigma^2 = (0.193997^2 * 3 + 0.665546^2 + 0.083557^2) / 4 = 0.562838 / 4 -> sigma = 0.375113.
    # Eq. 10 with coordinate 0 (w = 1, 1, 1, 1, 0, sigma 0.447214):
    #   W = 0.447214 + 0.375113 = 0.822327 (clients 0, 2); 0.447214 + 0.140457 * 0.375113 = 0.499901 (client 1);
    #       0.447214 + 0.889560 * 0.375113 = 0.780900 (client 3); 0 + 0.375113 (client 4). Sum 3.300568.
    #   weights = 0.249147, 0.151459, 0.249147, 0.236596, 0.113651.
    # Eq. 11 on the corrected values (client 4's 10.0 -> 1.225 in coordinate 0):
    #   0.249147 * 1.0 + 0.151459 * 1.1 + 0.249147 * 0.9 + 0.236596 * 1.05 + 0.113651 * 1.225 = 1.027632
    #   0.249147 * 0 + 0.151459 * 0.6 + 0.249147 * 0.25 + 0.236596 * (-0.1) + 0.113651 * 0.1 = 0.140868
    # (the far value 10.0 only reaches the aggregate as the line's 1.225: uncorrected it would add
    #  0.113651 * 8.775 = 0.997)
    updates = torch.tensor([COORD0, COORD1], dtype=F64).T
    s = residual_step(updates[:, 1:].T)
    assert close(s.slope, [0.125]) and close(s.line, [[-0.0125, 0.3625, 0.2375, -0.1375, 0.1125]])
    assert close(s.e, [[0.299774, 5.695700, 0.299774, 0.899321, -0.299774]])
    assert close(s.confidence, [[1.0, 0.140457, 1.0, 0.889560, 1.0]], atol=1e-6)
    assert bool(s.kept.all()) and close(s.sigma, [0.375113], atol=1e-6)

    result = run(updates)
    assert close(result.weights, [0.249147, 0.151459, 0.249147, 0.236596, 0.113651], atol=1e-6)
    assert close(result.update, [1.027632, 0.140868], atol=1e-6)
    assert result.accepted.all()  # all above half the uniform weight 0.1
    assert result.info["corrected_fraction"] == pytest.approx(1 / 10)
    assert result.info["weight_min"] == pytest.approx(0.113651, abs=1e-6)


def test_options_on_the_worked_coordinate():
    y = torch.tensor([COORD0], dtype=F64)
    # estimator=median: flat line at med = 1.05; r = -0.05, 0.05, -0.15, 0, 8.95; med|r| = 0.05,
    # tau = 3.33585 * 0.05 = 0.166793; e = -0.299774, 0.299774, -0.899321, 0, 53.659487.
    # Client 2 (rank 0, sqrt(1-h) = 0.632456): 1.42 > Z -> 0.8 / 0.899321 = 0.889560; client 4: 0.8 / 53.659487
    # = 0.014909 > delta: kept, NOT corrected (the paper's §4.5: the median line "can be attacked").
    s = residual_step(y, ResidualParams(estimator="median"))
    assert close(s.slope, [0.0]) and close(s.line, [[1.05] * 5])
    assert close(s.confidence, [[1.0, 1.0, 0.889560, 1.0, 0.014909]], atol=1e-6) and bool(s.kept.all())
    # estimator=theil_sen: the 10 pair slopes 0.05, 0.05, 0.05, 0.066667, 0.075, 0.1, 2.275, 3, 4.475, 8.9
    # -> b1 = (0.075 + 0.1) / 2 = 0.0875; pair lines at the centre: 1.1, 1.05, 1.033333, 5.45, 1.05, 1.05, 4.0,
    # 1.05, 1.05, -7.8 -> median 1.05 (b0 = 0.875); r(10.0) = 10 - 1.225 = 8.775, med|r| = 0.0375,
    # e = 8.775 / (3.33585 * 0.0375) = 70.147 -> w = 0.8 / 70.147 = 0.011405 > delta: kept as well.
    s = residual_step(y, ResidualParams(estimator="theil_sen"))
    assert close(s.slope, [0.0875]) and close(s.intercept, [0.875])
    assert close(s.confidence[0, 4], 0.011405, atol=1e-6) and bool(s.kept.all())
    # weighting=gaussian (lam = 2): w = exp(-e^2 / 8) on the repeated-median e = 0, -0.599547, -0.299774,
    # -0.299774, 105.22: exp(-0.044932) = 0.956062, exp(-0.011233) = 0.988830, exp(-1384) = 0 -> corrected.
    s = residual_step(y, ResidualParams(weighting="gaussian"))
    assert close(s.confidence, [[1.0, 0.956062, 0.988830, 0.988830, 0.0]], atol=1e-6)
    assert s.kept.tolist() == [[True, True, True, True, False]]
    # intercept=median (authors' code): line value at the centre = med(y) = 1.05, slope still 0.075
    s = residual_step(y, ResidualParams(intercept="median"))
    assert close(s.slope, [0.075]) and close(s.intercept, [1.05 - 2 * 0.075])

    # The aggregates differ where they should: both alternatives keep the 10.0 with a small weight.
    updates = torch.tensor([COORD0, COORD1], dtype=F64).T
    paper = run(updates).update
    median_line = run(updates, estimator="median").update
    theil = run(updates, estimator="theil_sen").update
    gauss = run(updates, weighting="gaussian").update
    assert paper[0] < 1.03 and median_line[0] > 1.3 and theil[0] > 1.3  # the outlier leaks in uncorrected
    assert not torch.allclose(gauss, paper, atol=1e-3) and gauss[0] < 1.03
    assert not torch.allclose(run(updates, lam=1.0).weights, run(updates).weights)  # Z shrinks with lam
    assert not torch.allclose(run(updates, delta=0.2).update, paper)  # more values corrected


# ------------------------------------------------------------------------------------ building blocks


@pytest.mark.parametrize("k", [3, 5, 8])
def test_leverage_is_the_hat_matrix_diagonal_with_an_intercept(k):
    x = torch.arange(k, dtype=F64)
    X = torch.stack([torch.ones(k, dtype=F64), x], dim=1)
    hat = X @ torch.linalg.inv(X.T @ X) @ X.T  # eq. 7 with the intercept column
    assert torch.allclose(leverage(k, dtype=F64), torch.diagonal(hat), atol=1e-12)


@pytest.mark.parametrize("intercept", ["separate", "hierarchical"])
def test_repeated_median_line_is_the_repeated_median_rule(intercept):
    # fit_line's value at the centre of the ranks is exactly the repeated_median rule's aggregate
    updates = torch.randn(7, 10, generator=torch.Generator().manual_seed(1), dtype=F64)
    _, centre = fit_line(torch.sort(updates.T, dim=-1).values, "repeated_median", intercept)
    rule = build("repeated_median", intercept=intercept)(updates, RoundContext()).update
    assert torch.allclose(centre, rule, atol=1e-12)


def test_theil_sen_line_matches_scipy():
    updates = torch.randn(6, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    z = torch.sort(updates.T, dim=-1).values
    slope, centre = fit_line(z, "theil_sen", "hierarchical")
    x = np.arange(6) - 2.5  # centred ranks: scipy's intercept is then the value at the centre
    for n in range(8):
        ref = theilslopes(z[n].numpy(), x, method="joint")  # joint: med(y - b1 x) = our hierarchical
        assert slope[n].item() == pytest.approx(ref.slope, abs=1e-12)
        assert centre[n].item() == pytest.approx(ref.intercept, abs=1e-12)


# ------------------------------------------------------------------------------------ properties


def test_identical_values_give_uniform_weights_and_no_nan():
    u = torch.tensor([0.3, -1.0, 0.0, 2.5], dtype=F64)
    result = run(u.repeat(6, 1))
    # every coordinate: slope 0, r = 0, tau = eps, e = 0 -> w = 1 for all, sigma = 0 -> sum W = 0 -> uniform
    assert torch.allclose(result.update, u, atol=1e-12)  # 6 x (1/6) u, up to rounding
    assert torch.allclose(result.weights, torch.full((6,), 1 / 6, dtype=F64))
    assert result.info["fallback_uniform"] == 1.0 and result.accepted.all()
    s = residual_step(u.repeat(6, 1).T)
    assert torch.isfinite(s.e).all() and torch.equal(s.confidence, torch.ones(4, 6, dtype=F64))


def test_exact_majority_makes_tau_zero_without_nan():
    # y = 1, 1, 1, 1, 5: line y = 1 (all slopes among the 1s are 0), r = 0, 0, 0, 0, 4, med|r| = 0,
    # tau = eps = 1e-30: e = 0 (w = 1) for the four, 4e30 (w = 0.8 / 4e30 ~ 0 -> corrected to 1) for the 5.
    y = torch.tensor([[1.0], [1.0], [5.0], [1.0], [1.0]])
    result = run(y)
    assert torch.isfinite(result.weights).all()
    assert torch.equal(result.weights, torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25]))
    assert torch.equal(result.update, torch.tensor([1.0]))


def test_permuting_clients_permutes_weights_even_with_ties():
    g = torch.Generator().manual_seed(3)
    updates = torch.randint(-3, 4, (9, 30), generator=g).double() * 0.1  # many tied values per coordinate
    updates[4] = 2.0  # and an outlier
    perm = torch.randperm(9, generator=g)
    for params in ({}, {"estimator": "theil_sen"}, {"estimator": "median", "weighting": "gaussian"}):
        base = run(updates, **params)
        permuted = run(updates[perm], **params)
        assert torch.allclose(permuted.weights, base.weights[perm], atol=1e-12), params
        assert torch.allclose(permuted.update, base.update, atol=1e-12), params
        assert torch.equal(permuted.accepted, base.accepted[perm])


def test_tied_clients_share_confidence_and_correction():
    # y = 0, 0, 0.1, 0.2, 0.3 + an outlier tie: 9, 9 (K = 6). Equal values get equal confidences and
    # corrected values, whatever ranks the sort gave them.
    y = torch.tensor([[0.0, 9.0, 0.1, 0.0, 0.2, 9.0]], dtype=F64)
    s = residual_step(y)
    assert s.confidence[0, 0] == s.confidence[0, 3] and s.confidence[0, 1] == s.confidence[0, 5]
    assert s.corrected[0, 1] == s.corrected[0, 5]


def test_scale_and_translation_equivariance():
    g = torch.Generator().manual_seed(4)
    updates = torch.randn(7, 12, generator=g, dtype=F64)
    updates[2] *= 30
    base = run(updates)
    shift = torch.randn(12, generator=g, dtype=F64)
    moved = run(-3.0 * updates + shift)  # the weights are those of the models theta + Delta for any theta
    assert torch.allclose(moved.weights, base.weights, atol=1e-12)
    assert torch.allclose(moved.update, -3.0 * base.update + shift, atol=1e-10)


def test_far_outlier_gets_zero_weight():
    g = torch.Generator().manual_seed(5)
    centre = 0.05 * torch.randn(40, generator=g)
    updates = centre + 0.01 * torch.randn(10, 40, generator=g)
    updates[4] = -100 * centre
    result = run(updates)
    honest = torch.cat([updates[:4], updates[5:]])
    # coordinates where the centre is ~0 put -100 * centre inside the cluster: a sliver of weight remains
    assert result.weights[4] < 1e-3 and not result.accepted[4]
    assert result.accepted.sum() >= 8
    assert torch.linalg.vector_norm(result.update - honest.mean(dim=0)) < 0.1 * torch.linalg.vector_norm(centre)
    assert result.weights.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("estimator", ["repeated_median", "theil_sen", "median"])
def test_chunked_equals_unchunked(estimator):
    updates = torch.randn(6, 23, generator=torch.Generator().manual_seed(6))
    updates[1, :5] = 50.0  # some corrected entries in the first chunks
    whole = run(updates, estimator=estimator)
    for chunk in (1, 4, 23):
        part = run(updates, estimator=estimator, chunk_size=chunk)
        assert torch.allclose(part.update, whole.update, atol=1e-6)
        assert torch.allclose(part.weights, whole.weights, atol=1e-6)
        assert part.info["corrected_fraction"] == whole.info["corrected_fraction"]


def test_few_clients_nonfinite_rows_and_settings():
    cls = type(build("residual"))
    cls.check_setting(ResidualParams(), 3, 1)
    with pytest.raises(ValueError, match="n >= 3"):
        cls.check_setting(ResidualParams(), 2, 0)
    two = run(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # the line through both points: the mean
    assert torch.equal(two.update, torch.tensor([2.0, 4.0])) and two.info["fallback_uniform"] == 1.0
    updates = torch.randn(6, 5, generator=torch.Generator().manual_seed(7))
    updates[2, 1] = math.nan
    result = run(updates)
    assert torch.isfinite(result.update).all() and result.weights[2] == 0 and not result.accepted[2]
    half = run(updates.half())
    assert half.update.dtype == torch.float16 and torch.isfinite(half.update).all()
    with pytest.raises(ValueError, match="estimator"):
        validate_params("residual", {"estimator": "mean"})
    with pytest.raises(ValueError, match="delta"):
        validate_params("residual", {"delta": 1.0})


# ------------------------------------------------------------------------------ the authors' code (variant)

CODE = {"variant": "residual_code", "intercept": "median", "eps": 1e-7}
# Worked through the authors' FedAvg/averaging.py (reweight_algorithm_restricted, repeated_median,
# IRLS_aggregation_split_restricted), line by line in float64; their torch code, run on CPU in float32,
# agrees to ~1e-7.
CODE_A = torch.tensor([[0.012, -0.020, 0.031], [0.019, -0.004, 0.010], [0.007, -0.013, 0.024],
                       [0.015, -0.009, 0.005], [0.400, -0.030, 0.018]], dtype=torch.float64)
CODE_B = torch.tensor([[0.031, 0.50, -0.012], [0.018, 0.02, -0.020], [0.024, 0.05, 0.011],
                       [0.009, 0.03, -0.002]], dtype=torch.float64)


def test_residual_code_first_coordinate_step_by_step():
    """Coordinate 0 of CODE_A, sorted 0.007, 0.012, 0.015, 0.019, 0.4. Slopes: b1 = 0.00425, the line through
    (2, med y = 0.015), so 0.0065 + 0.00425 x. Residuals (by rank) 0.0005, 0.00125, 0, -0.00025, 0.3765;
    |r| without its smallest value, 0.00025, 0.0005, 0.00125, 0.3765: M = 0.000875 (eq. 4 would give 0.0005);
    tau = 1.4826 * 0.000875 * (1 + 5/4) + 1e-7. The outlier's confidence is Z sqrt(1 - h) / |e| with
    Z = 2 sqrt(2/5), h = 1/5 + 4/10: below delta, so its value moves to the line (0.0235), but it is
    neither zeroed nor left out of sigma."""
    step = residual_step(CODE_A[:, :1].T, ResidualParams(**CODE))
    assert step.slope.item() == pytest.approx(0.00425, abs=1e-15)
    assert step.intercept.item() == pytest.approx(0.0065, abs=1e-15)
    tau = 1.4826 * 0.000875 * (1 + 5 / 4) + 1e-7
    assert step.tau.item() == pytest.approx(tau, rel=1e-12)
    outlier = 2 * math.sqrt(2 / 5) * math.sqrt(1 - 0.6) / (0.3765 / tau)
    assert step.confidence[0, 4].item() == pytest.approx(outlier, rel=1e-12)
    assert outlier < 0.01 and not step.kept[0, 4] and step.weight[0, 4].item() == pytest.approx(outlier, rel=1e-12)
    assert step.corrected[0, 4].item() == pytest.approx(0.0235, abs=1e-15)
    confidences = [1.0, 1.0, 1.0, 1.0, outlier]
    assert step.sigma.item() == pytest.approx(float(np.std(confidences, ddof=1)), rel=1e-12)


@pytest.mark.parametrize(("updates", "delta", "update", "weights"), [
    (CODE_A, 0.01, [0.013250098575, -0.011500177917, 0.017500004809], [0.2499975957217] * 4 + [9.617113375801e-06]),
    (CODE_B, 0.01, [0.01702363062, 0.034121020651, -0.003680732512], [0.001687901394] + [0.332770699535] * 3),
    # delta 0.1: client 0's 0.5 moves to the line (0.07) but keeps its small weight (the paper would zero it)
    (CODE_B, 0.1, [0.01702363062, 0.033395223051, -0.003680732512], [0.001687901394] + [0.332770699535] * 3),
])
def test_residual_code_reproduces_the_authors_averaging(updates, delta, update, weights):
    result = build("residual", **CODE, delta=delta)(updates, RoundContext())
    assert result.update.tolist() == pytest.approx(update, abs=1e-11)
    assert result.weights.tolist() == pytest.approx(weights, abs=1e-11)
    paper = build("residual", delta=delta)(updates, RoundContext())
    assert not torch.allclose(paper.weights, result.weights, atol=1e-4)  # the text weighs them otherwise


def test_residual_code_needs_the_codes_line_and_tau():
    with pytest.raises(ValueError, match="intercept: median and eps: 1e-07"):
        validate_params("residual", {"variant": "residual_code"})
    with pytest.raises(ValueError, match="repeated-median IRLS"):
        validate_params("residual", {**CODE, "weighting": "gaussian"})
