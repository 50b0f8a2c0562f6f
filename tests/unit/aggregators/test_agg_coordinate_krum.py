import numpy as np
import pytest
import torch
from scipy.stats import siegelslopes

from byzlab import aggregators
from byzlab.aggregators.base import RoundContext
from byzlab.aggregators.registry import build

COORDINATE = ["median", "trimmed_mean", "repeated_median"]
SELECTING = ["krum", "multi_krum", "l1_krum", "bulyan"]

# 5 clients x 2 coordinates, asymmetric so mean, median and trimmed mean differ.
# coordinate 0: 0, 1, 0, 3, 10 -> sorted 0, 0, 1, 3, 10: mean 14/5 = 2.8, median 1, trimmed (k=1) (0+1+3)/3 = 4/3
# coordinate 1: 0, 0, 2, 1, -5 -> sorted -5, 0, 0, 1, 2: mean -2/5 = -0.4, median 0, trimmed (k=1) (0+0+1)/3 = 1/3
FIVE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [10.0, -5.0]])


def run(name, updates, f=0, **params):
    return build(name, **params)(updates, RoundContext(num_byzantine=f))


# ------------------------------------------------------------------------------------ coordinate rules


def test_median_trimmed_mean_reference_values():
    assert torch.allclose(FIVE.mean(dim=0), torch.tensor([2.8, -0.4]))
    assert torch.allclose(run("median", FIVE).update, torch.tensor([1.0, 0.0]))
    # f = 1 -> k = 1 per side
    result = run("trimmed_mean", FIVE, f=1)
    assert torch.allclose(result.update, torch.tensor([4.0 / 3.0, 1.0 / 3.0]))
    assert result.info == {"trim": 1.0, "f_clamped": 0.0}
    assert result.weights is None and result.accepted is None
    # f = 0 -> k = floor(0.1 * 5) = 0: the plain mean; floor(0.2 * 5) = 1 as for f = 1
    assert torch.allclose(run("trimmed_mean", FIVE).update, FIVE.mean(dim=0))
    assert torch.allclose(run("trimmed_mean", FIVE, beta=0.2).update, torch.tensor([4.0 / 3.0, 1.0 / 3.0]))
    # an explicit trim overrides f: k = 2 of 5 leaves the median
    assert torch.allclose(run("trimmed_mean", FIVE, f=1, trim=2).update, torch.tensor([1.0, 0.0]))
    assert torch.allclose(run("trimmed_mean", FIVE, f=1, trim=0).update, FIVE.mean(dim=0))


def test_median_even_and_odd_counts():
    # odd: 4, 1, 9 -> 4; even: 1, 2, 4, 10 -> (2 + 4) / 2 = 3 (torch.median would give the lower, 2)
    assert torch.allclose(run("median", torch.tensor([[4.0], [1.0], [9.0]])).update, torch.tensor([4.0]))
    assert torch.allclose(run("median", torch.tensor([[1.0], [2.0], [10.0], [4.0]])).update, torch.tensor([3.0]))
    assert torch.allclose(run("median", torch.tensor([[1.0, 7.0]])).update, torch.tensor([1.0, 7.0]))


