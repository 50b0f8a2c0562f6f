"""PAwBRoFL: performance-aware Byzantine-robust aggregation (Fernando, Xiong, Patel & Stoll, "PAwBRoFL:
Exploring Performance Aware Byzantine-Robust Federated Learning", §3-4, Algorithms 1-3, eqs. 7-9).

Two stages (the paper's Figure 1, Algorithm 3 line 12-13):

1. **BR block**: a robust mean estimator on the update vectors x_1..x_m returns weights q over the clients
   (Σ q_i = 1, q_i = 0 for clients judged malicious) and g_BR = Σ q_i x_i (eq. 7). Two estimators, both driven
   by the generalized quasi-gradient τ_i = <x_i - μ_q, v>^2 (Zhu, Jiao & Steinhardt 2022; §3 Def. 3.1), v the
   top eigenvector of the q-weighted covariance Cov_q = Σ q_i (x_i - μ_q)(x_i - μ_q)^T, μ_q = Σ q_i x_i:

   - ``filtering`` (Algorithm 2): start from q = 1/m; while ||Cov_q||_2 > ξ:
     q ← q (1 - τ / max_j τ_j) renormalised to Σ q = 1 (the KL projection onto the simplex), and clients whose
     weight became 0 are removed (all those tied at τ_max; the authors drop the first argmax only). If every
     kept client ties at τ_max (e.g. the last two kept, symmetric about μ_q) the update would zero them all:
     the loop stops with the current q instead;
   - ``no_regret`` (Algorithm 1, as the authors' ``ex_noregret_`` implements it): first the ⌈εm⌉ clients with
     the worst Krum scores are removed (Alg. 1 lines 2-4 remove far-away points; the authors' code does it
     with Krum); then from q = 1/m' on the m' remaining clients, while ||Cov_q||_2 > ξ:
     q ← q (1 - η τ) with η = 0.5 / max_{i,j} ||x_i - x_j||^2 over the remaining clients (the authors' step;
     it keeps 1 - ητ ≥ 1/2 > 0, since τ_i ≤ ||x_i - μ_q||^2 ≤ max_j ||x_i - x_j||^2), followed by the KL
     projection onto Δ_{m',ε} = {Σ q = 1, 0 ≤ q_i ≤ 1/((1 - ε) m')} (Alg. 1 lines 13-15), see
     :func:`kl_project_capped_simplex`.

   Both stop when the top eigenvalue of Cov_q is ≤ ξ or after ⌊2εm⌋ weight updates (m = the clients the loop
   starts with: m for filtering, m' for no-regret; the authors' loop bounds ``range(int(2 * eps * size))``
   for no-regret and ``range(2 * int(eps * size))`` for filtering; this module uses ⌊2εm⌋ for both).

2. **PA block** (§4): with the reported loss gaps gap_i = f_i(θ_t) - f_i(θ_i) (the paper's approximation of
   f_i(θ) - f_i^*), z_i = q_i gap_i / μ, p = softmax(z) and

       g_PABR = Σ_i q_i p_i x_i                                   (eq. 8)
       ĝ      = ||g_BR|| · g_PABR / ||g_PABR||                    (eq. 9)

   The softmax runs over the clients the estimator kept (q_i > 0), as in the authors' code (removed clients
   are dropped from their arrays); a removed client has q_i = 0, so it never contributes to g_PABR anyway,
   and the softmax's normaliser cancels in eq. 9. It is computed with a max shift (log-sum-exp), in float64,
   with z clamped to the finite float64 range, so huge (e.g. misreported) gaps cannot overflow: the authors'
   code doubles μ until ``exp`` stops giving NaN instead. ``mu = None`` skips this stage: the output is the
   plain robust estimate g_BR. If ||g_PABR|| = 0 (the PA weights make the kept updates cancel) ĝ falls back
   to g_BR (``info["pa_fallback"]`` counts the blocks); the authors add 1e-8 to the norm instead, which
   would return a zero update.

Implementation
--------------
* Nothing of size d x d is formed: every quantity of the iteration is an n x n computation on the Gram
  matrix K = X0 X0^T of the updates shifted by their coordinate-wise median (X0 = X - med(X), float64, built
  once per block in slices of bounded size; the robust shift avoids cancellation next to a huge outlier).
  With A = I - 1 q^T the q-centred rows are A X0, so the weighted Gram G = D A K A^T D (D = diag(√q)) has
  the same non-zero spectrum as Cov_q = X0^T A^T D^2 A X0; if (λ, u) is G's top eigenpair, Cov_q's top
  eigenvector is v ∝ X0^T b with b = A^T D u, and <x_i - μ_q, X0^T b> = (K b)_i - q^T K b.
  The loop costs O(n^3) per iteration, independent of d.
* ``chunk_size``: the authors run the estimator (and the PA step) separately on consecutive blocks of
  ``itv = 1000`` coordinates of each layer. Here ``chunk_size = c`` splits the flat update into consecutive
  blocks of c coordinates (the last one shorter), each with its own Krum pre-filter, weights q, stopping and
  PA rescaling (eq. 9 per block, as in the authors' code); the blocks are processed together as a batch.
  The default (None) runs it once on the whole vector.
* Krum pre-filter (no-regret): ``numerics.krum_order`` with f = ⌈εm⌉ (neighbour count
  m - f - 2) on Euclidean, not squared, distances, as the authors' ``krum_`` does; its worst ⌈εm⌉ are
  removed (at most m - 1). Counts use a 1e-9 tolerance (⌈0.28 · 25⌉ = 7, not 8 from 7.000000000000001).
* ``loss_gaps`` None (not reported) is treated as all zeros: then p is uniform over the kept clients,
  g_PABR ∝ g_BR and ĝ = g_BR. Non-finite reported gaps are replaced by 0 (``info["nonfinite_gaps"]``).
  Gaps are attacker-controlled: the robust stage filters on the updates only, but a kept attacker can
  inflate its gap to attract softmax weight; that is the method as published.

Paper text or authors' code (``variant``)
-----------------------------------------
The default, ``paper``, is the method as the paper writes it, with the readings above. ``variant: pawbrofl_code``
computes what the authors' released code (heshandevaka/PAwBRoFL: ``src/robust_estimator.py``, ``RE`` below,
driven by ``src/simulate.py``, ``SIM``), with which the paper's numbers were produced, computes where it departs
from the text:

* **Blocks per layer.** The code aggregates each parameter tensor on its own (``SIM`` l.327-334, 390-397) and
  splits it into blocks of ``itv = 1000`` coordinates, the last one shorter (``RE`` ``ex_noregret`` /
  ``filterL2``): the blocks follow ``ctx.layers``, ``chunk_size`` coordinates at a time within each layer (None:
  one block per layer; the code's sweep sets 1000). The paper variant cuts the flat vector, across layers.
* **Each update gets another client's loss gap.** ``SIM`` passes the updates in the round's random client order
  (``choices``, l.176, 394-396) but the loss gaps in client-id order (l.186, 223, 242, 397), and the estimator
  pairs them by position: every round, update i is weighed with the gap of a client drawn by a random
  permutation. This variant permutes the gaps uniformly with ``ctx.generator`` every round (among the round's
  clients; the code has every client in every round). Eq. 8 pairs each client with its own gap.
* **No-regret's projection** (``RE`` l.91-113): candidates cap the i + 1 largest weights at 1/((1 - ε) m') and
  scale the rest to the remaining mass, for i = 0, 1, ... while that mass is positive, skipping those whose
  next weight would exceed the cap; the one with the least ``rel_entr(c, c')`` = KL(c || c') is kept (the
  first on ties). The uncapped candidate c / Σc is never among them, so the largest weight is always capped,
  and the divergence is the reverse of Alg. 1's KL(q || c). Equal weights are ordered by a stable sort (the
  code's ``np.argsort`` may order exact ties otherwise). If no candidate qualifies (the code would fail),
  the exact projection is used.
* **The PA step's weights** (``RE`` l.72-89, 190-229): the code starts from c = 1 (not 1/m), so when the
  estimator stops at its first check the PA step uses z = gap / μ, not q · gap / μ = gap / (m μ); it takes
  p = exp(z) / Σ exp(z), doubling μ while that gives NaN (an overflow, ``RE`` l.77-79); and eq. 9 divides by
  ||Σ p_i c_i x_i|| + 1e-8. A softmax whose sum overflows without any term overflowing gives p = 0, and the
  code a zero block, as here.

The filtering estimator is the same in both (the code's removal of the first argmax only differs on exact
ties at τ_max; the removed clients' entries are left out of the code's softmax, as here). Setting choices of
the code that are config, not rule: ε = 0.2 in every run (``train.sh`` never sets ``--malnum``; so also without
attack), local lr 1e-3, client data sizes ∝ U(0, 1) (``--variable_local_size``), its ConvNet (30/30/200
units, 319,520 parameters), and a 5 x 5 corner patch (value 0, target class 0, every image of an attacker,
every round) as the backdoor that ``train.sh`` runs, not DBA.

Outputs
-------
* ``weights``: the normalised effective coefficients w_i = q_i p_i / Σ_j q_j p_j (Σ w = 1; = q for
  ``mu = None`` or a fallback block), i.e. ĝ = s · Σ w_i x_i with the scalar s = ||g_BR|| / ||Σ w_i x_i||
  of eq. 9 left out. With blocks, the block-length-weighted average of the blocks' w.
* ``accepted``: q_i > 0 (in at least one block: the client contributes to the aggregate).
* ``info``: ``iterations`` (weight updates done; max over blocks), ``top_eigenvalue`` (||Cov_q||_2 at the
  final q; max over blocks), ``removed`` (clients with q = 0 everywhere), ``removed_mean`` (mean per block),
  ``krum_removed`` (no-regret pre-filter, per block), ``blocks``, ``epsilon``, ``pa_fallback``,
  ``nonfinite_gaps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import (
    CHUNK_ELEMENTS,
    coordinate_chunks,
    generator_or_seeded,
    krum_order,
    squared_distances_from_gram,
)
from byzlab.aggregators.registry import register

XI_DEFAULT = math.sqrt(20.0) * 1e-5
"""Default stopping threshold ξ on ||Cov_q||_2. The authors' ``filterL2_`` / ``ex_noregret_`` stop when
``eig_val**2 <= expansion * sigma**2`` with ``expansion = 20``, and their experiments (``simulate.py``,
``--sigma`` default 1e-5) pass σ = 1e-5: the rule is λ_max ≤ √20 · 10^-5 ≈ 4.47e-5. (Alg. 1 takes σ² as an
upper bound on the spectral norm of the honest covariance; the estimator functions' own default σ = 1 would
give ξ = √20 ≈ 4.47, appropriate only for updates whose honest spread is of order 1.) With updates of
realistic scale this threshold rarely stops the loop before the ⌊2εm⌋ cap, as in the authors' runs; it
still stops at once on (near-)identical updates."""

_TOL = 1e-9


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _TOL))


def _floor(x: float) -> int:
    return max(0, math.floor(x + _TOL))


# ------------------------------------------------------------------------------------------ projection


def kl_project_capped_simplex(q_tilde: torch.Tensor, cap: float | torch.Tensor,
                              support: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_q KL(q || q_tilde) over {Σ q = 1, 0 ≤ q_i ≤ cap, q_i = 0 off ``support``}, along the last dim.

    The minimiser has the form q_i = min(cap, s · q_tilde_i) for the one scale s that makes Σ q = 1 (KKT of
    the KL objective with a sum constraint and box constraints). It is found by iterative capping: normalise;
    while some entries exceed the cap, fix them at the cap and rescale the others to the remaining mass
    1 - cap · #capped. Capped entries stay capped (s only grows), so at most n rounds. Requires
    cap · |support| ≥ 1 (1/((1 - ε) m') · m' = 1/(1 - ε) ≥ 1 in Algorithm 1) and q_tilde ≥ 0.
    ``q_tilde`` may be batched [..., n]; ``cap`` a float or a tensor broadcastable to [..., 1].
    """
    qt = q_tilde.clamp_min(0)
    if support is not None:
        qt = torch.where(support, qt, torch.zeros_like(qt))
    cap = torch.as_tensor(cap, dtype=qt.dtype, device=qt.device)
    if cap.dim() > 0 and cap.shape[-1] != 1:
        cap = cap.unsqueeze(-1)
    capped = torch.zeros_like(qt, dtype=torch.bool)
    q = qt
    for _ in range(qt.shape[-1] + 1):
        free = torch.where(capped, torch.zeros_like(qt), qt)
        mass = (1 - cap * capped.sum(-1, keepdim=True)).clamp_min(0)
        total = free.sum(-1, keepdim=True)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        scale = torch.where(total > 0, mass / safe, torch.zeros_like(total))
        q = torch.where(capped, cap.expand_as(qt), free * scale)
        over = (q > cap) & ~capped
        if not bool(over.any()):
            break
        capped = capped | over
    return q


