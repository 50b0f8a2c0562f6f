"""Residual-based reweighting (Fu, Xie, Li & Chen, "Attack-Resistant Federated Learning with Residual-based
Reweighting", arXiv:1912.11464, §3.1, Algorithm 1).

Every coordinate n of the K updates gets a robust regression line through the points (rank, value); each
client's value gets a confidence from its residual to that line, as in one step of iteratively reweighted
least squares; far values are replaced by the line; and each client's model weight is its confidence summed
over coordinates, each coordinate counted in proportion to how much the clients disagree on it. The aggregate
is the weighted mean of the (corrected) updates. Per coordinate, with y the K values, step by step:

1. ``x_k`` = rank of client k's value, 0..K-1 (Alg. 1 line 2, as in the ``repeated_median`` rule and the
   authors' code). Below, ``xbar = (K - 1) / 2`` is the centre of the ranks.
2. Line ``yhat(x) = b0 + b1 x`` (``estimator``):

   * ``repeated_median`` (default; eqs. 1-2, Siegel 1982): ``b1 = med_i med_{j != i} (y_j - y_i) / (x_j -
     x_i)``; the intercept (``intercept``) as in the ``repeated_median`` rule of
     :mod:`aggregators.coordinate`: ``separate`` (default) is eq. 2, the median over i of the median over j
     of the pairwise lines, taken at the centred origin: the line's value at the centre is
     ``yhat(xbar) = med_i (y_i + m_i (xbar - x_i))`` with ``m_i`` the inner slope median of eq. 1 (exactly the
     ``repeated_median`` rule's output); ``hierarchical`` is ``med_i (y_i + b1 (xbar - x_i))``;
     ``median`` is ``med(y)``, the authors' code (``b0 = med(y) - b1 med(x)``).
   * ``theil_sen`` (§4.5, Table 7): ``b1`` = median over the K(K-1)/2 pairs i < j of their slopes;
     ``separate`` takes the median of the pairwise lines' values at the centre (eq. 2 with one median),
     ``hierarchical`` and ``median`` as above (scipy's ``theilslopes`` calls these "joint" and "separate").
   * ``median`` (§4.5, Table 7; the authors' ``median_reweight_algorithm_restricted``): the flat line
     ``yhat = med(y)`` (``intercept`` is not used).

3. Residuals ``r_k = y_k - yhat(x_k)`` (Alg. 1 line 4).
4. Scale, eqs. 3-4: ``tau = gamma * med_k |r_k| * (1 + 5 / (K - 1)) + eps`` with ``gamma = 1.4826``, the
   normal consistency constant of the MAD (the paper's text rounds it to 1.48; the authors' code uses 1.4826),
   and ``eps`` a tiny constant so that all-zero residuals (identical values) do not divide by zero.
5. Normalised residuals, eq. 5: ``e_k = r_k / tau``.
6. Leverage, eq. 7: ``h_kk``, the diagonal of the hat matrix ``X (X^T X)^-1 X^T`` of the design matrix with an
   intercept column, ``X = [1, x]`` (as the authors' code builds it; eq. 7 as printed omits the column, which
   would give the rank-0 client leverage 0). Ranks are a permutation of 0..K-1, so in closed form
   ``h_kk = 1/K + (x_k - xbar)^2 / S`` with ``S = sum_k (x_k - xbar)^2 = K (K^2 - 1) / 12``.
7. Confidence (``weighting``):

   * ``irls`` (default), eq. 6: ``w_k = sqrt(1 - h_kk) / e_k * Psi(e_k / sqrt(1 - h_kk))`` with
     ``Psi(t) = max(-Z, min(Z, t))``, ``Z = lam * sqrt(2 / K)``, ``lam = 2`` (§3.1: "We use lambda = 2").
     Since ``Psi(t) / t = min(1, Z / |t|)``, this is computed as ``w_k = min(1, Z sqrt(1 - h_kk) / |e_k|)``,
     which is also the limit 1 at ``e_k = 0`` (where eq. 6 reads 0/0; the authors' code sets NaN to 1).
   * ``gaussian`` (§4.5, Table 7): ``w_k = exp(-e_k^2 / (2 lam^2))``, a zero-mean Gaussian of the
     normalised residual with standard deviation ``lam`` (the authors' ``gaussian_zero_mean``; no leverage).

8. Extreme-value correction, eqs. 8-9: where ``w_k <= delta`` the confidence becomes 0 and the value becomes
   the line's, ``yhat(x_k)``; ``delta = 0.01`` as in the paper's experiments (§4.2: "with delta set to 0.01";
   Appendix Table 6 finds it robust over a range).
9. Disagreement, Alg. 1 line 11 / eq. 10: ``sigma_n`` = standard deviation over the K clients of the
   corrected confidences (after eq. 8, the order of Alg. 1 lines 10-11). The Bessel-corrected estimate is used,
   as ``torch.std`` in the authors' code; the convention is a constant factor common to all coordinates and
   cancels in the normalised weights.

Model weights, eq. 10: ``W_k = sum_n w_n^(k) sigma_n``; the global model, eq. 11:
``sum_k W_k / sum_i W_i * Mtilde_k`` with ``Mtilde_k`` the corrected local models.

**On updates.** The server holds theta and receives ``Delta_k = M_k - theta``. Every estimator above is
translation-equivariant in y (adding ``theta_n`` to all K values adds it to the line and leaves ranks, slopes,
residuals and so every confidence unchanged), so fitting on updates gives the same ``w`` and ``sigma`` and
the line ``yhat_Delta = yhat_M - theta_n``; eq. 9 applied on updates replaces ``Delta_kn`` by the update
line's value, i.e. ``Mtilde_kn - theta_n``. With weights ``p_k = W_k / sum W`` (sum 1),
``sum_k p_k Mtilde_k = theta + sum_k p_k Deltatilde_k``: the rule returns ``sum_k p_k Deltatilde_k``,
exactly eq. 11 expressed on updates.

Choices not fixed by the paper, all deliberate:

* **No disagreement.** If ``sum_k W_k = 0`` -- every ``sigma_n = 0``, e.g. identical updates -- the weights are
  uniform (1/K) and ``info["fallback_uniform"] = 1``; the update is the mean of the corrected updates. Never NaN.
* **Ties.** Equal values get distinct consecutive ranks (eq. 7 and the line need distinct x), which would make
  their confidences depend on the client order. Clients with equal values therefore share the mean of the
  eq. 6 confidences of their ranks and, if corrected, move to the mean of the line's values at those ranks
  (the line at their mid-rank). Without ties this changes nothing; with it, permuting clients permutes the
  weights and leaves the update unchanged.
* **Fewer than 3 clients.** With K <= 2 the line passes through every point (no residual information, and
  ``h_kk = 1`` for K = 2): the rule returns the mean with uniform weights (``fallback_uniform = 1``), which
  is what Algorithm 1 gives in the limit; ``check_setting`` refuses fewer than 3 clients per round.
* **accepted** (the paper selects nobody; this is for detection metrics): client k is accepted iff
  ``p_k > accept_fraction / K``, a fraction of the uniform weight (default one half).
* **Paper text or authors' code** (``variant``). The default, ``paper``, is Algorithm 1 as written. The
  authors' released code (fushuhao6/Attack-Resistant-Federated-Learning, ``FedAvg/averaging.py``:
  ``reweight_algorithm_restricted`` l.112-143, ``repeated_median`` l.537-562 and
  ``IRLS_aggregation_split_restricted`` l.300-351), with which the paper's tables were produced, departs
  from it in six places; ``variant: residual_code`` computes what that code computes:

  - the line passes through (xbar, med y), ``b0 = med(y) - b1 (K - 1) / 2`` (l.557-560), not eq. 2's
    intercept: the variant requires ``intercept: median``;
  - tau adds an absolute 1e-7 (l.133), not negligible for updates of that scale: it requires ``eps: 1e-7``;
  - M of eq. 4 is the median of ``|r|`` without its smallest value (l.132; with the line through the
    median, an odd K always has one residual 0);
  - a value is kept when ``w >= delta`` (l.141; eqs. 8-9: ``w > delta``);
  - the confidences below delta are not zeroed, and sigma is taken over the uncorrected confidences
    (l.137-139; Alg. 1 lines 10-11 zero them first): a corrected value still enters eq. 10 with its small
    confidence, and only its value moves to the line;
  - the model weights are divided by their maximum and squared before eq. 11 (l.338-339), so client k
    weighs ``W_k^2 / sum_i W_i^2``, not ``W_k / sum_i W_i``.

  Ties keep byzlab's treatment above (the code's unstable sort gives tied values arbitrary distinct ranks),
  and the code's per-layer shards of 2,000 coordinates change nothing (eq. 10 sums over all of them). The
  code's own ``repeated`` baseline (``Repeated_Median_Shard``, l.417-450) evaluates its line at the centre
  through the median, so it returns the coordinate-wise median: byzlab's ``median`` rule, not its
  ``repeated_median``.

**Hostile rows** (``tolerated_rows``: (n - 2) // 2, the repeated-median line's breakdown; see the
``repeated_median`` rule). Up to that count the line is fitted on honest slopes, a hostile value's residual
is huge, its confidence falls below delta and eq. 9 moves it onto the line, so it enters eq. 11 at the line's
value. Eq. 11 is computed as the weighted uncorrected sum plus the weighted moves to the line; where a move
is 2^20 times the aggregate (a 1e30 value moved to the line: float32 rounding of the two terms would leave
~1e23 behind) those coordinates are summed directly over the corrected values instead. Past the breakdown
point the line follows the hostile values, which then count at full confidence; being an extrapolation to
the centre, it can exceed the rows' range by up to (n - 1) / 2 times its width, and where that overflows
float32 (values near 3.4e38) the coordinate is +-inf or NaN and the server refuses the round.

``info``: ``weight_min``, ``weight_max`` (of ``p``), ``num_accepted``, ``corrected_fraction`` (share of the
K x d values replaced by the line, eq. 9), ``disagreement_fraction`` (share of coordinates with sigma > 0),
``fallback_uniform``.

Memory and speed: per coordinate the repeated median needs K (K - 1) slopes (Theil-Sen K (K - 1) / 2), so
coordinates are processed ``chunk_size`` at a time (default: as many as fit in 2**24 work elements, the slopes
plus about 16 per-client work tensors, as the ``repeated_median`` rule sizes its slopes). Everything is
vectorised over the chunk's coordinates in torch, on the updates' device (half precision is computed in
float32), except the repeated median's slopes on the CPU: those are computed and selected a few coordinates
at a time while in the cache, on torch's threads (:func:`numerics.repeated_median_slopes`, 4x faster), so a
chunk's slopes never exist at once; the chunk size stays what it was, since eq. 10 sums over a chunk's
coordinates in float32. The corrected values are kept sparsely (index and offset of each corrected entry),
since the weights that multiply them are known only after the last chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import (
    coordinate_chunks,
    lines_at_centre,
    median_last,
    mean_rows,
    repeated_median_slopes,
    sorted_median,
    weighted_rows,
)
from byzlab.aggregators.registry import register

GAMMA = 1.4826
"""Consistency constant of eq. 3 (the MAD of a standard normal is 1 / 1.4826)."""

CODE_TAU_EPS = 1e-7
"""The absolute term the authors' code adds to tau (``FedAvg/averaging.py`` l.133)."""

