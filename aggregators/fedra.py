"""FedRA: robust quantity-aware aggregation (Yi, Wu, Zhang, Zhu, Qi, Sun and Xie, "Robust Quantity-Aware
Aggregation for Federated Learning"; equations and algorithms numbered as in the paper, §4).

Every client i sends an update g_i and a claimed sample count ("quantity") q_i, which an attacker can inflate
(the quantity-enhanced attack of §5.1, ``attacks.quantity``). FedRA filters by jointly scoring updates and
quantities, then averages the survivors weighted by their quantities:

1. Quantity-corrected distance (eq. 6): ``Q(g_i, g_j, q_i, q_j) = sqrt(q_i q_j / (q_i + q_j)) ||g_i - g_j||_1``.
   For benign clients E[Q] is bounded independently of the quantities (Propositions 2-3), because a client
   with q samples has per-coordinate variance sigma^2 / q (Lemma 1).
2. Score (eq. 8, Alg. 1 line 3): ``s(i) = q_i^gamma * sum_{i -> j} Q(g_i, g_j, q_i, q_j)``, where i -> j ranges
   over the n - m - 2 updates nearest to g_i in L1 distance (§4.1, as in L1-Krum) and m = ceil(nM/N)
   (Alg. 1 line 1). The penalty q^gamma (gamma < 1/2, 0.1 in §5.1) counters a large claim: a selected
   client adds variance proportional to q_i to the aggregate (§4.2).
3. Number selected (Alg. 1 line 5): ``c = n - m - 1`` in the fixed-ratio setting, ``c = n - m_hat`` in the
   dynamic-ratio setting, m_hat from the malicious client number estimator (Alg. 2, eqs. 9-12).
4. The c lowest scores are selected and averaged with weights q_i / sum_{C} q (Alg. 1 lines 6-7).

Malicious client number estimator (§4.3): sort the scores ascending; for each candidate m~ the n - m~ lowest
are modelled as one Gaussian ("benign") and the m~ highest as another ("malicious"), with means and unbiased
variances estimated from the groups (eq. 12), and the log joint (eqs. 9-10)

    l(m~) = ln H(m~; N, M, n) + sum_{benign} ln N(s; mu_b, sigma_b^2) + sum_{malicious} ln N(s; mu_m, sigma_m^2)

is maximised (Alg. 2); H is the hypergeometric law of the number of malicious clients among n drawn from N
clients of which M are malicious (``scipy.stats.hypergeom``). The scores are computed once, with
m = ceil(nM/N): the paper's non-iterative variant ("the performance without iterative approximation is
already great enough", §4.3).

Choices where the paper is loose or silent (all documented in :class:`FedRA`):

* Variance floor. Eq. 12 divides by m~ - 1, undefined for a one-element group, and a group of equal scores
  (e.g. colluding attackers sending one vector) has variance 0 and an infinite likelihood. Each group's
  variance is therefore at least ``variance_floor * mu_g^2`` (a coefficient of variation of at least
  sqrt(variance_floor); relative, because the scores scale with the updates), and at least the smallest
  normal float64 so an all-zero group (identical updates) stays finite.
* Candidates m~ = 0 .. min(M, n - 1): the paper loops to n, but m~ = n would select no update. A score that
  is infinite (an L1 distance overflowed) cannot be fitted by a Gaussian: such clients are always counted as
  malicious (m~ >= their number) and left out of the malicious group's Gaussian fit.
* Unknown population (``ctx.num_clients_total`` or ``ctx.num_byzantine_total`` None): M = f
  (``ctx.num_byzantine``) and N = n. Then m = f, the fixed-ratio rule selects n - f - 1 updates, and the
  hypergeometric prior is a point mass at f, so the dynamic rule selects n - f. With totals known the counts
  are sanitised: N >= n and 0 <= M <= N.
* Quantities: ``ctx.num_samples`` (absent: 1 each, which makes FedRA an L1 Multi-Krum with c selected and equal
  weights). Negative or NaN claims count as 0, +inf as the largest float64. A claim of 0 gives Q = 0 with
  everyone and score 0, and weight 0 in the average: such a client is harmless but may take a selection
  slot. If every selected client claims 0 the selected updates are averaged with equal weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import claimed_counts, lexicographic_order, pairwise_distances, weighted_rows
from byzlab.aggregators.registry import register

_TINY = float(np.finfo(np.float64).tiny)
_HALF_LN_2PI = 0.5 * math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------------ population


def population(ctx: RoundContext, n: int) -> tuple[int, int, bool]:
    """(M, N, known): the malicious count and size of the client population. Unknown (either total None):
    M = ``ctx.num_byzantine``, N = n. Known: N raised to at least n and M clamped to [0, N]."""
    if ctx.num_clients_total is None or ctx.num_byzantine_total is None:
        return min(max(0, int(ctx.num_byzantine)), n), n, False
    total = max(int(ctx.num_clients_total), n)
    return min(max(0, int(ctx.num_byzantine_total)), total), total, True


def expected_malicious(n: int, M: int, N: int) -> int:
    """m = ceil(nM / N) (§3, Alg. 1 line 1), in exact integer arithmetic."""
    return -(-n * M // N) if N > 0 else 0


def claimed_quantities(ctx: RoundContext, n: int, device: torch.device) -> torch.Tensor:
    """q [n] float64: the claimed counts, NaN and negative as 0, +inf as the largest float64; 1 each if absent."""
    q = claimed_counts(ctx.num_samples, n, device).reshape(-1)  # negative as 0
    return torch.nan_to_num(q, nan=0.0, posinf=float(np.finfo(np.float64).max), neginf=0.0)


# ---------------------------------------------------------------------------------------------- scores


def quantity_distances(dist: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. 6 for every pair: ``Q_ij = sqrt(q_i q_j / (q_i + q_j)) * dist_ij`` [n, n] float64.

    q_i q_j / (q_i + q_j) is evaluated as 1 / (1/q_i + 1/q_j) (no overflow for huge claims); a zero claim
    gives 0, and Q = 0 whenever that factor is 0 (also against an infinite distance)."""
    q = q.to(torch.float64)
    inv = 1.0 / q  # 1/0 = inf
    harmonic = 1.0 / (inv[:, None] + inv[None, :])  # 1/inf = 0
    dist = dist.to(torch.float64)
    return torch.where(harmonic > 0, harmonic.sqrt() * dist, torch.zeros_like(dist))


