"""FedRA (Yi et al., robust quantity-aware aggregation): scores, selection, estimator, quantity attacks."""

import math

import pytest
import torch

from byzlab.aggregators import fedra as fedra
from byzlab.aggregators import numerics
from byzlab.aggregators.base import RoundContext
from byzlab.aggregators.krum import MultiKrum, MultiKrumParams

LN_2PI_HALF = 0.5 * math.log(2 * math.pi)


def build(**params):
    return fedra.FedRA(fedra.FedRAParams(**params))


# ----------------------------------------------------------------------------- hand-worked 1-D example

# Six clients, one coordinate. 0-2 hold few samples (q = 2, noisy updates), 3-4 many (q = 18, precise),
# 5 is far away. N = 12, M = 2: m = ceil(6 * 2 / 12) = 1, so each score sums n - m - 2 = 3 neighbours and
# the fixed-ratio rule keeps c = n - m - 1 = 4.
VALUES = torch.tensor([[0.0], [2.0], [5.0], [1.0], [3.0], [9.5]], dtype=torch.float64)
COUNTS = torch.tensor([2.0, 2.0, 2.0, 18.0, 18.0, 2.0], dtype=torch.float64)
POP = dict(num_clients_total=12, num_byzantine_total=2)
# eq. 6 factor sqrt(q_i q_j / (q_i + q_j)): q 2 & 2 -> sqrt(4/4) = 1; 2 & 18 -> sqrt(36/20) = sqrt(1.8) = R;
# 18 & 18 -> sqrt(324/36) = 3
R = math.sqrt(1.8)  # 1.3416


def test_quantity_distance_eq6_by_hand():
    Q = fedra.quantity_distances(numerics.pairwise_distances(VALUES, 1), COUNTS)
    assert Q[0, 1] == pytest.approx(2.0)  # 1 * |0 - 2|
    assert Q[0, 3] == pytest.approx(R * 1.0)  # sqrt(1.8) * |0 - 1|
    assert Q[3, 4] == pytest.approx(3.0 * 2.0)  # 3 * |1 - 3|
    assert Q[2, 4] == pytest.approx(R * 2.0)  # sqrt(1.8) * |5 - 3|
    assert torch.equal(Q, Q.T) and torch.all(Q.diagonal() == 0)
    # a zero claim: factor 1 / (1/0 + 1/q) = 0, so Q = 0, even against an infinite distance
    dist = torch.tensor([[0.0, math.inf], [math.inf, 0.0]], dtype=torch.float64)
    zero_claim = fedra.quantity_distances(dist, torch.tensor([0.0, 5.0], dtype=torch.float64))
    assert torch.equal(zero_claim, torch.zeros(2, 2, dtype=torch.float64))