_WORK_PER_CLIENT = 16
"""[c, K] work tensors of :func:`residual_step`, counted when sizing the default chunk."""


class ResidualParams(AggregatorParams):
    estimator: Literal["repeated_median", "theil_sen", "median"] = Field(
        "repeated_median",
        description="regression line per coordinate: repeated median (eqs. 1-2, the paper's), Theil-Sen or the "
        "flat line at the median (alternatives of §4.5 / Appendix Table 7)",
    )
    intercept: Literal["separate", "hierarchical", "median"] = Field(
        "separate",
        description="line's value at the centre of the ranks: separate = eq. 2 (pairwise lines' values, as the "
        "repeated_median rule), hierarchical = med_i(y_i - b1 x_i), median = med(y) (the authors' code); "
        "not used by estimator=median",
    )
    weighting: Literal["irls", "gaussian"] = Field(
        "irls",
        description="confidence from the normalised residual e: irls = eq. 6 (Huber Psi clipped at "
        "Z = lam sqrt(2/K), with leverage); gaussian = exp(-e^2 / (2 lam^2)) (§4.5 / Table 7)",
    )
    lam: float = Field(
        2.0,
        gt=0.0,
        description="lambda: Psi's clip Z = lam * sqrt(2/K) for irls (paper: 2, §3.1); the Gaussian's standard "
        "deviation for gaussian",
    )
    delta: float = Field(
        0.01,
        ge=0.0,
        lt=1.0,
        description="eqs. 8-9: a value whose confidence is <= delta gets confidence 0 and is replaced by the "
        "line (paper's experiments: 0.01, §4.2)",
    )
    eps: float = Field(
        1e-30,
        gt=0.0,
        description="added to tau (eq. 3) so identical values (all residuals 0) do not divide by zero",
    )
    accept_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="a client is accepted iff its weight exceeds accept_fraction / K (a fraction of the uniform "
        "weight; 0: any positive weight); for detection metrics only, the weights are used as they are",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="coordinates processed at once (memory ~ chunk_size * (K^2 + 16 K) elements); default: as "
        "many as fit in 2**24 work elements",
    )
    variant: Literal["paper", "residual_code"] = Field(
        "paper",
        description="paper: Algorithm 1 as written; residual_code: the authors' FedAvg/averaging.py (M without "
        "the smallest |r|, keep w >= delta, confidences not zeroed and sigma before the correction, squared "
        "model weights; needs intercept: median and eps: 1e-7, the code's line and tau)",
    )

    @model_validator(mode="after")
    def _code_line_and_tau(self) -> "ResidualParams":
        if self.variant != "residual_code":
            return self
        if (self.estimator, self.weighting) != ("repeated_median", "irls"):
            raise ValueError(
                "variant 'residual_code' is the authors' repeated-median IRLS path (reweight_algorithm_restricted): "
                f"estimator: repeated_median, weighting: irls (got {self.estimator}, {self.weighting})"
            )
        if self.intercept != "median" or self.eps != CODE_TAU_EPS:
            raise ValueError(
                "variant 'residual_code' is the authors' averaging.py, whose line passes through the median and "
                f"whose tau adds {CODE_TAU_EPS:g}: set intercept: median and eps: {CODE_TAU_EPS:g} (got intercept: "
                f"{self.intercept}, eps: {self.eps:g})"
            )
        return self