@dataclass
class Scores:
    scores: torch.Tensor  # s(i) [n] float64 (eq. 8)
    neighbours: torch.Tensor  # [n, k] row indices j with i -> j, nearest first
    quantity_dist: torch.Tensor  # Q [n, n] float64 (eq. 6)
    l1: torch.Tensor  # L1 distances [n, n] float64


def fedra_scores(updates: torch.Tensor, q: torch.Tensor, m: int, gamma: float) -> Scores:
    """Scores ``s(i) = q_i^gamma * sum_{i -> j} Q(g_i, g_j, q_i, q_j)`` (eq. 8, Alg. 1 line 3).

    i -> j: the k = n - m - 2 other updates nearest to g_i in L1 distance (§4.1), k clipped to [0, n - 1].
    Equal distances are ordered by smaller Q, then by row index; only exactly equal (distance, Q) pairs,
    which contribute the same, depend on the order. A claim of 0 has score 0 (also when gamma = 0 and a
    neighbour distance is infinite).
    """
    n = updates.shape[0]
    device = updates.device
    l1 = pairwise_distances(updates, 1).to(torch.float64)  # torch.cdist(p=1), exactly symmetric
    Q = quantity_distances(l1, q)
    k = max(0, min(n - 1, n - m - 2))
    eye = torch.eye(n, dtype=torch.bool, device=device)
    # lexicographic (self last, distance, Q, index) by three stable sorts, least significant key first
    order = torch.sort(Q.masked_fill(eye, float("inf")), dim=1, stable=True).indices
    order = order.gather(1, torch.sort(l1.gather(1, order), dim=1, stable=True).indices)
    order = order.gather(1, torch.sort(eye.gather(1, order).to(torch.int8), dim=1, stable=True).indices)
    neighbours = order[:, :k]
    sums = Q.gather(1, neighbours).sum(dim=1)
    penalty = q.to(torch.float64).pow(gamma)
    scores = torch.where(q > 0, penalty * sums, torch.zeros_like(sums))
    return Scores(scores=scores, neighbours=neighbours, quantity_dist=Q, l1=l1)


# ------------------------------------------------------------------------------------------- estimator


def gaussian_log_likelihood(values: np.ndarray, variance_floor: float) -> tuple[float, float, float]:
    """sum_i ln N(values_i; mu, sigma^2) with mu the mean and sigma^2 the unbiased variance (eq. 12), floored at
    ``variance_floor * mu^2`` and the smallest normal float64. Returns (log-likelihood, mu, sigma^2); an
    empty group contributes 0 (and mu = sigma^2 = nan)."""
    k = values.size
    if k == 0:
        return 0.0, math.nan, math.nan
    mu = float(values.mean())
    squares = float(((values - mu) ** 2).sum())
    var = squares / (k - 1) if k > 1 else 0.0
    var = max(var, variance_floor * mu * mu, _TINY)
    return -k * (0.5 * math.log(var) + _HALF_LN_2PI) - squares / (2.0 * var), mu, var


