"""PAwBRoFL (aggregators/pawbrofl.py): the performance-aware step (eqs. 8-9), the Filtering (Alg. 2) and
No-Regret (Alg. 1) estimators, blocks of coordinates, and the rule's invariants."""

import math

import numpy as np
import pytest
import torch

from byzlab.aggregators.base import RoundContext
from byzlab.aggregators.pawbrofl import (
    XI_DEFAULT,
    Pawbrofl,
    PawbroflParams,
    kl_project_capped_simplex,
    performance_aware,
    robust_weights,
)
from byzlab.aggregators.registry import build
from byzlab.orchestrator.core.layout import Layer


def _rule(**params):
    return Pawbrofl(PawbroflParams(**params))


# ------------------------------------------------------------------------------------- PA step (eqs. 8-9)

# Three updates g1 = (2, 0), g2 = (0, 4), g3 = (0, -4), robust weights q = (1/2, 1/4, 1/4), μ = 0.5,
# gaps = (0, 2 ln 3, 0):
#   z = q * gap / μ = (0, (1/4)(2 ln 3)/0.5, 0) = (0, ln 3, 0)
#   p = softmax(z) = (1, 3, 1) / 5 = (0.2, 0.6, 0.2)
#   q p = (0.1, 0.15, 0.05)
#   g_PABR = 0.1 (2, 0) + 0.15 (0, 4) + 0.05 (0, -4) = (0.2, 0.6 - 0.2) = (0.2, 0.4)        (eq. 8)
#   g_BR = 0.5 (2, 0) + 0.25 (0, 4) + 0.25 (0, -4) = (1, 0), ||g_BR|| = 1                     (eq. 7)
#   ĝ = 1 * (0.2, 0.4) / sqrt(0.04 + 0.16) = (0.2, 0.4) / sqrt(0.2) = (1/sqrt 5, 2/sqrt 5)      (eq. 9)
#   weights = q p / Σ q p = (0.1, 0.15, 0.05) / 0.3 = (1/3, 1/2, 1/6)
X3 = torch.tensor([[2.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
Q3 = torch.tensor([0.5, 0.25, 0.25])
GAPS3 = torch.tensor([0.0, 2 * math.log(3), 0.0])


def test_pa_step_by_hand():
    r = performance_aware(X3, Q3, GAPS3, mu=0.5)
    assert torch.allclose(r.p, torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r.g_pabr, torch.tensor([0.2, 0.4]), atol=1e-6)
    assert torch.allclose(r.g_br, torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(r.update, torch.tensor([1 / math.sqrt(5), 2 / math.sqrt(5)]), atol=1e-6)
    assert torch.allclose(r.weights, torch.tensor([1 / 3, 1 / 2, 1 / 6]), atol=1e-6)
    assert not r.fallback


def test_mu_none_gives_the_robust_estimate_and_no_gaps_leave_it_unchanged():
    # mu = None: plain g_BR = (1, 0), weights = q.
    r = performance_aware(X3, Q3, GAPS3, mu=None)
    assert torch.allclose(r.update, torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(r.weights, Q3)
    # gaps None = zeros: z = 0, p = (1/3, 1/3, 1/3), g_PABR = g_BR / 3, so ĝ = ||g_BR|| g_BR / ||g_BR|| = g_BR.
    r = performance_aware(X3, Q3, None, mu=0.01)
    assert torch.allclose(r.update, torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(r.g_pabr, torch.tensor([1 / 3, 0.0]), atol=1e-6)


def test_pa_is_overflow_safe_with_huge_gaps():
    # z_1 = 0.5 * 1e308 / 1e-3 = 5e310 overflows float64; clamped, p = (1, 0, 0): ĝ = ||g_BR|| g1/||g1|| = (1, 0).
    gaps = torch.tensor([1e308, 0.0, 0.0], dtype=torch.float64)
    r = performance_aware(X3, Q3, gaps, mu=1e-3)
    assert torch.isfinite(r.update).all()
    assert torch.allclose(r.p, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(r.update, torch.tensor([1.0, 0.0]), atol=1e-6)
    # g2 and g3 both with z = 0.25 * 3e38 / 1e-3 = 7.5e40 (float32 gaps): tie, p = (0, 1/2, 1/2);
    # g_PABR = 0.25 * 0.5 * ((0, 4) + (0, -4)) = 0: falls back to g_BR = (1, 0).
    gaps = torch.tensor([0.0, 3e38, 3e38])
    r = performance_aware(X3, Q3, gaps, mu=1e-3)
    assert torch.allclose(r.p, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    assert r.fallback and torch.allclose(r.update, torch.tensor([1.0, 0.0]))


def test_zero_pa_direction_returns_zero_not_nan():
    # q = (1/2, 1/2) on (1, 0) and (-1, 0), gaps 0: g_BR = g_PABR = 0 -> update 0 (no division by 0).
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    r = performance_aware(x, torch.tensor([0.5, 0.5]), torch.zeros(2), mu=0.01)
    assert r.fallback and torch.equal(r.update, torch.zeros(2))


# --------------------------------------------------------------------------------------- Filtering (Alg. 2)

# Four points on the unit direction e = (0.6, 0.8): s = (-5, 5, 0, 30), x_i = s_i e.
# q = 1/4: μ_q = (30/4) e = 7.5 e = (4.5, 6). Deviations along e: s - 7.5 = (-12.5, -2.5, -7.5, 22.5).
#   Cov_q = e e^T * mean(dev^2) = e e^T * (156.25 + 6.25 + 56.25 + 506.25) / 4 = 181.25 e e^T
#   -> top eigenvalue 181.25, v = ±e, τ = dev^2 = (156.25, 6.25, 56.25, 506.25), τ_max = 506.25.
#   q̃ = q (1 - τ/τ_max) = (1/4)(350, 500, 450, 0)/506.25 -> renormalised (350, 500, 450, 0)/1300
#     = (7/26, 10/26, 9/26, 0): the outlier is removed.
# New μ_q = 5 e (-7 + 10 + 0)/26 = (15/26) e = (9/26, 12/26); its top eigenvalue
#   Σ q s^2 - (Σ q s)^2 = (7*25 + 10*25)/26 - (15/26)^2 = 425/26 - 225/676 = 10825/676 ≈ 16.0133.
E = torch.tensor([0.6, 0.8])
LINE = torch.tensor([-5.0, 5.0, 0.0, 30.0]).unsqueeze(1) * E


def test_filtering_one_iteration_by_hand():
    # ε = 0.2, m = 4: at most ⌊2 * 0.2 * 4⌋ = ⌊1.6⌋ = 1 weight update; ξ = 1 < 181.25 so it is done.
    est = robust_weights(LINE.unsqueeze(1), "filtering", epsilon=0.2, xi=1.0)
    assert torch.allclose(est.q[0], torch.tensor([7, 10, 9, 0], dtype=torch.float64) / 26, atol=1e-10)
    assert int(est.iterations[0]) == 1
    assert est.top_eigenvalue[0].item() == pytest.approx(10825 / 676, rel=1e-9)

    r = _rule(estimator="filtering", epsilon=0.2, xi=1.0, mu=None)(LINE, RoundContext())
    assert torch.allclose(r.update, torch.tensor([9 / 26, 12 / 26]), atol=1e-6)
    assert r.accepted.tolist() == [True, True, True, False]
    assert r.weights[3] == 0
    assert r.info["removed"] == 1 and r.info["iterations"] == 1


def test_filtering_stops_when_the_top_eigenvalue_is_below_xi():
    # ξ = 200 >= 181.25: no update, q = 1/4, output the mean (4.5, 6).
    r = _rule(epsilon=0.2, xi=200.0, mu=None)(LINE, RoundContext())
    assert torch.allclose(r.update, torch.tensor([4.5, 6.0]), atol=1e-5)
    assert r.info["iterations"] == 0 and r.info["removed"] == 0
    assert r.info["top_eigenvalue"] == pytest.approx(181.25, rel=1e-9)
    # ε = 0.45 allows ⌊2 * 0.45 * 4⌋ = 3 updates, but with ξ = 17 it stops after the first (16.01 <= 17).
    r = _rule(epsilon=0.45, xi=17.0, mu=None)(LINE, RoundContext())
    assert r.info["iterations"] == 1
    assert torch.allclose(r.update, torch.tensor([9 / 26, 12 / 26]), atol=1e-6)


def _ref_filtering(x, eps, xi):
    """Dense Alg. 2 in numpy: d x d covariance, eigh."""
    m = len(x)
    q = np.full(m, 1 / m)
    max_iter = math.floor(2 * eps * m + 1e-9)
    for k in range(max_iter + 1):
        mu = q @ x
        cov = (x - mu).T @ ((x - mu) * q[:, None])
        w, v = np.linalg.eigh(cov)
        if w[-1] <= xi or k == max_iter:
            return q, k
        tau = ((x - mu) @ v[:, -1]) ** 2 * (q > 0)
        q = q * (1 - tau / tau.max())
        q = q / q.sum()


def _ref_capped(qt, cap):
    q = qt / qt.sum()
    capped = np.zeros(len(q), bool)
    while (q > cap + 1e-15).any():
        capped |= q > cap
        free = np.where(capped, 0, qt)
        q = np.where(capped, cap, free * (1 - cap * capped.sum()) / free.sum())
    return q


def _ref_no_regret(x, eps, xi):
    """Dense Alg. 1 in numpy with the authors' Krum pre-filter (sum of Euclidean distances to m - f - 2)."""
    m = len(x)
    f = math.ceil(eps * m - 1e-9)
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    score = np.sort(dist + np.diag(np.full(m, np.inf)), axis=1)[:, : m - f - 2].sum(1)
    keep = np.sort(np.argsort(score)[: m - f])
    y = x[keep]
    mp = len(y)
    eta = 0.5 / (np.linalg.norm(y[:, None] - y[None], axis=-1) ** 2).max()
    q = np.full(mp, 1 / mp)
    max_iter = math.floor(2 * eps * mp + 1e-9)
    for k in range(max_iter + 1):
        mu = q @ y
        cov = (y - mu).T @ ((y - mu) * q[:, None])
        w, v = np.linalg.eigh(cov)
        if w[-1] <= xi or k == max_iter:
            break
        tau = ((y - mu) @ v[:, -1]) ** 2
        q = _ref_capped(q * (1 - eta * tau), 1 / ((1 - eps) * mp))
    out = np.zeros(m)
    out[keep] = q
    return out, k


@pytest.mark.parametrize("estimator", ["filtering", "no_regret"])
def test_estimators_match_a_dense_covariance_reference(estimator):
    g = np.random.default_rng(3)
    x = g.normal(size=(12, 5))
    x[:3] += np.array([3.0, -2.0, 0.0, 1.0, 0.0])  # three shifted points
    ref = _ref_filtering if estimator == "filtering" else _ref_no_regret
    q_ref, k_ref = ref(x, 0.25, 0.0)
    est = robust_weights(torch.tensor(x).unsqueeze(1), estimator, epsilon=0.25, xi=0.0)
    assert int(est.iterations[0]) == k_ref > 0
    assert np.allclose(est.q[0].numpy(), q_ref, atol=1e-10)


def test_filtering_removes_a_far_outlier(clustered_updates):
    updates, centre = clustered_updates(12)
    updates[6] = 50 * centre.abs() + 1.0
    r = _rule(estimator="filtering")(updates, RoundContext())
    assert not r.accepted[6] and r.weights[6] == 0
    honest = torch.cat([updates[:6], updates[7:]])
    assert torch.linalg.vector_norm(r.update - honest.mean(0)) < 0.3 * torch.linalg.vector_norm(centre)


# -------------------------------------------------------------------------------------- No-regret (Alg. 1)


@pytest.mark.parametrize(("n", "eps", "removed"), [(10, 0.2, 2), (10, 0.25, 3), (25, 0.28, 7)])
def test_krum_prefilter_removes_ceil_eps_m(clustered_updates, n, eps, removed):
    # ⌈0.2 * 10⌉ = 2, ⌈0.25 * 10⌉ = ⌈2.5⌉ = 3, ⌈0.28 * 25⌉ = 7 (0.28 * 25 = 7.000000000000001 in floats).
    updates, centre = clustered_updates(12, n=n, seed=1)
    updates[:removed] += 5.0  # the far ones are the worst Krum scores
    # ξ huge: no reweighting, so q is uniform 1/m' on the Krum survivors.
    r = _rule(estimator="no_regret", epsilon=eps, xi=1e9, mu=None)(updates, RoundContext())
    assert r.info["krum_removed"] == removed and r.info["iterations"] == 0
    assert r.accepted.tolist() == [False] * removed + [True] * (n - removed)
    assert torch.allclose(r.weights[removed:], torch.full((n - removed,), 1 / (n - removed)))
    assert torch.allclose(r.update, updates[removed:].mean(0), atol=1e-6)


def test_capped_simplex_kl_projection_by_hand():
    # cap = 1/((1 - ε) m') with ε = 3/8, m' = 4: 1/(5/8 * 4) = 0.4.
    cap = 1 / ((1 - 3 / 8) * 4)
    # (0.5, 0.2, 0.2, 0.1): 0.5 > 0.4 is capped; the others share 1 - 0.4 = 0.6 in proportion:
    # scale 0.6 / 0.5 = 1.2 -> (0.24, 0.24, 0.12), all <= 0.4.
    q = kl_project_capped_simplex(torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64), cap)
    assert torch.allclose(q, torch.tensor([0.4, 0.24, 0.24, 0.12], dtype=torch.float64))
    # (0.6, 0.3, 0.05, 0.05) given unnormalised (x 3): cap 0.6 -> rest 0.6 over 0.4, scale 1.5 ->
    # (0.45, 0.075, 0.075); 0.45 > 0.4 is capped too -> rest 0.2 over 0.1, scale 2 -> (0.4, 0.4, 0.1, 0.1).
    q = kl_project_capped_simplex(3 * torch.tensor([0.6, 0.3, 0.05, 0.05], dtype=torch.float64), cap)
    assert torch.allclose(q, torch.tensor([0.4, 0.4, 0.1, 0.1], dtype=torch.float64))
    # Constraints and the KKT form q_i = min(cap, s q̃_i) on a random batch with a support mask.
    g = torch.Generator().manual_seed(0)
    qt = torch.rand(5, 8, generator=g, dtype=torch.float64) ** 4
    support = torch.ones(5, 8, dtype=torch.bool)
    support[:, :2] = False
    q = kl_project_capped_simplex(qt, 1 / (0.8 * 6), support)
    assert torch.allclose(q.sum(-1), torch.ones(5, dtype=torch.float64))
    assert (q <= 1 / (0.8 * 6) + 1e-12).all() and (q[:, :2] == 0).all()
    free = (q < 1 / (0.8 * 6) - 1e-12) & support
    ratio = torch.where(free, q / qt, torch.nan)
    for row in range(5):
        r = ratio[row][free[row]]
        assert torch.allclose(r, r[0].expand_as(r))


def test_no_regret_downweights_but_never_zeroes_the_kept(clustered_updates):
    updates, centre = clustered_updates(12, n=10, seed=2)
    updates[0] += 1.0  # removed by Krum (⌈0.2 * 10⌉ = 2 with the next worst)
    updates[1] += 0.05 * torch.ones_like(centre)
    r = _rule(estimator="no_regret", xi=0.0, mu=None)(updates, RoundContext())
    assert not r.accepted[0] and r.info["krum_removed"] == 2
    kept = r.weights[r.accepted]
    assert (kept > 0).all() and kept.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (kept <= 1 / (0.8 * 8) + 1e-6).all()  # cap 1/((1 - ε) m') = 1/(0.8 * 8)
    # ⌊2 * 0.2 * 8⌋ = 3 weight updates (ξ = 0 never stops early)
    assert r.info["iterations"] == 3


# ------------------------------------------------------------------------------------------------ blocks


def test_blocks_run_independently_and_catch_an_outlier_in_the_second_block(clustered_updates):
    updates, _ = clustered_updates(5, n=10, seed=4)
    updates[3, 2:4] = 40.0  # honest in block 0 (coords 0-1), far off in block 1 (coords 2-3)
    rule = _rule(chunk_size=2, mu=None)
    r = rule(updates, RoundContext())
    assert r.info["blocks"] == 3  # 5 coordinates in blocks of 2, 2, 1
    for cols in (slice(0, 2), slice(2, 4), slice(4, 5)):
        alone = _rule(mu=None)(updates[:, cols].contiguous(), RoundContext())
        assert torch.allclose(r.update[cols], alone.update, atol=1e-6)
    # block 1: client 3 removed; the result is close to the honest mean there.
    honest = torch.cat([updates[:3], updates[4:]])
    assert (r.update[2:4] - honest[:, 2:4].mean(0)).abs().max() < 0.05
    # client 3 still contributes to block 0, so it is accepted (accepted = kept in at least one block); on the
    # whole vector it is removed.
    assert r.accepted[3]
    whole = _rule(mu=None)(updates, RoundContext())
    assert not whole.accepted[3]
    # per-client weights: block-length-weighted mean of the blocks' weights, sums to 1
    assert r.weights.sum().item() == pytest.approx(1.0, abs=1e-6)


# -------------------------------------------------------------------------------------------- invariants


def _gaps(n, seed=5):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("estimator", ["filtering", "no_regret"])
def test_permutation_permutes_weights_and_keeps_the_update(clustered_updates, estimator):
    updates, centre = clustered_updates(12, n=10, seed=6)
    updates[2] = -20 * centre
    gaps = _gaps(10)
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    rule = _rule(estimator=estimator, mu=0.1)
    base = rule(updates, RoundContext(loss_gaps=gaps))
    permuted = rule(updates[perm], RoundContext(loss_gaps=gaps[perm]))
    assert torch.allclose(permuted.update, base.update, atol=1e-6)
    assert torch.allclose(permuted.weights, base.weights[perm], atol=1e-6)
    assert torch.equal(permuted.accepted, base.accepted[perm])


@pytest.mark.parametrize("estimator", ["filtering", "no_regret"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_identical_inputs_return_that_input(clustered_updates, estimator, chunk_size):
    u = clustered_updates(12)[1]
    r = _rule(estimator=estimator, chunk_size=chunk_size)(u.repeat(7, 1), RoundContext(loss_gaps=_gaps(7)))
    assert torch.allclose(r.update, u, atol=1e-6)
    assert r.info["iterations"] == 0


@pytest.mark.parametrize("estimator", ["filtering", "no_regret"])
def test_a_far_outlier_gets_no_weight_even_with_a_huge_reported_gap(clustered_updates, estimator):
    updates, centre = clustered_updates(12, n=10, seed=7)
    updates[4] = -100 * centre
    gaps = _gaps(10)
    gaps[4] = 1e6  # the attacker misreports its loss gap to attract softmax weight
    r = _rule(estimator=estimator)(updates, RoundContext(loss_gaps=gaps))
    assert not r.accepted[4] and r.weights[4] == 0
    honest = torch.cat([updates[:4], updates[5:]])
    assert torch.linalg.vector_norm(r.update - honest.mean(0)) < 0.5 * torch.linalg.vector_norm(centre)


def test_gaps_steer_the_direction_but_keep_the_robust_norm(clustered_updates):
    updates, _ = clustered_updates(12, n=10, seed=8)
    gaps = torch.zeros(10)
    gaps[5] = 1.0
    # ξ huge: q = 1/10 for all, z_5 = 0.1 * 1 / 0.01 = 10, p_5 = e^10 / (e^10 + 9) ≈ 0.9996
    plain = _rule(mu=None, xi=1e9)(updates, RoundContext(loss_gaps=gaps))
    pa = _rule(mu=0.01, xi=1e9)(updates, RoundContext(loss_gaps=gaps))
    none = _rule(mu=0.01, xi=1e9)(updates, RoundContext())  # gaps not reported = zeros: ĝ = g_BR
    assert torch.allclose(none.update, plain.update, atol=1e-6)
    # eq. 9: same norm as g_BR, direction pulled towards client 5 (the largest gap)
    norm = torch.linalg.vector_norm
    assert norm(pa.update).item() == pytest.approx(norm(plain.update).item(), rel=1e-5)
    assert pa.weights[5].item() == pytest.approx(math.exp(10) / (math.exp(10) + 9), rel=1e-5)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pa.update, updates[5], dim=0) > cos(plain.update, updates[5], dim=0)


def test_params_defaults_and_validation():
    p = PawbroflParams()
    assert (p.estimator, p.epsilon, p.mu, p.chunk_size) == ("filtering", 0.2, 0.01, None)
    assert p.xi == pytest.approx(math.sqrt(20) * 1e-5) == XI_DEFAULT
    assert isinstance(build("pawbrofl", estimator="no_regret"), Pawbrofl)
    for bad in ({"epsilon": 0.5}, {"mu": 0.0}, {"chunk_size": 0}, {"estimator": "krum"}, {"nope": 1}):
        with pytest.raises(ValueError):
            build("pawbrofl", **bad)


def test_epsilon_none_uses_the_declared_byzantine_fraction(clustered_updates):
    updates, _ = clustered_updates(12, n=10, seed=9)
    r = _rule(estimator="no_regret", epsilon=None, xi=1e9)(updates, RoundContext(num_byzantine=3))
    # ε = 3/10: ⌈0.3 * 10⌉ = 3 removed by Krum
    assert r.info["epsilon"] == pytest.approx(0.3) and r.info["krum_removed"] == 3


def test_nonfinite_reported_gaps_count_as_zero(clustered_updates):
    updates, _ = clustered_updates(12, n=6, seed=10)
    gaps = torch.tensor([float("nan"), float("inf"), 0.0, 0.0, 0.0, 0.0])
    r = _rule(xi=1e9)(updates, RoundContext(loss_gaps=gaps))
    # all gaps 0 after the replacement: ĝ = g_BR = the mean (ξ huge: q = 1/6)
    assert r.info["nonfinite_gaps"] == 2
    assert torch.allclose(r.update, updates.mean(0), atol=1e-6)


@pytest.mark.parametrize("estimator", ["filtering", "no_regret"])
def test_a_huge_outlier_does_not_disturb_the_honest_weights(estimator):
    # The Gram matrix is built on median-shifted rows: the honest rows' weights after the outlier is gone do
    # not depend on how far it was (a mean shift would cancel their 0.1-scale differences against 1e30/11).
    base = 1 + 0.1 * torch.randn(11, 6, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    qs = []
    for far in (1e6, 1e30):
        x = base.clone()
        x[7] = far
        qs.append(robust_weights(x.unsqueeze(1), estimator, epsilon=0.2, xi=0.0).q[0])
    assert qs[0][7] == 0 and torch.allclose(qs[0], qs[1], atol=1e-9)
    r = _rule(estimator=estimator)(x.float(), RoundContext(loss_gaps=_gaps(11)))
    assert torch.isfinite(r.update).all() and not r.accepted[7]


# ------------------------------------------------------------------------------ the authors' code (variant)
# Expected values worked through the authors' src/robust_estimator.py (ex_noregret_, filterL2_) line by line
# in numpy; the loss gaps are those of the client the code pairs each update with: a permutation drawn with
# the round's generator (seed 7: [0, 1, 3, 2, 4] for five clients, [3, 2, 0, 1] for four).

CODE_P = torch.tensor([[2.0, -2.6, 0.4], [-0.6, -0.5, -0.2], [-2.0, -0.2, -0.9], [3.3, 0.2, -0.4], [3.0, -2.0, 2.5]],
                      dtype=torch.float64)
CODE_GAPS = torch.tensor([0.2, 0.5, 1.0, 0.1, 3.0], dtype=torch.float64)
CODE_X4 = 1e-3 * torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float64)
CODE_GAPS4 = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)


def _code(updates, gaps=None, layers=(), **params):
    rule = Pawbrofl(PawbroflParams(variant="pawbrofl_code", **params))
    ctx = RoundContext(loss_gaps=gaps, layers=layers, generator=torch.Generator().manual_seed(7))
    return rule.aggregate(updates, ctx)


def test_the_permutations_the_expected_values_assume():
    assert torch.randperm(5, generator=torch.Generator().manual_seed(7)).tolist() == [0, 1, 3, 2, 4]
    assert torch.randperm(4, generator=torch.Generator().manual_seed(7)).tolist() == [3, 2, 0, 1]


def test_pawbrofl_code_pairs_each_update_with_a_permuted_clients_gap():
    """Filtering on CODE_P runs past its first check, where the code's PA step is the paper's but for eq. 9's
    + 1e-8 (a relative 1e-8 here): the variant is the paper's rule fed the gaps in the drawn order."""
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    code = _code(CODE_P, CODE_GAPS, estimator="filtering", mu=1.0)
    paper = Pawbrofl(PawbroflParams(estimator="filtering", mu=1.0)).aggregate(
        CODE_P, RoundContext(loss_gaps=CODE_GAPS[perm]))
    assert torch.allclose(code.update, paper.update, rtol=1e-7, atol=0)
    assert code.update.tolist() == pytest.approx([2.737822590211, -1.182586245616, 0.235112719666], abs=1e-11)


@pytest.mark.parametrize(("mu", "gaps", "expected"), [
    (None, None, [0.699182822294622, -1.421771615643136, 0.430010895157903]),
    (1.0, CODE_GAPS, [0.872087973606086, -1.245510804063225, 0.619165413014852]),
])
def test_pawbrofl_code_no_regret_projects_as_the_authors(mu, gaps, expected):
    """Krum drops client 3; one weight update from c = 1 on the other four, then the code's projection caps
    the largest weight (client 0) at 1/(0.8 * 4) = 0.3125 where the exact KL projection caps nothing."""
    result = _code(CODE_P, gaps, estimator="no_regret", epsilon=0.2, mu=mu)
    assert result.update.tolist() == pytest.approx(expected, abs=1e-12)
    if mu is None:
        assert result.weights[0].item() == pytest.approx(0.3125, abs=1e-12)
        paper = Pawbrofl(PawbroflParams(estimator="no_regret", epsilon=0.2, mu=None)).aggregate(CODE_P, RoundContext())
        assert paper.weights[0].item() < 0.3125 - 1e-3


@pytest.mark.parametrize(("scale", "gap_scale", "mu", "expected"), [
    # a stop at the first check: the PA step weighs with c = 1, z = gap / μ (the paper's q gives gap / (4 μ))
    (1.0, 1.0, 1.0, [0.000665354266309, 0.000473965686042, 0.000287474720236]),
    # the same on a tiny block, where eq. 9's + 1e-8 shortens the vector
    (1e-4, 1.0, 0.01, [7.872958216222171e-08, 1.518496696256479e-29, 2.928800272038395e-51]),
    # gaps of 500-2000 at μ = 0.01 overflow exp: the code doubles μ until they do not
    (1.0, 1000.0, 0.01, [8.660167436170026e-04, 3.357034391198242e-46, 1.301323558320459e-88]),
])
def test_pawbrofl_code_pa_step_after_a_first_check_stop(scale, gap_scale, mu, expected):
    result = _code(scale * CODE_X4, gap_scale * CODE_GAPS4, estimator="filtering", epsilon=0.25, mu=mu)
    assert result.info["iterations"] == 0
    assert result.update.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("estimator", "expected"), [
    ("filtering", [0.058949132206, 0.146239858581, -0.253687971197, -0.578058795307, -0.865042429027, 0.06449177938]),
    ("no_regret", [-0.352036896805, -0.190399476867, -0.083414981037, -0.306244965327, -0.654339033247,
                   -0.205637488107]),
])
def test_pawbrofl_code_blocks_follow_the_layers(estimator, expected):
    """Two layers of 3 coordinates, chunk_size 2: the code's blocks are [0:2], [2:3], [3:5], [5:6] (the paper
    variant's flat cut gives [0:2], [2:4], [4:6])."""
    x = torch.tensor([[0.0, 0.3, -0.3, -0.9, -0.5, -1.0], [0.1, 1.3, -0.5, -0.6, 0.5, 0.4],
                      [0.1, -0.9, -0.0, 0.7, -1.3, -0.5], [-1.9, -1.3, -1.8, -0.2, -1.3, 0.3],
                      [3.2, 2.8, 0.5, 2.5, 3.0, 3.1]], dtype=torch.float64)
    layers = (Layer("a", (3,), 0), Layer("b", (3,), 3))
    result = _code(x, layers=layers, estimator=estimator, epsilon=0.2, mu=None, chunk_size=2)
    assert result.update.tolist() == pytest.approx(expected, abs=1e-11)
    assert result.info["blocks"] == 4