def test_scores_neighbours_selection_and_aggregate_by_hand():
    scored = fedra.fedra_scores(VALUES, COUNTS, m=1, gamma=0.1)
    # L1 distances from each client, its 3 nearest (i -> j) and their Q terms:
    #   0 (g=0):   to 3:1, 1:2, 4:3 | 2:5, 5:9.5      -> R*1 + 1*2 + R*3        = 2 + 4R
    #   1 (g=2):   to 3:1, 4:1, 0:2 | 2:3, 5:7.5      -> R + R + 2              = 2 + 2R
    #   2 (g=5):   to 4:2, 1:3, 3:4 | 5:4.5, 0:5      -> R*2 + 1*3 + R*4        = 3 + 6R
    #   3 (g=1):   to 0:1, 1:1, 4:2 | 2:4, 5:8.5      -> R + R + 3*2            = 6 + 2R
    #   4 (g=3):   to 1:1, 2:2, 3:2 | 0:3, 5:6.5      -> R*1 + R*2 + 3*2        = 6 + 3R
    #   5 (g=9.5): to 2:4.5, 4:6.5, 1:7.5 | 3:8.5, 0:9.5 -> 4.5 + R*6.5 + 7.5      = 12 + 6.5R
    assert [sorted(row) for row in scored.neighbours.tolist()] == [
        [1, 3, 4], [0, 3, 4], [1, 3, 4], [0, 1, 4], [1, 2, 3], [1, 2, 4]
    ]
    # times q^0.1: 2^0.1 = 1.07177, 18^0.1 = 1.33484
    expected = torch.tensor(
        [
            (2 + 4 * R) * 2**0.1,  # 7.8953
            (2 + 2 * R) * 2**0.1,  # 5.0194
            (3 + 6 * R) * 2**0.1,  # 11.8429
            (6 + 2 * R) * 18**0.1,  # 11.5934
            (6 + 3 * R) * 18**0.1,  # 13.3847
            (12 + 6.5 * R) * 2**0.1,  # 22.2079
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(scored.scores, expected, rtol=1e-12)

    # fixed ratio: the 4 lowest scores are clients 1 (5.02), 0 (7.90), 3 (11.59), 2 (11.84); 4 (13.38) and
    # 5 (22.2) are left out. Aggregate (Alg. 1 line 7): (2*0 + 2*2 + 2*5 + 18*1) / (2+2+2+18) = 32/24 = 4/3.
    result = build(mode="fixed")(VALUES, RoundContext(num_samples=COUNTS, num_byzantine=1, **POP))
    assert result.accepted.tolist() == [True, True, True, True, False, False]
    assert torch.allclose(result.weights, torch.tensor([1, 1, 1, 9, 0, 0], dtype=torch.float64) / 12)  # q / 24
    assert result.update.item() == pytest.approx(4.0 / 3.0)
    assert result.info["m"] == 1 and result.info["m_hat"] == 1 and result.info["selected"] == 4

    # quantity-ignorant L1 sums over the same neighbour count rank it differently: 1: 1+1+2 = 4,
    # 3: 1+1+2 = 4, 4: 1+2+2 = 5, 0: 1+2+3 = 6, 2: 2+3+4 = 9 -> the 4 best are {1, 3, 4, 0}. FedRA keeps the
    # noisy low-count client 2 instead of client 4, whose 18 samples make its offset of 2 from client 3
    # unlikely for a benign update (Q = 3 * 2 = 6).
    # (equal claims of 2 make every eq. 6 factor 1, and gamma = 0 drops the penalty: plain L1 sums)
    l1_only = fedra.fedra_scores(VALUES, torch.full((6,), 2.0, dtype=torch.float64), m=1, gamma=0.0).scores
    assert l1_only.tolist() == [6.0, 4.0, 9.0, 4.0, 5.0, 18.5]


def test_dynamic_ratio_on_the_hand_example():
    # H(m~; N=12, M=2, n=6): P(0) = C(10,6)/C(12,6) = 210/924, P(1) = 2*C(10,5)/924 = 504/924,
    # P(2) = C(10,4)/924 = 210/924; m~ > 2 impossible. The top score 22.2 stands apart, m_hat = 1, c = 5.
    table = fedra.estimate_malicious_count(fedra.fedra_scores(VALUES, COUNTS, 1, 0.1).scores, 2, 12, 0.01)
    expected_prior = [math.log(210 / 924), math.log(504 / 924), math.log(210 / 924)]
    assert table.log_prior[:3].tolist() == pytest.approx(expected_prior)
    assert table.allowed.tolist() == [True, True, True, False, False, False]
    assert table.m_hat == 1
    result = build()(VALUES, RoundContext(num_samples=COUNTS, num_byzantine=1, **POP))
    # clients 0-4: (0*2 + 2*2 + 5*2 + 1*18 + 3*18) / (2+2+2+18+18) = 86/42
    assert result.accepted.tolist() == [True, True, True, True, True, False]
    assert result.update.item() == pytest.approx(86.0 / 42.0)
    assert result.info["m_hat"] == 1 and result.info["selected"] == 5


# --------------------------------------------------------------------------------------------- estimator

# 7 small scores and 3 large ones, shuffled: small {1,1,2,2,2,3,3}, large {8,10,12}.
SCORES = torch.tensor([2.0, 12.0, 1.0, 3.0, 8.0, 2.0, 1.0, 10.0, 3.0, 2.0])


def test_estimator_finds_the_gap_and_its_terms_by_hand():
    # N = 100, M = 10: the prior's mode is 1 (floor(11 * 11 / 102)), the likelihood moves it to 3
    table = fedra.estimate_malicious_count(SCORES, 10, 100, 0.01)
    assert table.m_hat == 3
    assert table.candidates.tolist() == list(range(10))
    # eq. 10 at m~ = 3. Prior: ln[C(10,3) C(90,7) / C(100,10)]
    prior = math.log(math.comb(10, 3) * math.comb(90, 7) / math.comb(100, 10))
    assert table.log_prior[3] == pytest.approx(prior, rel=1e-10)
    # benign {1,1,2,2,2,3,3}: mu = 14/7 = 2, squares 1+1+0+0+0+1+1 = 4, sigma^2 = 4/6 = 2/3
    # (floor 0.01 * 2^2 = 0.04 does not bind): -7 (ln sqrt(2/3) + ln sqrt(2 pi)) - 4 / (2 * 2/3)
    benign = -7 * (0.5 * math.log(2 / 3) + LN_2PI_HALF) - 3.0
    assert table.log_lik_benign[3] == pytest.approx(benign, rel=1e-12)
    # malicious {8,10,12}: mu = 10, squares 4+0+4 = 8, sigma^2 = 8/2 = 4 (floor 0.01 * 100 = 1):
    # -3 (ln 2 + ln sqrt(2 pi)) - 8 / (2 * 4)
    malicious = -3 * (math.log(2.0) + LN_2PI_HALF) - 1.0
    assert table.log_lik_malicious[3] == pytest.approx(malicious, rel=1e-12)
    assert table.total[3] == pytest.approx(prior + benign + malicious)  # -16.81
    assert table.total[3] == max(table.total)
    # m~ = 0: no malicious group (term 0)
    assert table.log_lik_malicious[0] == 0.0


def test_variance_floor_makes_one_element_groups_finite():
    table = fedra.estimate_malicious_count(SCORES, 10, 100, 0.01)
    # m~ = 1: the malicious group is {12}; eq. 12's 1/(m~ - 1) is undefined, the floor gives
    # sigma^2 = 0.01 * 12^2 = 1.44, so the term is -(ln 1.2 + ln sqrt(2 pi)) (its residual is 0)
    assert table.log_lik_malicious[1] == pytest.approx(-(math.log(1.2) + LN_2PI_HALF), rel=1e-12)
    assert all(math.isfinite(v) for v in table.total)
    # a constant group (colluders sending one vector) and an all-zero one stay finite too
    ll, mu, var = fedra.gaussian_log_likelihood(torch.tensor([5.0, 5.0, 5.0]).numpy(), 0.01)
    assert (mu, var) == (5.0, 0.25) and ll == pytest.approx(-3 * (math.log(0.5) + LN_2PI_HALF))
    assert math.isfinite(fedra.gaussian_log_likelihood(torch.zeros(4).numpy(), 0.01)[0])


def test_equal_scores_follow_the_prior_mode_and_unknown_population_is_a_point_mass():
    # every m~ has the same likelihood -> the hypergeometric mode: floor((10+1)(10+1)/(100+2)) = 1
    assert fedra.estimate_malicious_count(torch.full((10,), 3.0), 10, 100, 0.01).m_hat == 1
    assert fedra.estimate_malicious_count(torch.zeros(10), 10, 100, 0.01).m_hat == 1
    # M, N unknown: M = f = 2, N = n = 10 -> H(10, 2, 10) is a point mass at 2 whatever the scores
    updates = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    dyn = build()(updates, RoundContext(num_byzantine=2))
    fixed = build(mode="fixed")(updates, RoundContext(num_byzantine=2))
    assert dyn.info["m_hat"] == 2 and dyn.info["selected"] == 8  # n - f
    assert fixed.info["m"] == 2 and fixed.info["selected"] == 7  # n - f - 1
    assert dyn.info["population_known"] == 0


# ------------------------------------------------------------------------------------ quantity attack


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantity_enlarging_attackers_are_excluded(seed):
    # 8 benign clients: g_i = mu + noise / sqrt(q_i) (Lemma 1); 2 attackers send the same "a little is
    # enough"-style update (benign mean - 1 std per coordinate) and claim mu_q + 10 sigma_q = 277 samples
    # (alpha_q = 10, FedRA §5.1): sum of benign claims 260, mean 32.5, population std 24.45.
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([5.0, 10, 20, 40, 80, 15, 30, 60, 0, 0])
    updates = 0.5 + torch.randn(10, 20, generator=g) / counts.clamp(min=1).sqrt()[:, None]
    benign = updates[:8]
    counts[8:] = torch.round(counts[:8].mean() + 10 * counts[:8].std(correction=0))
    assert counts[8] == 277
    updates[8:] = benign.mean(dim=0) - benign.std(dim=0)
    ctx = RoundContext(num_samples=counts, num_byzantine=2, num_clients_total=100, num_byzantine_total=20)

    # the quantity-ignorant Multi-Krum keeps both colluders (they are at distance 0 from each other)
    assert MultiKrum(MultiKrumParams())(updates, ctx).accepted[8:].all()
    # FedRA scores them highest: Q measures their offset in units of each benign client's noise and
    # 277^0.1 = 1.75 multiplies their score
    scores = fedra.fedra_scores(updates, counts.double(), 2, 0.1).scores
    assert set(torch.argsort(scores)[-2:].tolist()) == {8, 9}
    honest = (counts[:8, None] * benign).sum(dim=0) / counts[:8].sum()
    fedavg = (counts[:, None] * updates).sum(dim=0) / counts.sum()
    for mode in ["fixed", "dynamic"]:
        result = build(mode=mode)(updates, ctx)
        assert not result.accepted[8:].any(), mode
        assert torch.all(result.weights[8:] == 0)
        assert torch.allclose(result.weights.sum(), torch.tensor(1.0))
        # the aggregate stays near the honest weighted mean; FedAvg is pulled away by the 554 claimed samples
        assert (result.update - honest).norm() < 0.5 * (fedavg - honest).norm(), mode


# ------------------------------------------------------------------------------------------- invariants


def _clustered(seed=0, n=10, d=8):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=g) * 0.05
    counts = torch.randint(5, 60, (n,), generator=g).float()
    return centre + 0.01 * torch.randn(n, d, generator=g), centre, counts


@pytest.mark.parametrize("mode", ["fixed", "dynamic"])
def test_permutation_permutes_decisions_and_keeps_the_update(mode):
    updates, _, counts = _clustered()
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    ctx = dict(num_byzantine=2, num_clients_total=50, num_byzantine_total=10)
    base = build(mode=mode)(updates, RoundContext(num_samples=counts, **ctx))
    permuted = build(mode=mode)(updates[perm], RoundContext(num_samples=counts[perm], **ctx))
    assert torch.allclose(permuted.update, base.update, atol=1e-6)
    assert torch.allclose(permuted.weights, base.weights[perm])
    assert torch.equal(permuted.accepted, base.accepted[perm])
    assert permuted.info == base.info


@pytest.mark.parametrize("mode", ["fixed", "dynamic"])
def test_identical_updates_return_that_update(mode):
    _, centre, counts = _clustered()
    result = build(mode=mode)(centre.repeat(10, 1), RoundContext(num_samples=counts, num_byzantine=2))
    assert torch.allclose(result.update, centre, atol=1e-7)


@pytest.mark.parametrize("mode", ["fixed", "dynamic"])
def test_far_outlier_is_excluded(mode):
    updates, centre, counts = _clustered()
    updates[4] = -100 * centre
    ctx = RoundContext(num_samples=counts, num_byzantine=1, num_clients_total=50, num_byzantine_total=5)
    result = build(mode=mode)(updates, ctx)
    assert not result.accepted[4] and result.weights[4] == 0
    keep = torch.arange(10) != 4
    honest = (counts[keep, None] * updates[keep]).sum(dim=0) / counts[keep].sum()
    assert (result.update - honest).norm() < 0.1 * centre.norm()


def test_overflowing_distance_and_small_rounds():
    # an update whose L1 distance to the others overflows float32 gets an infinite score: counted as
    # malicious by the estimator (m~ >= 1), never selected
    updates, _, counts = _clustered()
    updates[2] = 3e38
    for mode in ["fixed", "dynamic"]:
        result = build(mode=mode)(updates, RoundContext(num_samples=counts, num_byzantine=1))
        assert torch.isfinite(result.update).all() and not result.accepted[2]
    # one update: returned as is; m larger than the round allows: clamped to n - 3
    assert torch.equal(build()(updates[:1], RoundContext(num_byzantine=0)).update, updates[0])
    small = build(mode="fixed")(updates[:5], RoundContext(num_samples=counts[:5], num_byzantine=4))
    assert small.info["m"] == 2 and small.info["m_clamped"] == 1 and small.info["selected"] == 2


def test_no_counts_and_zero_claims():
    updates, _, _ = _clustered()
    # without counts: equal weights over the selected (an L1 Multi-Krum keeping c updates)
    result = build(mode="fixed")(updates, RoundContext(num_byzantine=2))
    assert torch.allclose(result.weights[result.accepted], torch.full((7,), 1 / 7))
    # every claim 0: every score 0, equal weights over the c selected
    result = build(mode="fixed")(updates, RoundContext(num_samples=torch.zeros(10), num_byzantine=2))
    assert torch.allclose(result.weights[result.accepted], torch.full((7,), 1 / 7))
    assert torch.isfinite(result.update).all()


def test_check_setting_and_params():
    fedra.FedRA.check_setting(fedra.FedRAParams(), 5, 2)  # n - f - 2 = 1 neighbour
    with pytest.raises(ValueError, match=r"fedra needs n - m - 2 >= 1 .*n=4, m=2"):
        fedra.FedRA.check_setting(fedra.FedRAParams(), 4, 2)
    params = fedra.FedRAParams()
    assert (params.mode, params.gamma, params.variance_floor) == ("dynamic", 0.1, 0.01)
    with pytest.raises(ValueError):
        fedra.FedRAParams(gamma=0.5)  # eq. 8 requires gamma < 0.5
    with pytest.raises(ValueError):
        fedra.FedRAParams(variance_floor=0.0)
    assert all(f.description for f in fedra.FedRAParams.model_fields.values())
    from byzlab.aggregators.registry import build as registry_build

    assert isinstance(registry_build("fedra", mode="fixed"), fedra.FedRA)