def test_repeated_median_one_coordinate_with_outlier():
    # y = 0, 1, 3, 4, 100 (already sorted, so x = rank = 0..4), centre xbar = 2.
    # Inner slope medians m_i = med_{j != i} (y_j - y_i) / (j - i):
    #   i=0: 1, 3/2, 4/3, 25            -> (4/3 + 3/2) / 2 = 17/12
    #   i=1: 1, 2, 3/2, 33              -> (3/2 + 2) / 2 = 7/4
    #   i=2: 3/2, 2, 1, 97/2            -> 7/4
    #   i=3: 4/3, 3/2, 1, 96            -> 17/12
    #   i=4: 25, 33, 97/2, 96           -> (33 + 97/2) / 2 = 163/4
    # eq. (1): b1 = med(17/12, 7/4, 7/4, 17/12, 163/4) = 7/4.
    # hierarchical: med_i(y_i + b1 (2 - i)) = med(3.5, 2.75, 3, 2.25, 96.5) = 3
    # separate (eq. 2, pairwise lines at the centre): med_i(y_i + m_i (2 - i))
    #   = med(17/6, 2.75, 3, 4 - 17/12 = 31/12, 100 - 163/2 = 18.5) = 17/6
    y = torch.tensor([[3.0], [100.0], [0.0], [4.0], [1.0]])  # client order does not matter
    assert torch.allclose(run("repeated_median", y).update, torch.tensor([17.0 / 6.0]))
    assert torch.allclose(run("repeated_median", y, intercept="hierarchical").update, torch.tensor([3.0]))
    assert torch.allclose(run("median", y).update, torch.tensor([3.0]))  # 17/6 != median != mean 21.6
    result = run("repeated_median", y)
    assert result.weights is None and result.accepted is None
    # two values: the line through them at the centre is their mean; one value: itself
    assert torch.allclose(run("repeated_median", torch.tensor([[1.0], [4.0]])).update, torch.tensor([2.5]))
    assert torch.allclose(run("repeated_median", torch.tensor([[1.0, 2.0]])).update, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("intercept", ["separate", "hierarchical"])
@pytest.mark.parametrize("n", [3, 4, 7, 10])
def test_repeated_median_matches_scipy_siegelslopes(intercept, n):
    # scipy's siegelslopes on (centred rank, sorted value): its intercept is the line's value at the centre
    updates = torch.randn(n, 12, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    ours = run("repeated_median", updates, intercept=intercept).update.numpy()
    x = np.arange(n) - (n - 1) / 2
    ref = [siegelslopes(np.sort(updates[:, k].numpy()), x, method=intercept).intercept for k in range(12)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_chunked_computation_equals_unchunked(monkeypatch):
    updates = torch.randn(9, 37, generator=torch.Generator().manual_seed(1))
    whole = run("repeated_median", updates).update
    for chunk in (1, 5, 36, 1000):
        assert torch.allclose(run("repeated_median", updates, chunk_size=chunk).update, whole)
    expected = {name: run(name, updates, f=2).update for name in ("median", "trimmed_mean", "bulyan")}
    monkeypatch.setattr(aggregators.numerics, "CHUNK_ELEMENTS", 20)  # 2-3 coordinates per slice
    for name, value in expected.items():
        assert torch.allclose(run(name, updates, f=2).update, value)
    assert torch.allclose(run("repeated_median", updates).update, whole)


# ------------------------------------------------------------------------------------ krum family


def test_krum_and_multi_krum_by_hand():
    # f = 1: each score sums the n - f - 2 = 2 smallest squared distances to the others.
    # d01=1 d02=4 d03=10 d04=125 d12=5 d13=5 d14=106 d23=10 d24=149 d34=85
    # s0 = 1+4 = 5, s1 = 1+5 = 6, s2 = 4+5 = 9, s3 = 5+10 = 15, s4 = 85+106 = 191
    krum = run("krum", FIVE, f=1)
    assert torch.equal(krum.update, FIVE[0])
    assert torch.equal(krum.weights, torch.tensor([1.0, 0, 0, 0, 0]))
    assert krum.accepted.tolist() == [True, False, False, False, False]
    assert krum.info == {"f_clamped": 0.0, "selected": 1.0}
    # Multi-Krum, default m = n - f = 4: clients 0-3 -> ((0+1+0+3)/4, (0+0+2+1)/4) = (1, 0.75)
    multi = run("multi_krum", FIVE, f=1)
    assert torch.allclose(multi.update, torch.tensor([1.0, 0.75]))
    assert torch.allclose(multi.weights, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    assert multi.accepted.tolist() == [True, True, True, True, False]
    # m = 2: clients 0 and 1 -> (0.5, 0)
    two = run("multi_krum", FIVE, f=1, m=2)
    assert torch.allclose(two.update, torch.tensor([0.5, 0.0]))
    assert two.accepted.tolist() == [True, True, False, False, False]
    # f = 0, no m: every update is selected, Multi-Krum is the mean
    assert torch.allclose(run("multi_krum", FIVE).update, FIVE.mean(dim=0))


def test_l1_krum_chooses_differently_from_krum():
    points = torch.tensor([[0.0, 1.0], [0.0, -2.0], [1.0, -3.0], [-2.0, -1.0], [0.0, 2.0]])
    # f = 1, 2 neighbours.
    # squared L2: d01=9 d02=17 d03=8 d04=1 d12=2 d13=5 d14=16 d23=13 d24=26 d34=13
    #   s0 = 1+8 = 9, s1 = 2+5 = 7, s2 = 2+13 = 15, s3 = 5+8 = 13, s4 = 1+13 = 14 -> client 1
    # L1:         d01=3 d02=5  d03=4 d04=1 d12=2 d13=3 d14=4  d23=5  d24=6  d34=5
    #   s0 = 1+3 = 4, s1 = 2+3 = 5, s2 = 2+5 = 7, s3 = 3+4 = 7, s4 = 1+4 = 5 -> client 0
    assert torch.equal(run("krum", points, f=1).update, points[1])
    l1 = run("l1_krum", points, f=1)
    assert torch.equal(l1.update, points[0])
    assert l1.accepted.tolist() == [True, False, False, False, False]
    # m = 3 with L1 scores: clients 0, then 1 and 4 (both 5; totals 13 vs 16 -> 1 first, then 4)
    three = run("l1_krum", points, f=1, m=3)
    assert three.accepted.tolist() == [True, True, False, False, True]
    assert torch.allclose(three.update, points[[0, 1, 4]].mean(dim=0))


def test_bulyan_by_hand():
    # n = 7, f = 1: theta = n - 2f = 5 selected by repeated Krum, beta = theta - 2f = 3 kept per coordinate.
    u = torch.tensor([[-2.0, 1.0], [-2.0, 0.0], [0.0, 0.0], [1.0, -1.0], [0.0, -1.0], [2.0, 0.0], [20.0, -20.0]])
    # squared distances: d01=1 d02=5 d03=13 d04=8 d05=17 d12=4 d13=10 d14=5 d15=16 d23=2 d24=1 d25=4 d34=1
    #   d35=2 d45=5; to the outlier 6: 925, 884, 800, 722, 761, 724
    # r=7, 4 neighbours: s0=1+5+8+13=27 s1=1+4+5+10=20 s2=1+2+4+4=11 s3=1+2+2+10=15 s4=1+1+5+5=12 s5=27 s6=3007
    #   -> 2
    # r=6, 3 neighbours: s0=1+8+13=22 s1=1+5+10=16 s3=1+2+10=13 s4=1+5+5=11 s5=2+5+16=23 -> 4
    # r=5, 2 neighbours: s0=1+13=14 s1=1+10=11 s3=2+10=12 s5=2+16=18 s6=722+724 -> 1
    # r=4, max(1, r-f-2)=1 neighbour: s0=13 s3=2 s5=2 s6=722; tie 3/5 broken by the total distance to the
    #   remaining: 13+2+722=737 < 17+2+724=743 -> 3
    # r=3, 1 neighbour: s0=17 s5=17 s6=724; totals 17+925=942 > 17+724=741 -> 5
    # selected {1, 2, 3, 4, 5}:
    #   coordinate 0: -2, 0, 1, 0, 2 -> median 0, the 3 closest 0, 0, 1 -> 1/3
    #   coordinate 1: 0, 0, -1, -1, 0 -> median 0, the 3 closest 0, 0, 0 -> 0
    result = run("bulyan", u, f=1)
    assert result.accepted.tolist() == [False, True, True, True, True, True, False]
    assert torch.allclose(result.update, torch.tensor([1.0 / 3.0, 0.0]))
    assert result.weights is None
    assert result.info == {"f_clamped": 0.0, "selected": 5.0, "beta": 3.0}
    # for contrast: mean (19/7, -3), median (0, 0), trimmed mean k=1 (0.2, -0.4), Krum (0, 0)
    assert torch.allclose(run("median", u).update, torch.zeros(2))
    assert torch.allclose(run("trimmed_mean", u, f=1).update, torch.tensor([0.2, -0.4]))
    # f = 0: theta = beta = n, Bulyan is the mean
    assert torch.allclose(run("bulyan", u).update, u.mean(dim=0))


# --------------------------------------------------------------------------------- settings, clamping


@pytest.mark.parametrize("name", ["krum", "multi_krum", "l1_krum"])
def test_krum_check_setting(name):
    cls = aggregators.registry.aggregator_class(name)
    cls.check_setting(cls.Params(), 5, 1)
    with pytest.raises(ValueError, match=rf"{name} needs n > 2f \+ 2 .*n=4, f=1 \(2f \+ 2 = 4; at most f=0"):
        cls.check_setting(cls.Params(), 4, 1)
    with pytest.raises(ValueError, match=r"n=10, f=4"):
        cls.check_setting(cls.Params(), 10, 4)


def test_m_check_setting():
    cls = aggregators.registry.aggregator_class("multi_krum")
    cls.check_setting(cls.Params(m=8), 10, 2)
    with pytest.raises(ValueError, match=r"multi_krum: m=9 .* n - f = 8 .*n=10, f=2"):
        cls.check_setting(cls.Params(m=9), 10, 2)
    with pytest.raises(ValueError, match="parameter 'm'"):
        build("multi_krum", m=0)


def test_bulyan_check_setting():
    cls = aggregators.registry.aggregator_class("bulyan")
    cls.check_setting(cls.Params(), 7, 1)
    with pytest.raises(ValueError, match=r"bulyan needs n >= 4f \+ 3 .*n=6, f=1 \(4f \+ 3 = 7; at most f=0"):
        cls.check_setting(cls.Params(), 6, 1)
    with pytest.raises(ValueError, match=r"n=10, f=2 \(4f \+ 3 = 11"):
        cls.check_setting(cls.Params(), 10, 2)


def test_trimmed_mean_check_setting():
    cls = aggregators.registry.aggregator_class("trimmed_mean")
    cls.check_setting(cls.Params(), 7, 3)
    with pytest.raises(ValueError, match=r"trimmed_mean: trimming k=3 .* n > 2k = 6 .*got n=6"):
        cls.check_setting(cls.Params(), 6, 3)
    with pytest.raises(ValueError, match=r"k=2 .*got n=4"):
        cls.check_setting(cls.Params(trim=2), 4, 0)
    with pytest.raises(ValueError, match=r"k=3 .*got n=5"):
        cls.check_setting(cls.Params(trim=None, beta=0.45), 5, 3)  # f = 3 > 0 takes precedence over beta
    cls.check_setting(cls.Params(beta=0.45), 5, 0)  # floor(beta * n) < n / 2 always
    with pytest.raises(ValueError, match="parameter 'beta'"):
        build("trimmed_mean", beta=0.5)


def test_aggregate_clamps_f_when_a_round_has_too_many_attackers():
    # krum on n = 5 supports f <= 1: told f = 2, it runs with f = 1 (the hand-worked scores above)
    result = run("krum", FIVE, f=2)
    assert result.info["f_clamped"] == 1.0
    assert torch.equal(result.update, FIVE[0])
    multi = run("multi_krum", FIVE, f=3)  # f -> 1, m = n - f = 4
    assert multi.info == {"f_clamped": 1.0, "selected": 4.0}
    assert run("l1_krum", FIVE, f=2).info["f_clamped"] == 1.0
    # bulyan on n = 7 supports f <= 1
    seven = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    bulyan = run("bulyan", seven, f=2)
    assert bulyan.info == {"f_clamped": 1.0, "selected": 5.0, "beta": 3.0}
    assert torch.allclose(bulyan.update, run("bulyan", seven, f=1).update)
    # trimmed mean on n = 5 trims at most 2 per side
    trimmed = run("trimmed_mean", FIVE, f=3)
    assert trimmed.info == {"trim": 2.0, "f_clamped": 1.0}
    assert torch.allclose(trimmed.update, torch.tensor([1.0, 0.0]))
    assert run("trimmed_mean", FIVE, trim=7).info["f_clamped"] == 1.0
    # tiny rounds still aggregate
    assert torch.allclose(run("krum", FIVE[:1], f=1).update, FIVE[0])
    assert torch.allclose(run("bulyan", FIVE[:2], f=1).update, FIVE[:2].mean(dim=0))


# ----------------------------------------------------------------------------------------- behaviour


def cluster_with_outlier(n=10, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    updates = 1.0 + 0.1 * torch.randn(n, d, generator=g)
    updates[3] = -50.0 + torch.randn(d, generator=g)  # one far outlier, not the last row
    return updates


@pytest.mark.parametrize("name", SELECTING)
def test_selecting_rules_exclude_a_far_outlier(name):
    updates = cluster_with_outlier()
    result = run(name, updates, f=2)
    assert not bool(result.accepted[3])
    if result.weights is not None:
        assert float(result.weights[3]) == 0.0
        assert torch.allclose(result.weights.sum(), torch.tensor(1.0))
    assert float((result.update - 1.0).abs().max()) < 0.35


@pytest.mark.parametrize("name", COORDINATE)
def test_coordinate_rules_stay_near_the_cluster(name):
    updates = cluster_with_outlier()
    honest = torch.cat([updates[:3], updates[4:]])
    result = run(name, updates, f=1)
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    assert bool(((result.update >= low) & (result.update <= high)).all())
    assert float((updates.mean(dim=0) - 1.0).abs().min()) > 4.0  # the mean is dragged away


@pytest.mark.parametrize("name", COORDINATE + SELECTING)
def test_permutation_identical_inputs_and_nonfinite_rows(name):
    updates = torch.randn(9, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    base = run(name, updates, f=1)
    perm = torch.tensor([4, 0, 8, 2, 7, 1, 3, 6, 5])
    permuted = run(name, updates[perm], f=1)
    assert torch.allclose(permuted.update, base.update)
    if base.weights is not None:
        assert torch.allclose(permuted.weights, base.weights[perm])
    if base.accepted is not None:
        assert torch.equal(permuted.accepted, base.accepted[perm])
    same = torch.tensor([0.5, -2.0, 3.0]).repeat(9, 1)
    assert torch.allclose(run(name, same, f=2).update, same[0])
    poisoned = updates.clone()
    poisoned[2, 1] = float("nan")
    result = run(name, poisoned, f=1)
    assert bool(torch.isfinite(result.update).all())
    assert not bool(result.accepted[2])
    assert result.info["nonfinite_dropped"] == 1.0


def test_huge_updates_do_not_break_selection():
    updates = cluster_with_outlier(n=11)  # bulyan supports f = 2 from n = 11
    updates[7] = 1e30  # squared distances overflow to inf, never NaN
    for name in SELECTING:
        result = run(name, updates, f=2)
        assert not bool(result.accepted[7]) and not bool(result.accepted[3])
        assert bool(torch.isfinite(result.update).all())


@pytest.mark.parametrize("intercept", ["separate", "hierarchical"])
def test_repeated_median_is_affine_equivariant(intercept):
    updates = torch.randn(8, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    base = run("repeated_median", updates, intercept=intercept).update
    assert torch.allclose(run("repeated_median", -updates, intercept=intercept).update, -base)
    assert torch.allclose(run("repeated_median", 3.0 * updates + 2.0, intercept=intercept).update, 3.0 * base + 2.0)


def test_multi_krum_lasa_code_selects_one_at_a_time_until_2f_plus_2_remain():
    """The LASA authors' multi_krum on nine 1-D updates with f = 2. Step 1 (r = 9) scores each by its 9 - 2 - 2
    = 5 smallest squared distances, its own 0 among them: 2.5 gets 0 + .49 + 2.25 + 2.56 + 6.25 = 11.55, the
    lowest. Step 2 (r = 8, 4 of them): 1 gets 0 + 1 + 4.84 + 9.61 = 15.45 against 3.2's 15.89. Step 3 (r = 7, 3):
    3.2 gets 0 + .81 + 10.24 = 11.05. Then 6 = 2f + 2 remain: the mean of 2.5, 1 and 3.2. Blanchard et al.'s
    Multi-Krum averages n - f = 7 updates."""
    values = [0.0, 1.0, 2.5, 3.2, 4.1, 10.0, 11.5, 30.0, -7.0]
    updates = torch.tensor(values, dtype=torch.float64)[:, None]
    result = build("multi_krum", variant="lasa_code")(updates, RoundContext(num_byzantine=2))
    assert result.accepted.nonzero().flatten().tolist() == [1, 2, 3]
    assert result.update.item() == pytest.approx((2.5 + 1.0 + 3.2) / 3, abs=1e-15)
    assert result.info["selected"] == 3
    assert build("multi_krum")(updates, RoundContext(num_byzantine=2)).info["selected"] == 7
    # the count as the rule's own parameter (the authors' engine: 10 whatever the round holds)
    own = build("multi_krum", variant="lasa_code", f=2)(updates, RoundContext(num_byzantine=0))
    assert torch.equal(own.update, result.update) and torch.equal(own.accepted, result.accepted)
    assert build("multi_krum", f=2)(updates, RoundContext(num_byzantine=0)).info["selected"] == 7
    with pytest.raises(ValueError, match="leave m unset"):
        build("multi_krum", variant="lasa_code", m=3)