@dataclass
class ResidualStep:
    """Per-coordinate quantities of Algorithm 1 for a block of c coordinates and K clients; [c, K] tensors are
    in client order (column k is client k)."""

    rank: torch.Tensor  # [c, K] x_k: rank of client k's value, 0..K-1 (Alg. 1 line 2)
    slope: torch.Tensor  # [c] b1 (eq. 1)
    intercept: torch.Tensor  # [c] b0: the line at rank 0 (eq. 2)
    line: torch.Tensor  # [c, K] b0 + b1 x_k
    residual: torch.Tensor  # [c, K] r_k (Alg. 1 line 4)
    tau: torch.Tensor  # [c] eq. 3
    e: torch.Tensor  # [c, K] eq. 5
    leverage: torch.Tensor  # [c, K] h_kk (eq. 7, intercept column)
    confidence: torch.Tensor  # [c, K] eq. 6 (or the Gaussian), tied values averaged
    kept: torch.Tensor  # [c, K] bool: confidence > delta
    weight: torch.Tensor  # [c, K] eq. 8: confidence, 0 where corrected (residual_code: not zeroed)
    corrected: torch.Tensor  # [c, K] eq. 9: the value, or the line where corrected
    sigma: torch.Tensor  # [c] standard deviation of ``weight`` over the clients (eq. 10)