@dataclass
class EstimatorTable:
    """Per candidate m~ = 0 .. n - 1: the terms of eq. 10 and which candidates are allowed."""

    candidates: np.ndarray  # m~
    log_prior: np.ndarray  # ln H(m~; N, M, n)
    log_lik_benign: np.ndarray  # the n - m~ lowest scores
    log_lik_malicious: np.ndarray  # the finite scores among the m~ highest
    allowed: np.ndarray  # m~ <= min(M, n - 1) and m~ >= number of infinite scores
    m_hat: int

    @property
    def total(self) -> np.ndarray:
        return self.log_prior + self.log_lik_benign + self.log_lik_malicious


def estimate_malicious_count(
    scores: torch.Tensor | np.ndarray, M: int, N: int, variance_floor: float
) -> EstimatorTable:
    """The malicious client number estimator (Alg. 2): m_hat = argmax over m~ of l(m~) (eqs. 9-12).

    The scores are sorted ascending; the m~ highest form the malicious group. Candidates run over
    m~ = max(0, #infinite scores) .. min(M, n - 1) (m~ = n would select no update); candidates outside the
    hypergeometric support have prior -inf. Ties in l go to the smaller m~ (fewer updates discarded). If every
    allowed candidate has l = -inf (M or N inconsistent with n), the prior is dropped.
    """
    s = np.sort(np.asarray(torch.as_tensor(scores).detach().to("cpu", torch.float64).numpy(), dtype=np.float64))
    n = s.size
    if n == 0:
        raise ValueError("fedra estimator: no scores")
    candidates = np.arange(n)
    n_inf = int((~np.isfinite(s)).sum())
    finite = s[: n - n_inf]
    from scipy.stats import hypergeom  # here, not at the top: scipy.stats takes ~1 s to import in every actor

    log_prior = hypergeom.logpmf(candidates, N, M, n) if N >= n else np.full(n, -np.inf)
    log_prior = np.where(np.isnan(log_prior), -np.inf, log_prior)
    benign = np.full(n, -np.inf)
    malicious = np.zeros(n)
    allowed = (candidates <= min(M, n - 1)) & (candidates >= n_inf)
    if not allowed.any():  # more infinite scores than M: discard every infinite one anyway
        allowed = candidates == min(n_inf, n - 1)
    for t in candidates[allowed]:
        benign[t] = gaussian_log_likelihood(finite[: n - t], variance_floor)[0]
        malicious[t] = gaussian_log_likelihood(finite[n - t :], variance_floor)[0]
    total = np.where(allowed, log_prior + benign + malicious, -np.inf)
    if not np.isfinite(total).any():
        total = np.where(allowed, benign + malicious, -np.inf)
    m_hat = int(np.argmax(total)) if np.isfinite(total).any() else int(candidates[allowed][0])
    return EstimatorTable(candidates, log_prior, benign, malicious, allowed, m_hat)


# ----------------------------------------------------------------------------------------------- rule


class FedRAParams(AggregatorParams):
    mode: Literal["dynamic", "fixed"] = Field(
        "dynamic",
        description="how many updates are selected (Alg. 1 line 5): 'dynamic' = n - m_hat with m_hat from the "
        "malicious client number estimator (Alg. 2; the dynamic-ratio setting, which §3 calls the realistic "
        "one: only the population's M is known); 'fixed' = n - ceil(nM/N) - 1 (fixed-ratio setting, §3)",
    )
    gamma: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="exponent of the quantity penalty q_i^gamma in the score (eq. 8: gamma < 0.5; 0.1 in §5.1)",
    )
    variance_floor: float = Field(
        1e-2,
        gt=0.0,
        allow_inf_nan=False,
        description="estimator only: each score group's variance is at least variance_floor * (group mean)^2 "
        "(coefficient of variation >= sqrt(variance_floor)), so one-element and constant groups have a finite "
        "likelihood (eq. 12 divides by m~ - 1); not in the paper. The default 0.01 only binds for groups "
        "tighter than a 10% coefficient of variation",
    )