def authors_capped_projection(c: torch.Tensor, cap: float, support: torch.Tensor) -> torch.Tensor:
    """The PAwBRoFL authors' projection step (``RE`` ``ex_noregret_`` l.91-113) on a batch of
    weights ``c`` [B, n] >= 0, computed on the ``support`` [B, n] (every row with the same count m' of kept
    clients; the code's arrays hold those only). For i = 0..m'-1 while ``1 - (i + 1) cap > 0``: the i + 1
    largest weights set to ``cap``, the rest scaled to the remaining mass; a candidate whose next weight then
    exceeds the cap is skipped; the one with the least KL(c || candidate) (scipy's ``rel_entr`` summed, c
    unnormalised) is returned, the first of equal ones. Rows without any candidate get the exact projection
    (:func:`kl_project_capped_simplex`)."""
    nb, n = c.shape
    m = int(support[0].sum()) if nb else 0
    masked = torch.where(support, c, torch.full_like(c, -1.0))
    ordered, order = torch.sort(masked, dim=-1, descending=True, stable=True)
    ordered = ordered[:, :m].clamp_min(0)  # the kept clients' weights, largest first
    head = torch.arange(1, m + 1, dtype=c.dtype, device=c.device)  # i + 1 capped
    tail = ordered.sum(-1, keepdim=True) - ordered.cumsum(-1)  # Σ of the uncapped rest, per candidate
    mass = 1 - head * cap  # [m]
    scale = mass / torch.where(tail > 0, tail, torch.ones_like(tail))  # [B, m]
    position = torch.arange(m, device=c.device)
    capped = position.unsqueeze(0) <= position.unsqueeze(1)  # [i, j]: entry j capped in candidate i
    candidates = torch.where(capped, torch.full_like(scale, cap).unsqueeze(-1).expand(nb, m, m),
                             ordered.unsqueeze(1) * scale.unsqueeze(-1))  # [B, i, j]
    following = torch.cat([ordered[:, 1:], torch.zeros_like(ordered[:, :1])], dim=-1) * scale  # entry i + 1
    valid = (mass > 0).cumprod(0).bool().unsqueeze(0) & (following <= cap) & (position < m - 1).unsqueeze(0)
    base = ordered.unsqueeze(1).expand_as(candidates)
    terms = torch.where(base > 0, base * (base / candidates).log(), torch.zeros_like(base))  # rel_entr
    kl = torch.where(valid, terms.sum(-1), torch.full_like(scale, torch.inf))
    best = kl.argmin(-1)  # the first minimum
    chosen = candidates[torch.arange(nb, device=c.device), best]  # [B, m], in sorted order
    out = torch.zeros_like(c).scatter_(1, order[:, :m], chosen)
    none = ~valid.any(-1)
    if bool(none.any()):
        out[none] = kl_project_capped_simplex(c[none], cap, support[none])
    return out


