"""geomed / rfa, norm_bound, centered_clipping, sparsefed and truncate: hand-worked reference values,
state round trips, bounded influence of a far outlier, identical inputs, permutations."""

import io

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from byzlab import aggregators
from byzlab.aggregators import RoundContext, build
from byzlab.aggregators.truncate import top_count, truncation_cap, weighted_trimmed_mean

TRIANGLE = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.0, 3.0]], dtype=torch.float64)


def scipy_geometric_median(points: torch.Tensor, alpha: np.ndarray) -> np.ndarray:
    x = points.numpy()
    alpha = alpha / alpha.sum()
    objective = lambda z: float((alpha * np.linalg.norm(x - z, axis=1)).sum())  # noqa: E731
    return minimize(objective, x.mean(axis=0), method="BFGS", options={"gtol": 1e-12}).x


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ------------------------------------------------------------------------------------------------ geomed


@pytest.mark.parametrize("counts", [None, [1.0, 1.0, 1.5], [3.0, 1.0, 2.0]])
def test_geomed_matches_scipy_minimiser_of_weighted_distance_sum(counts):
    ctx = RoundContext(num_samples=None if counts is None else torch.tensor(counts))
    result = build("geomed", tol=1e-14, max_iter=1000)(TRIANGLE, ctx)
    reference = scipy_geometric_median(TRIANGLE, np.ones(3) if counts is None else np.array(counts))
    assert np.allclose(result.update.numpy(), reference, atol=1e-6)
    # the update is the weighted mean under the returned (normalised Weiszfeld) weights
    assert torch.allclose(result.weights @ TRIANGLE, result.update)
    assert torch.isclose(result.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert result.accepted is None and result.info["iterations"] >= 1


def test_geomed_default_params_in_float32_and_rfa_is_the_same_rule():
    # uniform geometric median of the triangle (0,0), (4,0), (1,3): about (1.30217, 1.04675) (scipy, BFGS)
    points = TRIANGLE.float()
    geomed = build("geomed")(points, RoundContext())
    rfa = build("rfa")(points, RoundContext())
    assert torch.allclose(geomed.update, torch.tensor([1.30217, 1.04675]), atol=5e-3)
    assert torch.equal(geomed.update, rfa.update) and torch.equal(geomed.weights, rfa.weights)
    assert geomed.info["iterations"] < 100  # stopped by the relative tolerance


def test_geomed_weighting_moves_towards_the_heavy_client():
    heavy = TRIANGLE[2]
    distances = []
    for c in [1.0, 1.5, 1.9]:
        ctx = RoundContext(num_samples=torch.tensor([1.0, 1.0, c]))
        update = build("geomed", tol=1e-14, max_iter=1000)(TRIANGLE, ctx).update
        distances.append(float(torch.linalg.vector_norm(update - heavy)))
    assert distances[0] > distances[1] > distances[2] > 0
    # a client holding more than half the weight (4 of 6) is the weighted geometric median itself
    update = build("geomed")(TRIANGLE, RoundContext(num_samples=torch.tensor([1.0, 1.0, 4.0]))).update
    assert torch.allclose(update, heavy, atol=1e-4)
    # uniform weighting ignores the claim
    uniform = build("geomed", weighting="uniform")(TRIANGLE, RoundContext(num_samples=torch.tensor([1.0, 1.0, 4.0])))
    assert torch.allclose(uniform.update, build("geomed")(TRIANGLE, RoundContext()).update)


# -------------------------------------------------------------------------------------------- norm bound


def test_norm_bound_clips_one_update_and_weights_by_counts():
    updates = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -1.0]])
    result = build("norm_bound", threshold=2.0)(updates, RoundContext(num_samples=torch.tensor([2.0, 1.0, 1.0])))
    # ||(3,4)|| = 5 > 2 -> (1.2, 1.6); weights 1/2, 1/4, 1/4:
    # 0.5 * (1.2, 1.6) + 0.25 * (1, 0) + 0.25 * (0, -1) = (0.85, 0.55)
    assert torch.allclose(result.update, torch.tensor([0.85, 0.55]))
    # shares w_i s_i / sum: (0.5 * 0.4, 0.25, 0.25) / 0.7 = (2/7, 5/14, 5/14)
    assert torch.allclose(result.weights, torch.tensor([2 / 7, 5 / 14, 5 / 14]))
    assert result.info["clipped"] == 1.0 and result.accepted is None
    uniform = build("norm_bound", threshold=2.0, weighting="uniform")(updates, RoundContext())
    assert torch.allclose(uniform.update, torch.tensor([2.2 / 3, 0.6 / 3]))