@register
class FedRA(Aggregator[FedRAParams]):
    """FedRA (Yi et al., §4.2-4.3, Alg. 1-2): quantity-aware Krum-style filtering, quantity-weighted mean.

    Score s(i) = q_i^gamma * sum_{i -> j} sqrt(q_i q_j / (q_i + q_j)) ||g_i - g_j||_1 over the n - m - 2
    L1-nearest other updates, m = ceil(nM/N) (eqs. 6, 8); select the c lowest scores, c = n - m - 1 (``fixed``)
    or n - m_hat (``dynamic``, m_hat maximising eq. 10 over m~ = 0 .. min(M, n - 1)); aggregate
    sum_C q_i g_i / sum_C q_i (Alg. 1 line 7). Equal scores are ordered by the total Q to all others, then by
    row index.

    M, N: ``ctx.num_byzantine_total`` and ``ctx.num_clients_total``; if either is unknown, M = f
    (``ctx.num_byzantine``) and N = n, so m = f, ``fixed`` keeps n - f - 1 and ``dynamic`` keeps n - f
    (the prior is then a point mass at f). In a round with too few updates for n - m - 2 >= 1 neighbours
    (client sampling, dropped non-finite rows) m is clamped to max(0, n - 3) and ``info["m_clamped"] = 1``.
    Quantities: ``ctx.num_samples`` (absent: 1 each). See the module docstring for the variance floor,
    infinite scores and zero claims.

    ``weights``: q_i / sum_C q over the selected, 0 elsewhere; ``accepted``: the selected. ``info``: ``m``
    (ceil(nM/N) used for the neighbour count), ``m_hat`` (the estimate in ``dynamic``; m in ``fixed``),
    ``selected`` (c), ``m_clamped``, ``population_known``. ``check_setting`` requires n - f - 2 >= 1 (the
    neighbour count with M, N unknown, m = f).

    Hostile rows (``tolerated_rows``): FedRA's score is Krum's (§4.1), so it withstands f arbitrary rows
    under Krum's condition n > 2f + 2 (Blanchard et al., Proposition 1), which ``check_setting`` does not
    require: with n <= 2f + 2, f colluding copies of one row have all their n - m - 2 neighbours among
    themselves, score 0 and are selected first (n = 7, f = 3: three copies of a 1e30 row made the aggregate
    ~4e29). ``tolerated_rows`` is therefore min(f, (n - 3) // 2) (equal claims; claims weigh the scores).
    Past it the quantity-weighted mean of the selected rows follows the hostile ones: finite (sums that
    overflow float32 are redone in float64), within the rows' coordinate range. L1 distances that overflow
    float32 are +inf and such rows always count as malicious (module docstring).
    """

    name = "fedra"
    Params = FedRAParams
    needs = frozenset({"num_samples", "num_clients_total", "num_byzantine_total"})

    @classmethod
    def tolerated_rows(cls, params: FedRAParams, num_clients: int, num_byzantine: int) -> int:
        return min(num_byzantine, max(0, (num_clients - 3) // 2))

    @classmethod
    def check_setting(cls, params: FedRAParams, num_clients: int, num_byzantine: int) -> None:
        n, f = num_clients, num_byzantine
        if n - f - 2 < 1:
            raise ValueError(
                f"fedra needs n - m - 2 >= 1 L1 neighbours per score: n={n}, m={f} (n - m - 2 = {n - f - 2}; "
                f"at most m={max(0, n - 3)} for n={n})"
            )

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        n = updates.shape[0]
        device = updates.device
        M, N, known = population(ctx, n)
        m_full = expected_malicious(n, M, N)
        m = min(m_full, max(0, n - 3))
        q = claimed_quantities(ctx, n, device)
        scored = fedra_scores(updates, q, m, p.gamma)
        if p.mode == "fixed":
            m_hat = m
            c = max(1, n - m - 1)
        else:
            m_hat = estimate_malicious_count(scored.scores, M, N, p.variance_floor).m_hat
            c = n - m_hat
        # lowest score first; equal scores by the total Q to all others, then by row index
        chosen = lexicographic_order(scored.scores, scored.quantity_dist.sum(dim=1))[:c]
        accepted = torch.zeros(n, dtype=torch.bool, device=device)
        accepted[chosen] = True
        mass = torch.where(accepted, q, torch.zeros_like(q))
        if bool(mass.sum() > 0):
            mass = mass / mass.max()  # huge claims: normalise before summing
            weights64 = mass / mass.sum()
        else:  # every selected client claims 0
            weights64 = accepted.to(torch.float64) / c
        weights = weights64.to(updates.dtype)
        update = weighted_rows(weights[chosen], updates[chosen])
        info = {
            "m": float(m),
            "m_hat": float(m_hat),
            "selected": float(c),
            "m_clamped": float(m < m_full),
            "population_known": float(known),
        }
        return AggregationResult(update=update, weights=weights, accepted=accepted, info=info)