# --------------------------------------------------------------------------------- robust estimators


@dataclass
class RobustEstimate:
    """Output of :func:`robust_weights` for B blocks of n clients."""

    q: torch.Tensor  # [B, n] float64, Σ q = 1 per block, 0 for removed clients
    iterations: torch.Tensor  # [B] weight updates done
    top_eigenvalue: torch.Tensor  # [B] ||Cov_q||_2 at the final q
    krum_removed: int  # clients removed by the no-regret Krum pre-filter (per block)


def _centred_grams(xb: torch.Tensor) -> torch.Tensor:
    """[B, n, n] float64 Gram matrices of each block's rows shifted by their coordinate-wise (lower) median.
    ``xb``: [n, B, c]. Any common shift leaves every quantity of the iteration unchanged; a robust one keeps
    the honest rows' entries small, so a huge outlier (say 1e30) does not wipe out their differences by
    cancellation (a plain-mean shift would). Built over slices of blocks and coordinates so that the float64
    work copies stay near CHUNK_ELEMENTS."""
    n, nb, c = xb.shape
    grams = torch.zeros(nb, n, n, dtype=torch.float64, device=xb.device)
    group = max(1, CHUNK_ELEMENTS // max(1, n * c))
    for b0 in range(0, nb, group):
        b1 = min(nb, b0 + group)
        for cols in coordinate_chunks(c, n * (b1 - b0)):
            part = xb[:, b0:b1, cols].to(torch.float64)
            part = (part - part.median(dim=0, keepdim=True).values).permute(1, 0, 2)  # [g, n, s]
            grams[b0:b1] += part @ part.transpose(1, 2)
    return (grams + grams.transpose(1, 2)) / 2


def _top_eigen(grams: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpair (λ [B], u [B, n]) of G = D A K A^T D, the n x n Gram of the rows √q_i (x_i - μ_q); λ is
    the top eigenvalue of Cov_q = Σ q_i (x_i - μ_q)(x_i - μ_q)^T."""
    kq = (grams @ q.unsqueeze(-1)).squeeze(-1)  # K q
    qkq = (q * kq).sum(-1)
    centred = grams - kq.unsqueeze(-1) - kq.unsqueeze(-2) + qkq[:, None, None]  # A K A^T
    s = q.sqrt()
    g = s.unsqueeze(-1) * centred * s.unsqueeze(-2)
    g = (g + g.transpose(1, 2)) / 2
    evals, evecs = torch.linalg.eigh(g)
    return evals[:, -1].clamp_min(0), evecs[:, :, -1]


def _quasi_gradient(grams: torch.Tensor, q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """τ_i = <x_i - μ_q, v>^2 [B, n], v = X0^T b / ||X0^T b|| the top eigenvector of Cov_q, b = A^T D u."""
    a = q.sqrt() * u
    b = a - q * a.sum(-1, keepdim=True)
    kb = (grams @ b.unsqueeze(-1)).squeeze(-1)
    norm2 = (b * kb).sum(-1, keepdim=True)  # ||X0^T b||^2 (= λ)
    proj = kb - (q * kb).sum(-1, keepdim=True)  # <x_i - μ_q, X0^T b>
    return proj.square() / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))


def robust_weights(xb: torch.Tensor, estimator: Literal["filtering", "no_regret"], epsilon: float,
                   xi: float, authors_projection: bool = False) -> RobustEstimate:
    """Run Algorithm 2 (``filtering``) or Algorithm 1 (``no_regret``) on every block of ``xb`` [n, B, c]
    (rows = clients) at once; see the module docstring. ``authors_projection``: no-regret projects as the
    authors' code does (:func:`authors_capped_projection`)."""
    n, nb, _ = xb.shape
    dev = xb.device
    grams = _centred_grams(xb)
    support = torch.ones(nb, n, dtype=torch.bool, device=dev)
    krum_removed = 0
    eta = cap = None
    if estimator == "no_regret":
        sq = squared_distances_from_gram(grams)  # ||x_i - x_j||^2
        sq = torch.maximum(sq, sq.transpose(1, 2))
        sq.diagonal(dim1=1, dim2=2).zero_()
        krum_removed = min(_ceil(epsilon * n), n - 1)
        if krum_removed > 0:
            dist = sq.sqrt()  # Euclidean distances, as the authors' krum_
            for b in range(nb):
                support[b, krum_order(dist[b], krum_removed)[n - krum_removed:]] = False
        m = n - krum_removed
        pair = support.unsqueeze(-1) & support.unsqueeze(-2)
        far = torch.where(pair, sq, torch.zeros_like(sq)).amax(dim=(1, 2))
        eta = torch.where(far > 0, 0.5 / torch.where(far > 0, far, torch.ones_like(far)), torch.zeros_like(far))
        cap = 1.0 / ((1.0 - epsilon) * m)
    else:
        m = n
    max_iter = _floor(2 * epsilon * m)
    q = support.to(torch.float64) / m
    iterations = torch.zeros(nb, dtype=torch.long, device=dev)
    top = torch.zeros(nb, dtype=torch.float64, device=dev)
    running = torch.arange(nb, device=dev)
    for k in range(max_iter + 1):
        gr, qr = grams[running], q[running]
        lam, u = _top_eigen(gr, qr)
        stop = (lam <= xi) if k < max_iter else torch.ones_like(lam, dtype=torch.bool)
        if estimator == "filtering" and not bool(stop.all()):
            tau = _quasi_gradient(gr, qr, u) * (qr > 0)
            tmax = tau.amax(-1, keepdim=True)
            new = qr * (1 - tau / torch.where(tmax > 0, tmax, torch.ones_like(tmax))).clamp_min(0)
            new = torch.where(qr > 0, new, torch.zeros_like(new))
            total = new.sum(-1, keepdim=True)
            stop = stop | (total.squeeze(-1) <= 0) | (tmax.squeeze(-1) <= 0)  # all kept tied at τ_max: keep q
            new = new / torch.where(total > 0, total, torch.ones_like(total))
        elif estimator == "no_regret" and not bool(stop.all()):
            tau = _quasi_gradient(gr, qr, u)
            new = qr * (1 - eta[running].unsqueeze(-1) * tau).clamp_min(0)
            project = authors_capped_projection if authors_projection else kl_project_capped_simplex
            new = project(new, cap, support[running])
        done = running[stop]
        top[done] = lam[stop]
        iterations[done] = k
        go = ~stop
        if not bool(go.any()):
            break
        q[running[go]] = new[go]
        running = running[go]
    return RobustEstimate(q=q, iterations=iterations, top_eigenvalue=top, krum_removed=krum_removed)


# --------------------------------------------------------------------------------- performance awareness


@dataclass
class PerformanceAware:
    """Output of :func:`performance_aware` (one block)."""

    update: torch.Tensor  # ĝ (eq. 9), or g_BR for mu = None / ||g_PABR|| = 0
    g_br: torch.Tensor  # Σ q_i x_i (eq. 7)
    g_pabr: torch.Tensor | None  # Σ q_i p_i x_i (eq. 8); None for mu = None
    p: torch.Tensor | None  # softmax(z) over the kept clients (0 for q_i = 0); None for mu = None
    weights: torch.Tensor  # normalised effective coefficients q p / Σ q p (q for mu = None / fallback)
    fallback: bool  # ||g_PABR|| = 0: the update is g_BR


def _pa_coefficients(q: torch.Tensor, gaps: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q p) [B, n] float64: p = softmax(z) over the clients with q > 0, z = q gap / μ (eq. 8); log-sum-exp
    (torch.softmax subtracts the max) on z clamped to the finite float64 range."""
    big = torch.finfo(torch.float64).max
    z = torch.nan_to_num(q * gaps.unsqueeze(0) / mu, nan=0.0, posinf=big, neginf=-big)
    z = z.masked_fill(q <= 0, float("-inf"))
    p = torch.softmax(z, dim=-1)
    return p, q * p


def _mix(weights: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Σ_n weights[b, n] xb[n, b, :] [B, c] in xb's dtype for float64 ``weights`` [B, n]; blocks whose float32
    sum overflowed (rows near 3.4e38 with weights summing to 1 up to rounding) are redone in float64."""
    out = torch.einsum("bn,nbc->bc", weights.to(xb.dtype), xb)
    if xb.dtype != torch.float64 and not bool(torch.isfinite(out).all()):
        bad = (~torch.isfinite(out)).any(dim=-1).nonzero().squeeze(1)
        out[bad] = torch.einsum("bn,nbc->bc", weights[bad], xb[:, bad].double()).to(xb.dtype)
    return out


def _pa_blocks(xb: torch.Tensor, q: torch.Tensor, gaps: torch.Tensor | None, mu: float | None):
    """Eqs. 7-9 per block. ``xb`` [n, B, c], ``q`` [B, n] float64, ``gaps`` [n] float64 or None (zeros).
    Returns (update [B, c], weights [B, n] float64, fallback [B] bool)."""
    dtype = xb.dtype
    g_br = _mix(q, xb)
    nb = q.shape[0]
    if mu is None:
        return g_br, q, torch.zeros(nb, dtype=torch.bool, device=q.device)
    if gaps is None:
        gaps = torch.zeros(q.shape[1], dtype=torch.float64, device=q.device)
    _, coef = _pa_coefficients(q, gaps, mu)
    w = coef / coef.sum(-1, keepdim=True)
    direction = _mix(w, xb)  # g_PABR / Σ q p: same direction as eq. 8
    norm_dir = torch.linalg.vector_norm(direction, dim=-1, dtype=torch.float64)
    norm_br = torch.linalg.vector_norm(g_br, dim=-1, dtype=torch.float64)
    fallback = ~(norm_dir > 0)
    scale = norm_br / torch.where(fallback, torch.ones_like(norm_dir), norm_dir)
    rescaled = direction * scale.to(dtype).unsqueeze(-1)
    if dtype != torch.float64 and not bool(torch.isfinite(rescaled).all()):  # redo in float64; beyond float32
        rescaled = (direction.double() * scale.unsqueeze(-1)).to(dtype)  # the eq. 9 vector is +-inf there
    update = torch.where(fallback.unsqueeze(-1), g_br, rescaled)
    weights = torch.where(fallback.unsqueeze(-1), q, w)
    return update, weights, fallback


def _pa_blocks_authors(xb: torch.Tensor, est: RobustEstimate, gaps: torch.Tensor | None, mu: float | None):
    """Eqs. 7-9 per block as the authors' code computes them (``RE`` l.72-89, 114-127, 190-229): c = 1 on the
    kept clients when the estimator stopped at its first check (else q), p = exp(c gap / μ) / Σ exp(...) with
    μ doubled while that is NaN, and ĝ = ||g_BR|| Σ p c x / (||Σ p c x|| + 1e-8). Returns what
    :func:`_pa_blocks` returns; a block whose Σ p c is 0 counts as a fallback in the weights (its update is
    then the code's zero vector)."""
    q = est.q
    g_br = _mix(q, xb)
    nb, n = q.shape
    if mu is None:
        return g_br, q, torch.zeros(nb, dtype=torch.bool, device=q.device)
    kept = q > 0
    c = torch.where((est.iterations == 0).unsqueeze(-1), kept.to(q.dtype), q)
    gaps = torch.zeros(n, dtype=torch.float64, device=q.device) if gaps is None else gaps
    scale = torch.full((nb, 1), float(mu), dtype=torch.float64, device=q.device)
    while True:
        e = torch.where(kept, torch.exp(c * gaps / scale), torch.zeros_like(c))
        p = e / e.sum(-1, keepdim=True)
        nan = (torch.isnan(p) & kept).any(-1, keepdim=True)
        if not bool(nan.any()):
            break
        scale = torch.where(nan, 2 * scale, scale)
    coef = p * c
    direction = _mix(coef, xb)  # Σ p_i c_i x_i
    norm_dir = torch.linalg.vector_norm(direction, dim=-1, dtype=torch.float64)
    norm_br = torch.linalg.vector_norm(g_br, dim=-1, dtype=torch.float64)
    update = (direction.double() * (norm_br / (norm_dir + 1e-8)).unsqueeze(-1)).to(xb.dtype)
    total = coef.sum(-1, keepdim=True)
    fallback = ~(total.squeeze(-1) > 0)
    weights = torch.where(fallback.unsqueeze(-1), q, coef / torch.where(total > 0, total, torch.ones_like(total)))
    return update, weights, fallback


def _layer_blocks(d: int, layers, chunk_size: int | None, device) -> list[torch.Tensor]:
    """The authors' blocks (``RE`` ``ex_noregret`` / ``filterL2`` on each parameter tensor): each layer of
    ``layers`` (the whole vector when there are none) cut into ``chunk_size`` coordinates at a time, the last
    block of a layer shorter; returned as index tensors [blocks, length], one per block length."""
    spans = [(layer.offset, layer.numel) for layer in layers] or [(0, d)]
    by_length: dict[int, list[int]] = {}
    for offset, numel in spans:
        step = numel if chunk_size is None else chunk_size
        for start in range(0, numel, max(1, step)):
            by_length.setdefault(min(step, numel - start), []).append(offset + start)
    return [
        torch.tensor(starts, device=device).unsqueeze(-1) + torch.arange(length, device=device)
        for length, starts in by_length.items()
    ]


def performance_aware(updates: torch.Tensor, q: torch.Tensor, loss_gaps: torch.Tensor | None,
                      mu: float | None) -> PerformanceAware:
    """The PA block (§4, eqs. 7-9) on [n, d] updates with robust weights ``q`` [n] (Σ q = 1)."""
    q64 = q.to(device=updates.device, dtype=torch.float64).unsqueeze(0)
    gaps = None if loss_gaps is None else torch.nan_to_num(
        loss_gaps.to(device=updates.device, dtype=torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    update, weights, fallback = _pa_blocks(updates.unsqueeze(1), q64, gaps, mu)
    g_br = torch.einsum("n,nd->d", q64[0].to(updates.dtype), updates)
    g_pabr = p = None
    if mu is not None:
        p, coef = _pa_coefficients(q64, torch.zeros_like(q64[0]) if gaps is None else gaps, mu)
        p = p[0]
        g_pabr = torch.einsum("n,nd->d", coef[0].to(updates.dtype), updates)
    return PerformanceAware(update=update[0], g_br=g_br, g_pabr=g_pabr, p=p,
                            weights=weights[0].to(updates.dtype), fallback=bool(fallback[0]))


# ---------------------------------------------------------------------------------------------- rule


class PawbroflParams(AggregatorParams):
    estimator: Literal["filtering", "no_regret"] = Field(
        "filtering",
        description="robust base estimator: 'filtering' (Alg. 2) or 'no_regret' (Alg. 1 with the authors' Krum "
        "pre-filter); the authors' run script uses no_regret (ex_noregret)",
    )
    epsilon: float | None = Field(
        0.2,
        ge=0.0,
        lt=0.5,
        description="assumed corrupted fraction ε: at most ⌊2εm⌋ weight updates, ⌈εm⌉ Krum removals and the cap "
        "1/((1-ε)m') (no-regret); default 0.2 = the authors' experiments (eps = malnum/nworker = 20/100); "
        "None = num_byzantine / n from the round context",
    )
    xi: float = Field(
        XI_DEFAULT,
        ge=0.0,
        description="stop when the top eigenvalue of the q-weighted covariance is <= xi; default sqrt(20)*1e-5, "
        "the authors' rule eig^2 <= expansion*sigma^2 with expansion=20, sigma=1e-5 (simulate.py)",
    )
    mu: float | None = Field(
        0.01,
        gt=0.0,
        description="softmax temperature μ of the performance-aware weights (eq. 8); default 0.01 = the authors' "
        "train.sh; None = plain robust estimate g_BR (eq. 7)",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="run estimator and PA step separately on consecutive blocks of this many coordinates "
        "(the authors use 1000 per layer); None = the whole vector (pawbrofl_code: one block per layer)",
    )
    variant: Literal["paper", "pawbrofl_code"] = Field(
        "paper",
        description="paper: the method as written; pawbrofl_code: the authors' code (blocks per layer, each "
        "update weighed with a randomly permuted client's loss gap, their no-regret projection, c = 1 in the PA "
        "step after a first-check stop, μ doubled on overflow, +1e-8 in eq. 9)",
    )


@register
class Pawbrofl(Aggregator[PawbroflParams]):
    """PAwBRoFL (Fernando et al.): a robust weighting q of the clients by Filtering (Alg. 2) or No-Regret
    (Alg. 1), then performance-aware re-weighting by the softmax of q_i · gap_i / μ and rescaling to the
    robust estimate's norm (eqs. 8-9). See the module docstring for the details and choices.

    Hostile rows (``tolerated_rows``: floor(ε n), the corrupted fraction the estimators are run for). The
    Gram matrices are float64 around the coordinate-wise median, so rows up to float32's largest value
    neither overflow nor cancel the honest rows' differences; each weight update removes the row with the
    largest quasi-gradient (the top direction of Cov_q, which the hostile rows set), and ⌊2εm⌋ >= 2h updates
    remove h of them. Past the breakdown point hostile rows keep weight: g_BR (eq. 7) is a convex
    combination, finite (sums that overflow float32 are redone in float64), but eq. 9 rescales g_PABR to
    ||g_BR||, and where that vector exceeds float32 (rows near 3.4e38) the coordinate is +-inf and the
    server refuses the round."""

    name = "pawbrofl"
    Params = PawbroflParams
    needs = frozenset({"loss_gaps", "layers", "generator"})  # layers and generator: pawbrofl_code only

    @classmethod
    def tolerated_rows(cls, params: PawbroflParams, num_clients: int, num_byzantine: int) -> int:
        """floor(epsilon n): the corrupted fraction the estimators are run for (the declared f when
        ``epsilon`` is None); fewer than half in any case."""
        if params.epsilon is None:
            return min(num_byzantine, (num_clients - 1) // 2)
        return min(_floor(params.epsilon * num_clients), (num_clients - 1) // 2)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        prm = self.params
        n, d = updates.shape
        dev = updates.device
        eps = prm.epsilon
        if eps is None:
            eps = min(ctx.num_byzantine / max(n, 1), 0.5 - 1e-6)
        gaps = None
        nonfinite_gaps = 0
        if ctx.loss_gaps is not None:
            if ctx.loss_gaps.numel() != n:
                raise ValueError(f"pawbrofl: loss_gaps has {ctx.loss_gaps.numel()} entries for {n} updates")
            gaps = ctx.loss_gaps.to(device=dev, dtype=torch.float64).reshape(n)
            finite = torch.isfinite(gaps)
            nonfinite_gaps = int((~finite).sum())
            gaps = torch.where(finite, gaps, torch.zeros_like(gaps))

        if prm.variant == "pawbrofl_code":
            return self._authors_code(updates, ctx, eps, gaps, nonfinite_gaps)
        c = d if prm.chunk_size is None else max(1, min(prm.chunk_size, d))
        nb = max(1, math.ceil(d / c)) if d else 1
        pad = nb * c - d
        flat = updates if not pad else torch.nn.functional.pad(updates, (0, pad))
        xb = flat.reshape(n, nb, c)

        est = robust_weights(xb, prm.estimator, eps, prm.xi)
        out, w, fallback = _pa_blocks(xb, est.q, gaps, prm.mu)
        update = out.reshape(-1)[:d]

        lengths = torch.full((nb,), float(c), dtype=torch.float64, device=dev)
        lengths[-1] = d - (nb - 1) * c if d else 1.0
        return _result(update, [(est, w, fallback, lengths)], eps, nonfinite_gaps)

    def _authors_code(self, updates: torch.Tensor, ctx: RoundContext, eps: float, gaps: torch.Tensor | None,
                      nonfinite_gaps: int) -> AggregationResult:
        """``variant: pawbrofl_code``: the authors' blocks, gap pairing, projection and PA step (module
        docstring, "Paper text or authors' code")."""
        prm = self.params
        n, d = updates.shape
        if gaps is not None:  # SIM's client-id-ordered gaps beside the round's randomly ordered updates
            generator = generator_or_seeded(ctx.generator, int(ctx.round))
            gaps = gaps[torch.randperm(n, generator=generator).to(gaps.device)]
        update = torch.empty_like(updates[0])
        parts = []
        for index in _layer_blocks(d, ctx.layers, prm.chunk_size, updates.device):
            xb = updates[:, index]  # [n, blocks, length]
            est = robust_weights(xb, prm.estimator, eps, prm.xi, authors_projection=True)
            out, w, fallback = _pa_blocks_authors(xb, est, gaps, prm.mu)
            update[index] = out
            lengths = torch.full((index.shape[0],), float(index.shape[1]), dtype=torch.float64, device=updates.device)
            parts.append((est, w, fallback, lengths))
        return _result(update, parts, eps, nonfinite_gaps)


def _result(update: torch.Tensor, parts: list, eps: float, nonfinite_gaps: int) -> AggregationResult:
    """The rule's output from its blocks, given as (estimate, weights [B, n], fallback [B], lengths [B]) per
    batch of blocks: the weights averaged by block length, and the info of the module docstring."""
    q = torch.cat([est.q for est, *_ in parts])
    w = torch.cat([weights for _, weights, *_ in parts])
    lengths = torch.cat([length for *_, length in parts])
    n = q.shape[1]
    weights = (lengths / lengths.sum()) @ w
    kept = q > 0
    accepted = kept.any(dim=0)
    info = {
        "iterations": float(max(int(est.iterations.max()) for est, *_ in parts)),
        "top_eigenvalue": float(max(float(est.top_eigenvalue.max()) for est, *_ in parts)),
        "removed": float(n - int(accepted.sum())),
        "removed_mean": float((~kept).sum(dim=1).double().mean()),
        "krum_removed": float(parts[0][0].krum_removed),
        "blocks": float(q.shape[0]),
        "epsilon": float(eps),
        "pa_fallback": float(sum(int(fallback.sum()) for _, _, fallback, _ in parts)),
        "nonfinite_gaps": float(nonfinite_gaps),
    }
    return AggregationResult(update=update, weights=weights.to(update.dtype), accepted=accepted, info=info)