# ------------------------------------------------------------------------------------- centered clipping


def test_centered_clipping_by_hand_over_two_rounds():
    rule = build("centered_clipping", tau=2.0)
    first = rule(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -1.0]]), RoundContext())
    # centre 0: clip_2((3,4)) = (1.2, 1.6); (1,0), (0,-1) unclipped; mean = (2.2/3, 0.6/3)
    v1 = torch.tensor([2.2 / 3, 0.2])
    assert torch.allclose(first.update, v1)
    assert torch.allclose(first.weights, torch.tensor([0.4, 1.0, 1.0]) / 2.4)
    assert first.info["clipped"] == 1.0
    # second round is centred on v1: differences (6,8), (1,0), (0,1) -> (1.2,1.6), (1,0), (0,1)
    second = rule(v1 + torch.tensor([[6.0, 8.0], [1.0, 0.0], [0.0, 1.0]]), RoundContext())
    assert torch.allclose(second.update, v1 + torch.tensor([2.2 / 3, 2.6 / 3]))


def test_centered_clipping_iterations_and_momentum():
    same = torch.tensor([6.0, 8.0]).repeat(3, 1)  # norm 10
    # every iteration moves the centre by tau = 3 towards the common point: 3, then 6, ... capped at 10
    two = build("centered_clipping", tau=3.0, iterations=2)(same, RoundContext()).update
    assert torch.allclose(two, torch.tensor([3.6, 4.8]))
    four = build("centered_clipping", tau=3.0, iterations=4)(same, RoundContext()).update
    assert torch.allclose(four, torch.tensor([6.0, 8.0]))
    # momentum 0.5: m1 = 0.5 * 0 + 0.5 * CC(x; 0) = 0.5 * (2.2/3, 0.2)
    rule = build("centered_clipping", tau=2.0, momentum=0.5)
    m1 = rule(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -1.0]]), RoundContext()).update
    assert torch.allclose(m1, torch.tensor([1.1 / 3, 0.1]))
    # m2 = 0.5 m1 + 0.5 (m1 + mean clip(x - m1)) with x - m1 = (1, 0) for all rows -> m1 + (0.5, 0)
    m2 = rule((m1 + torch.tensor([1.0, 0.0])).repeat(3, 1), RoundContext()).update
    assert torch.allclose(m2, m1 + torch.tensor([0.5, 0.0]))


# --------------------------------------------------------------------------------------------- sparsefed