def fit_line(
    z: torch.Tensor, estimator: str = "repeated_median", intercept: str = "separate"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope b1 [c] and value at the centre ``yhat(xbar)`` [c] of the line through the points (i, z[:, i]),
    i = 0..K-1, for values ``z`` [c, K] sorted along the last dimension (so x = rank)."""
    c, k = z.shape
    device, dtype = z.device, z.dtype
    x = torch.arange(k, device=device, dtype=dtype)
    centred = (k - 1) / 2 - x  # xbar - x_i
    if estimator == "median" or k == 1:
        return torch.zeros(c, device=device, dtype=dtype), sorted_median(z, dim=-1)
    if estimator == "repeated_median":
        inner = repeated_median_slopes(z)  # m_i [c, K], eq. 1's inner median (as the repeated_median rule)
        slope = median_last(inner)  # eq. 1
        if intercept == "separate":  # eq. 2 at the centred origin (see the repeated_median rule)
            return slope, median_last(lines_at_centre(z, inner, centred))
    elif estimator == "theil_sen":
        i, j = torch.triu_indices(k, k, 1, device=device)
        pair = (z[:, j] - z[:, i]) / (j - i).to(dtype)  # [c, K(K-1)/2]
        slope = median_last(pair)
        if intercept == "separate":  # median of the pairwise lines' values at the centre
            return slope, median_last(lines_at_centre(z[:, i], pair, centred[i]))
    else:
        raise ValueError(f"unknown estimator '{estimator}'")
    if intercept == "hierarchical":
        return slope, median_last(lines_at_centre(z, slope.unsqueeze(-1), centred))
    if intercept == "median":
        return slope, sorted_median(z, dim=-1)
    raise ValueError(f"unknown intercept '{intercept}'")


def leverage(k: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[K] diagonal of the hat matrix (eq. 7) of X = [1, x], x = 0..K-1: ``1/K + (x - xbar)^2 / S``."""
    x = torch.arange(k, device=device, dtype=dtype)
    sxx = k * (k * k - 1) / 12
    return 1 / k + (x - (k - 1) / 2) ** 2 / sxx


def _tie_mean(z: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """Each of ``values`` [c, K] averaged over the runs of equal entries of the sorted ``z`` [c, K]."""
    step = torch.zeros_like(z, dtype=torch.long)
    step[:, 1:] = (z[:, 1:] != z[:, :-1]).long()
    group = step.cumsum(dim=1)
    counts = torch.zeros_like(z).scatter_add_(1, group, torch.ones_like(z))
    return [(torch.zeros_like(v).scatter_add_(1, group, v) / counts.clamp(min=1)).gather(1, group) for v in values]


def residual_step(columns: torch.Tensor, params: ResidualParams | None = None) -> ResidualStep:
    """Algorithm 1 lines 2-11 for ``columns`` [c, K]: c coordinates (rows) of the K clients' values (K >= 3)."""
    p = params or ResidualParams()
    c, k = columns.shape
    z, order = torch.sort(columns, dim=-1, stable=True)  # z[:, r] is the value of rank r; order[:, r] its client
    slope, centre = fit_line(z, p.estimator, p.intercept)
    x = torch.arange(k, device=z.device, dtype=z.dtype)
    xbar = (k - 1) / 2
    line = centre.unsqueeze(-1) + slope.unsqueeze(-1) * (x - xbar)  # yhat at every rank
    residual = z - line
    code = p.variant == "residual_code"
    spread = residual.abs()
    if code:  # averaging.py l.132: the median of |r| without its smallest value
        spread = spread.sort(dim=-1).values[:, 1:]
    tau = GAMMA * median_last(spread) * (1 + 5 / (k - 1)) + p.eps  # eqs. 3-4
    e = residual / tau.unsqueeze(-1)  # eq. 5
    h = leverage(k, z.device, z.dtype).expand(c, k)
    if p.weighting == "irls":  # eq. 6: sqrt(1-h)/e * Psi(e/sqrt(1-h)) = min(1, Z sqrt(1-h) / |e|)
        z_clip = p.lam * math.sqrt(2 / k)
        confidence = (z_clip * torch.sqrt(1 - h) / e.abs()).clamp(max=1.0)
    else:
        confidence = torch.exp(-e.square() / (2 * p.lam**2))
    confidence, line_mid = _tie_mean(z, confidence, line)
    if code:  # averaging.py l.137-141: keep w >= delta, nothing zeroed, sigma over every confidence
        kept = confidence >= p.delta
        weight = confidence
    else:
        kept = confidence > p.delta  # eq. 8
        weight = torch.where(kept, confidence, torch.zeros_like(confidence))
    corrected = torch.where(kept, z, line_mid)  # eq. 9
    sigma = weight.std(dim=-1) if k > 1 else torch.zeros(c, device=z.device, dtype=z.dtype)

    def to_clients(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t).scatter_(1, order, t)

    rank = to_clients(x.to(torch.long).expand(c, k).contiguous())
    return ResidualStep(
        rank=rank,
        slope=slope,
        intercept=centre - slope * xbar,
        line=to_clients(line),
        residual=to_clients(residual),
        tau=tau,
        e=to_clients(e),
        leverage=to_clients(h.contiguous()),
        confidence=to_clients(confidence),
        kept=to_clients(kept),
        weight=to_clients(weight),
        corrected=to_clients(corrected),
        sigma=sigma,
    )


def _recompute_cancelled(update: torch.Tensor, work: torch.Tensor, weights: torch.Tensor,
                         corrections: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Eq. 11 recomputed directly, ``sum_k p_k Deltatilde_kn``, on the coordinates where "uncorrected sum plus
    weighted offsets" cancels catastrophically: a weighted move to the line 2^20 times larger than the
    aggregate (a hostile 1e30 moved to the line leaves float32 rounding of ~1e23 behind, and an offset can
    overflow). ``corrections``: the corrected entries' client rows, coordinates, offsets and corrected
    values. Where no coordinate qualifies (ordinary rounds) ``update`` is returned unchanged, bit for bit."""
    rows, cols, offsets, values = corrections
    moved = (weights[rows] * offsets).abs()
    suspect = moved > 2.0**20 * (update[cols].abs() + torch.finfo(update.dtype).tiny)
    if not bool(suspect.any()):
        return update
    redo = torch.unique(cols[suspect])
    corrected = work[:, redo].clone()  # [n, m]: the m coordinates' values, then the corrected entries set
    position = torch.full((work.shape[1],), -1, dtype=torch.long, device=work.device)
    position[redo] = torch.arange(redo.numel(), device=work.device)
    hit = position[cols] >= 0
    corrected[rows[hit], position[cols[hit]]] = values[hit]
    update = update.clone()
    update[redo] = weights @ corrected
    return update


@register
class ResidualReweighting(Aggregator[ResidualParams]):
    """Residual-based reweighting (Fu et al., Algorithm 1, eqs. 1-11); see the module docstring."""

    name = "residual"
    Params = ResidualParams

    @classmethod
    def tolerated_rows(cls, params: ResidualParams, num_clients: int, num_byzantine: int) -> int:
        """(n - 2) // 2 with the repeated-median line (its breakdown, see the ``repeated_median`` rule), fewer
        than half with the median line."""
        if params.estimator == "median":
            return (num_clients - 1) // 2
        return max(0, (num_clients - 2) // 2)

    @classmethod
    def check_setting(cls, params: ResidualParams, num_clients: int, num_byzantine: int) -> None:
        if num_clients < 3:
            raise ValueError(
                f"residual: a regression line over the clients' values needs n >= 3 updates per round, got "
                f"n={num_clients} (with 2 the line fits both and the rule is the plain mean)"
            )

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        n, d = updates.shape
        device = updates.device
        if n <= 2:
            weights = torch.full((n,), 1.0 / n, device=device, dtype=updates.dtype)
            return AggregationResult(
                update=mean_rows(updates),
                weights=weights,
                accepted=torch.ones(n, dtype=torch.bool, device=device),
                info={"weight_min": 1.0 / n, "weight_max": 1.0 / n, "num_accepted": float(n),
                      "corrected_fraction": 0.0, "disagreement_fraction": 0.0, "fallback_uniform": 1.0},
            )
        work = updates if updates.dtype in (torch.float32, torch.float64) else updates.float()
        # work elements per coordinate: the slopes (and their sort) plus ~16 [c, K] tensors of residual_step
        per_coordinate = (n * (n - 1) if p.estimator != "median" else 0) + _WORK_PER_CLIENT * n
        model_weight = torch.zeros(n, device=device, dtype=torch.float64)
        rows, cols, offsets, values = [], [], [], []
        corrected_count = 0
        disagreeing = 0
        for block in coordinate_chunks(d, per_coordinate, p.chunk_size):
            step = residual_step(work[:, block].T, p)
            model_weight += (step.weight * step.sigma.unsqueeze(-1)).sum(dim=0).to(torch.float64)  # eq. 10
            fixed = ~step.kept
            if bool(fixed.any()):
                where = fixed.nonzero()  # [m, 2]: (coordinate in block, client)
                cols.append(where[:, 0] + block.start)
                rows.append(where[:, 1])
                offsets.append((step.corrected - work[:, block].T)[fixed])
                values.append(step.corrected[fixed])
                corrected_count += where.shape[0]
            disagreeing += int((step.sigma > 0).sum())
        if p.variant == "residual_code":  # averaging.py l.338-339: W / max W, squared
            model_weight = model_weight.square()
        total = model_weight.sum()
        fallback = not bool(total > 0)
        if fallback:
            weights = torch.full((n,), 1.0 / n, device=device, dtype=torch.float64)
        else:
            weights = model_weight / total
        weights = weights.to(work.dtype)
        update = weighted_rows(weights, work)  # eq. 11 on the uncorrected updates ...
        if rows:  # ... plus each corrected entry's move to the line (eq. 9), weighted
            rows_t, cols_t, offsets_t = torch.cat(rows), torch.cat(cols), torch.cat(offsets)
            update.index_add_(0, cols_t, weights[rows_t] * offsets_t)
            update = _recompute_cancelled(update, work, weights, (rows_t, cols_t, offsets_t, torch.cat(values)))
        accepted = weights > p.accept_fraction / n
        return AggregationResult(
            update=update.to(updates.dtype),
            weights=weights.to(updates.dtype),
            accepted=accepted,
            info={
                "weight_min": float(weights.min()),
                "weight_max": float(weights.max()),
                "num_accepted": float(accepted.sum()),
                "corrected_fraction": corrected_count / (n * d) if d else 0.0,
                "disagreement_fraction": disagreeing / d if d else 0.0,
                "fallback_uniform": float(fallback),
            },
        )