def test_sparsefed_top_k_and_error_feedback_by_hand():
    rule = build("sparsefed", clip=100.0, topk_fraction=0.5)  # d = 4 -> k = 2
    first = rule(torch.tensor([[4.0, 1.0, 0.0, -3.0], [2.0, 1.0, 2.0, -1.0]]), RoundContext())
    # mean (3, 1, 1, -2); the two largest magnitudes are sent, (0, 1, 1, 0) stays in the accumulator
    assert torch.equal(first.update, torch.tensor([3.0, 0.0, 0.0, -2.0]))
    assert torch.equal(rule.state_dict()["error"], torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert first.info["k"] == 2.0
    second = rule(torch.tensor([[0.0, 1.0, 3.0, 0.0], [0.0, -1.0, 1.0, 0.0]]), RoundContext())
    # mean (0, 0, 2, 0) + accumulator (0, 1, 1, 0) = (0, 1, 3, 0): coordinate 1, unsent in round 1, goes now
    assert torch.equal(second.update, torch.tensor([0.0, 1.0, 3.0, 0.0]))
    assert torch.equal(rule.state_dict()["error"], torch.zeros(4))
    # nothing is lost: the applied updates sum to the sum of the round means
    assert torch.equal(first.update + second.update, torch.tensor([3.0, 1.0, 3.0, -2.0]))


def test_sparsefed_clips_before_averaging_and_masks_momentum():
    rule = build("sparsefed", clip=1.0, topk_fraction=1.0)
    result = rule(torch.tensor([[3.0, 4.0], [0.5, 0.0]]), RoundContext())
    # (3,4) -> (0.6, 0.8); mean with (0.5, 0) = (0.55, 0.4); k = d sends everything
    assert torch.allclose(result.update, torch.tensor([0.55, 0.4]))
    assert torch.allclose(result.weights, torch.tensor([0.2, 1.0]) / 1.2)

    rule = build("sparsefed", clip=100.0, topk_fraction=0.5, momentum=0.5)  # d = 2 -> k = 1
    first = rule(torch.tensor([[2.0, 1.0]]), RoundContext())
    # V = (2, 1), E = (2, 1): send coordinate 0; E = (0, 1), V masked to (0, 1)
    assert torch.equal(first.update, torch.tensor([2.0, 0.0]))
    second = rule(torch.tensor([[1.0, 0.0]]), RoundContext())
    # V = 0.5 (0, 1) + (1, 0) = (1, 0.5); E = (0, 1) + V = (1, 1.5): send coordinate 1
    assert torch.equal(second.update, torch.tensor([0.0, 1.5]))
    state = rule.state_dict()
    assert torch.equal(state["error"], torch.tensor([1.0, 0.0]))
    assert torch.equal(state["velocity"], torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------------------------------------- truncate


def test_truncation_cap_by_hand():
    # n = 10, top 1 client, mass 1/2: min(100, t) <= (min(100, t) + 90) / 2  ->  t <= 90
    assert truncation_cap(torch.tensor([100.0] + [10.0] * 9), 0.1, 0.5) == (90.0, True)
    # n = 20, top 2: for t in [40, 60], t + 40 <= (t + 40 + 18 * 5) / 2  ->  t <= 50
    assert truncation_cap(torch.tensor([60.0, 40.0] + [5.0] * 18), 0.1, 0.5) == (50.0, True)
    # already balanced: no truncation, the cap is the largest claim
    assert truncation_cap(torch.tensor([3.0, 2.0, 2.0, 1.0, 2.0]), 0.2, 0.5) == (3.0, True)
    # one client: its share is always 1 > 1/2; no cap exists
    assert truncation_cap(torch.tensor([7.0]), 0.1, 0.5) == (7.0, False)
    assert top_count(0.1, 30) == 3 and top_count(0.1, 5) == 1


def test_truncate_weighted_trimmed_mean_by_hand():
    updates = torch.tensor([[0.0, 4.0], [1.0, -2.0], [2.0, 0.0], [10.0, 1.0]])
    rule = build("truncate", top_fraction=0.25, mass=0.5, beta=0.1)
    result = rule(updates, RoundContext(num_samples=torch.tensor([1.0, 1.0, 2.0, 8.0])))
    # top 1 of 4: t <= (t + 4) / 2 -> t = 4; counts (1, 1, 2, 4) / 8
    assert result.info["cap"] == 4.0 and result.info["truncated"] == 1.0
    # coordinate 0: sorted 0|1|2|10 over [0,.125],[.125,.25],[.25,.5],[.5,1]; keep [.1,.9]:
    #   kept .025, .125, .25, .4 -> (0*.025 + 1*.125 + 2*.25 + 10*.4) / .8 = 4.625 / .8 = 5.78125
    # coordinate 1: sorted -2|0|1|4 (clients 1, 2, 3, 0) with weights .125,.25,.5,.125; keep [.1,.9]:
    #   kept .025, .25, .5, .025 -> (-2*.025 + 0*.25 + 1*.5 + 4*.025) / .8 = .55 / .8 = 0.6875
    assert torch.allclose(result.update, torch.tensor([5.78125, 0.6875]))
    # shares of the kept weight, averaged over the two coordinates:
    #   client 0 (.025 + .025) / .8 / 2 = .03125, client 1 (.125 + .025) / 1.6 = .09375,
    #   client 2 (.25 + .25) / 1.6 = .3125, client 3 (.4 + .5) / 1.6 = .5625
    assert torch.allclose(result.weights, torch.tensor([0.03125, 0.09375, 0.3125, 0.5625]))
    assert result.accepted is None
    # without trimming the weights are the truncated, normalised counts (1, 1, 2, 4) / 8
    ctx = RoundContext(num_samples=torch.tensor([1.0, 1.0, 2.0, 8.0]))
    untrimmed = build("truncate", top_fraction=0.25, beta=0.0)(updates, ctx)
    assert torch.allclose(untrimmed.weights, torch.tensor([0.125, 0.125, 0.25, 0.5]))
    assert torch.allclose(untrimmed.update, torch.tensor([0.125, 0.125, 0.25, 0.5]) @ updates)


def test_truncate_with_equal_claims_is_the_ordinary_trimmed_mean():
    torch.manual_seed(0)
    updates = torch.randn(10, 7)
    # beta unset: f / n = 2 / 10 -> drop exactly 2 values per side
    result = build("truncate")(updates, RoundContext(num_byzantine=2))
    expected = torch.sort(updates, dim=0).values[2:8].mean(dim=0)
    assert torch.allclose(result.update, expected, atol=1e-6)
    assert result.info["beta"] == pytest.approx(0.2)
    assert torch.isclose(result.weights.sum(), torch.tensor(1.0))
    # beta unset and f = 0: 0.1 -> one value per side
    result = build("truncate")(updates, RoundContext())
    assert torch.allclose(result.update, torch.sort(updates, dim=0).values[1:9].mean(dim=0), atol=1e-6)
    # beta = 0 is the weighted mean under the truncated weights
    mean, shares = weighted_trimmed_mean(updates, torch.full((10,), 0.1), 0.0)
    assert torch.allclose(mean, updates.mean(dim=0), atol=1e-6)
    assert torch.allclose(shares, torch.full((10,), 0.1, dtype=torch.float64))


def test_truncate_default_trim_covers_a_heavy_claim():
    updates, center = clustered_with_outlier(1e4)
    counts = torch.tensor([20.0] * 9 + [50.0])  # the outlier claims 2.5x the others; no truncation needed
    result = build("truncate")(updates, RoundContext(num_samples=counts, num_byzantine=1))
    # beta = the heaviest client's share 50 / 230: the outlier is trimmed entirely (f / n = 0.1 would keep
    # 50/230 - 0.1 of its weight and the aggregate would be ~6.6e3 away)
    assert result.info["beta"] == pytest.approx(50 / 230) and result.info["cap"] == 50.0
    assert float(torch.linalg.vector_norm(result.update - center)) < 0.5
    assert float(result.weights[-1]) < 1e-6


def test_truncate_check_setting():
    cls = build("truncate").__class__
    params = cls.Params()
    cls.check_setting(params, 10, 2)
    with pytest.raises(ValueError, match="no cap"):
        cls.check_setting(params, 1, 0)  # top 1 of 1 always holds everything
    with pytest.raises(ValueError, match="beta=0.5"):
        cls.check_setting(params, 4, 2)  # f / n = 1/2: nothing left after trimming


# ------------------------------------------------------------------------------------------ state round trip


@pytest.mark.parametrize(
    "name, params",
    [
        ("centered_clipping", {"tau": 1.0, "momentum": 0.3}),
        ("sparsefed", {"clip": 2.0, "topk_fraction": 0.3, "momentum": 0.5}),
    ],
)
def test_state_round_trips_and_restored_rule_continues_identically(name, params):
    torch.manual_seed(1)
    rounds = [torch.randn(6, 20) * 2 for _ in range(3)]
    original = build(name, **params)
    assert original.state_dict() == {}
    original(rounds[0], RoundContext())
    state = roundtrip(original.state_dict())
    assert state and all(isinstance(value, torch.Tensor) for value in state.values())
    restored = build(name, **params)
    restored.load_state_dict(state)
    for updates in rounds[1:]:
        a, b = original(updates, RoundContext()), restored(updates, RoundContext())
        assert torch.equal(a.update, b.update)
    assert all(torch.equal(original.state_dict()[k], restored.state_dict()[k]) for k in original.state_dict())
    with pytest.raises(ValueError, match="unknown state keys"):
        restored.load_state_dict({"bogus": torch.zeros(1)})
    fresh = build(name, **params)
    fresh.load_state_dict({})  # an empty state is the initial state
    assert fresh.state_dict() == {}


# ------------------------------------------------------------------------------------- bounded influence


def clustered_with_outlier(scale: float, d: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Nine updates around (1, ..., 1) and one at scale * (1, -1, 1, -1, ...)."""
    torch.manual_seed(2)
    center = torch.ones(d)
    cluster = center + 0.1 * torch.randn(9, d)
    outlier = scale * torch.tensor([1.0, -1.0] * (d // 2))
    return torch.cat([cluster, outlier[None]]), center


@pytest.mark.parametrize(
    "name, params, bound",
    [
        ("geomed", {}, 0.5),
        ("rfa", {}, 0.5),
        ("centered_clipping", {"tau": 10.0}, 10.0 / 10 + 0.6),  # outlier moves v by at most tau / n
        ("norm_bound", {"threshold": 5.0}, 5.0 / 10 + 0.6),  # outlier adds at most M / n
        ("sparsefed", {"clip": 5.0, "topk_fraction": 1.0}, 5.0 / 10 + 0.6),
        ("truncate", {}, 0.5),  # beta = 0.1 trims the one outlier's weight 1/10
    ],
)
def test_one_far_outlier_has_bounded_influence(name, params, bound):
    updates, center = clustered_with_outlier(1e4)
    result = build(name, **params)(updates, RoundContext(num_samples=torch.full((10,), 20.0)))
    assert float(torch.linalg.vector_norm(result.update - center)) < bound
    assert float(torch.linalg.vector_norm(updates.mean(dim=0) - center)) > 1e3  # the mean is ruined
    # the outlier's size does not matter: 1e4 and 1e7 give (nearly) the same aggregate
    farther, _ = clustered_with_outlier(1e7)
    again = build(name, **params)(farther, RoundContext(num_samples=torch.full((10,), 20.0)))
    assert torch.allclose(again.update, result.update, atol=1e-2)
    if result.weights is not None:
        assert float(result.weights[-1]) < 0.02  # the outlier's share of the aggregate


def test_sparsefed_default_top_k_still_bounds_the_outlier():
    updates, center = clustered_with_outlier(1e4)
    result = build("sparsefed", clip=5.0)(updates, RoundContext())
    # 70% of coordinates are sent; the aggregate stays within tau / n + the unsent 30% of the cluster
    assert float(torch.linalg.vector_norm(result.update - center)) < 0.5 + 0.6 + (0.3 * 20) ** 0.5
    assert result.info["k"] == 14.0


def test_truncate_caps_a_quantity_enhanced_outlier():
    updates, center = clustered_with_outlier(1e4)
    counts = torch.tensor([20.0] * 9 + [1e6])  # the outlier also claims a huge sample count
    # without truncation the claim would give it 1e6 / (1e6 + 180) of the weight; the cap t solves
    # t <= 0.4 (t + 180) -> t = 120, share 120 / 300 = 0.4 < beta = 0.45, so it is trimmed away
    result = build("truncate", mass=0.4, beta=0.45)(updates, RoundContext(num_samples=counts))
    assert result.info["cap"] == pytest.approx(120.0)
    assert float(result.weights[-1]) < 1e-6
    assert float(torch.linalg.vector_norm(result.update - center)) < 0.5
    # with the raw claims (a cap above every claim: mass 1) the outlier holds 99.98% and wins every coordinate
    raw = build("truncate", mass=1.0, beta=0.45)(updates, RoundContext(num_samples=counts))
    assert raw.info["cap"] == 1e6 and float(torch.linalg.vector_norm(raw.update - center)) > 1e3


# ---------------------------------------------------------------------------- identical inputs, permutations


@pytest.mark.parametrize(
    "name, params",
    [
        ("geomed", {}),
        ("rfa", {}),
        ("norm_bound", {}),
        ("centered_clipping", {}),
        ("truncate", {}),
        ("sparsefed", {"topk_fraction": 1.0}),
    ],
)
def test_identical_inputs_return_that_input(name, params):
    same = torch.tensor([0.5, -0.25, 0.1]).repeat(5, 1)  # norm < every default bound (1, 100)
    counts = torch.tensor([1.0, 2.0, 3.0, 50.0, 5.0])
    result = build(name, **params)(same, RoundContext(num_samples=counts))
    assert torch.allclose(result.update, same[0], atol=1e-6)


def test_sparsefed_identical_inputs_send_top_k_and_keep_the_rest():
    x = torch.tensor([0.5, -0.05, 0.3, 0.01, -0.2])  # norm < clip = 1
    rule = build("sparsefed", topk_fraction=0.6)  # k = 3
    first = rule(x.repeat(4, 1), RoundContext())
    assert torch.allclose(first.update, torch.tensor([0.5, 0.0, 0.3, 0.0, -0.2]))
    assert torch.allclose(first.update + rule.state_dict()["error"], x)  # sent + kept = the input
    second = rule(x.repeat(4, 1), RoundContext())
    # accumulator (0, -0.05, 0, 0.01, 0) + x = (0.5, -0.1, 0.3, 0.02, -0.2): the same three go again
    assert torch.allclose(second.update, torch.tensor([0.5, 0.0, 0.3, 0.0, -0.2]))
    assert torch.allclose(rule.state_dict()["error"], torch.tensor([0.0, -0.1, 0.0, 0.02, 0.0]))


@pytest.mark.parametrize(
    "name, params",
    [
        ("geomed", {}),
        ("norm_bound", {"threshold": 2.0}),
        ("centered_clipping", {"tau": 2.0}),
        ("sparsefed", {"clip": 2.0}),
        ("truncate", {"top_fraction": 0.2}),
    ],
)
def test_permuting_clients_permutes_weights_only(name, params):
    torch.manual_seed(3)
    updates = torch.randn(8, 30)
    counts = torch.tensor([5.0, 1.0, 30.0, 2.0, 8.0, 3.0, 100.0, 4.0])
    perm = torch.randperm(8)
    base = build(name, **params)(updates, RoundContext(num_samples=counts, num_byzantine=1))
    permuted = build(name, **params)(updates[perm], RoundContext(num_samples=counts[perm], num_byzantine=1))
    assert torch.allclose(permuted.update, base.update, atol=1e-5)
    assert torch.allclose(permuted.weights, base.weights[perm], atol=1e-6)


def test_nonfinite_row_is_dropped_with_zero_weight():
    updates = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0], [1.0, 1.0]])
    for name in ["geomed", "norm_bound", "centered_clipping", "sparsefed", "truncate"]:
        result = build(name)(updates, RoundContext(num_samples=torch.tensor([1.0, 9.0, 1.0, 1.0])))
        assert torch.isfinite(result.update).all(), name
        assert result.weights[1] == 0 and not result.accepted[1] and result.accepted[[0, 2, 3]].all(), name
