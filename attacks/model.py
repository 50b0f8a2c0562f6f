"""Model-poisoning attacks: the server-side adversary rewrites the malicious rows of a round's update matrix.

Conventions shared by every attack here (see :class:`attacks.base.ModelAttack`):

- an update is a row ``theta_i - theta_global`` of a float matrix; ``own`` [f, d] are the attackers' honestly
  trained updates, ``reference`` [m, d] the updates whose statistics the attacker uses (the benign updates
  when the threat model is omniscient, ``own`` when agnostic); the code never asks which;
- ``ctx.num_clients`` is n (all updates of the round), ``ctx.num_malicious`` is f;
- the result is [f, d] on ``own``'s device and dtype; f == 0 gives an empty [0, d];
- randomness only from ``ctx.generator`` (a CPU generator: draw on CPU, then move);
- everything is vectorised over coordinates; the gamma searches loop over gamma only (about 20 steps);
- an empty ``reference`` falls back to ``own`` (the agnostic view), so no attack divides by zero rows;
- a single reference row has standard deviation 0 (not NaN).

Sources: SDEA (Huang et al., "Self-Driven Entropy Aggregation for Byzantine-Robust Heterogeneous
Federated Learning", ICML 2024) §3.1 and Appendix D.2 (RanN, LIE, Min-Max eq. 10, Min-Sum
eq. 11), LASA Appendix 7.3 (Random, Noise, Sign-flip, Min-Max/Min-Sum and its stealthy variant,
TailoredTrMean, LIE, ByzMean), the residual-based-reweighting paper §4.4 (Gaussian noise attack); and the
original attack papers: Baruch et al., NeurIPS 2019 (LIE); Shejwalkar & Houmansadr, NDSS 2021 (Min-Max,
Min-Sum, AGR-tailored trimmed mean); Xu et al. (SignGuard, ByzMean); Xie et al., UAI 2020 (IPM).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, TypeVar

import torch
from pydantic import Field, ValidationInfo, field_validator

from byzlab.attacks.base import AttackContext, AttackParams, ModelAttack
from byzlab.attacks.registry import attack_class, build, register, validate_params
from byzlab.orchestrator.core.columns import sorted_columns

Perturbation = Literal["unit_vec", "std", "sign"]


# ----------------------------------------------------------------------------------------------- helpers


def _empty(own: torch.Tensor) -> torch.Tensor:
    return own.new_zeros((0, own.shape[-1]))


def _reference(own: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The rows statistics are taken over, on ``own``'s device and dtype (``own`` itself if none given)."""
    ref = reference if reference.shape[0] > 0 else own
    return ref.to(device=own.device, dtype=own.dtype)


Variant = Literal["paper", "lasa_code"]
CodeVariant = Literal["paper", "lasa_code", "sdea_code"]
LASA_CODE = (
    "lasa_code: the LASA authors' released code (JiiahaoXU/LASA, algorithms/attack/), which takes every statistic "
    "from the attackers' own updates only, whatever the attacker knows"
)
SDEA_CODE = (
    "sdea_code: the SDEA authors' MarsFL code (WenkeHuang/MarsFL, Attack/byzantine/utils.py), which writes the "
    "crafted update as the malicious model's weights, so the attacker's update is that vector minus the global model"
)


def _written_as_weights(vector: torch.Tensor, own: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
    """The f rows of attackers whose model parameters were overwritten by ``vector`` [d], a crafted *update*
    (the MarsFL code's ``row_into_parameters(mal_update, net.parameters())``): ``vector - global`` on the
    parameters' coordinates; buffers, which that code does not write, keep each attacker's own update.
    (With buffers between parameters, the code fills the parameters from the start of a vector in
    state_dict order, which shifts them; byzlab gives every parameter its own coordinates.)"""
    if ctx.global_params is None:
        raise ValueError("variant 'sdea_code' needs the global model (AttackContext.global_params)")
    written = vector.to(own) - ctx.global_params.to(own)
    if not ctx.layers:
        return _repeat(written, own.shape[0])
    rows = own.clone()
    for layer in ctx.layers:
        if layer.kind != "buffer":
            rows[:, layer.slice] = written[layer.slice]
    return rows


def _seen(own: torch.Tensor, reference: torch.Tensor, variant: str) -> torch.Tensor:
    """The rows an attack takes its statistics from: the reference (:func:`_reference`) as the papers write
    it, or the attackers' own updates as the LASA authors' code does (``variant: lasa_code``)."""
    return own if variant == "lasa_code" else _reference(own, reference)


def _std(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise sample standard deviation (Bessel-corrected, as ``torch.std``'s default and the
    NDSS'21 authors' code); 0 for a single row instead of NaN."""
    if rows.shape[0] < 2:
        return torch.zeros_like(rows[0])
    return rows.std(dim=0, correction=1)


def _repeat(vector: torch.Tensor, f: int) -> torch.Tensor:
    """All f attackers send the same vector (a fresh [f, d] tensor, not a view)."""
    return vector.unsqueeze(0).repeat(f, 1)


def _normal(shape: tuple[int, ...], ctx: AttackContext, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from the round's CPU generator, moved to ``like``'s device and dtype."""
    draw_dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    z = torch.randn(shape, generator=ctx.generator, dtype=draw_dtype, device="cpu")
    return z.to(device=like.device, dtype=like.dtype)


def _perturbation(kind: str, mean: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The perturbation direction ∇p of Shejwalkar & Houmansadr (NDSS'21 §IV-A; SDEA eqs. 10–11):
    ``unit_vec`` = -mean/||mean|| (inverse unit vector), ``std`` = -std (inverse standard deviation),
    ``sign`` = -sign(mean) (inverse sign). A zero mean gives a zero unit vector."""
    if kind == "unit_vec":
        length = torch.linalg.vector_norm(mean)
        return -mean / length if float(length) > 0 else torch.zeros_like(mean)
    if kind == "std":
        return -_std(rows)
    if kind == "sign":
        return -torch.sign(mean)
    raise ValueError(f"unknown perturbation '{kind}'")


def gamma_search(accept: Callable[[float], bool], gamma_init: float, tol: float) -> float:
    """The authors' halving search for the scaling coefficient γ (Shejwalkar & Houmansadr, NDSS'21: the
    γ-optimisation algorithm of the paper and its released code): start at γ = γ_init with step γ_init/2; after each test move up by the step if γ was
    accepted, down otherwise; halve the step; stop once the step is below ``tol``. Returns the last
    accepted γ, or 0.0 if none was (γ never exceeds 2·γ_init)."""
    gamma, step, best = gamma_init, gamma_init / 2.0, 0.0
    while True:
        ok = accept(gamma)
        if ok:
            best = gamma
        gamma = gamma + step if ok else gamma - step
        if step < tol:
            return best
        step /= 2.0


def trimmed_mean(rows: torch.Tensor, trim: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al., 2018): drop the ``trim`` largest and ``trim`` smallest
    values of every coordinate and average the rest; ``trim`` is clamped so at least one value remains."""
    k = max(0, min(trim, (rows.shape[0] - 1) // 2))
    ordered = torch.sort(rows, dim=0).values
    return ordered[k : rows.shape[0] - k].mean(dim=0)


class _TrimmedMeanOfCopies:
    """``trimmed_mean(f copies of v ∪ reference, trim)`` for many candidates v, with the reference sorted once.

    Inserting f copies of v[j] into the sorted column j of the reference gives the sorted column of the union:
    the r_j reference values below v[j], then the f copies, then the rest. So union row t is reference row t
    where t < r_j, v[j] where t < r_j + f, and reference row t - f otherwise: the rows the trimmed mean keeps
    (t in [k, n - k)) are selected from two fixed blocks of the sorted reference and v, in O(n) per coordinate,
    instead of sorting the (f + m) x d values again (the γ searches test ~20 candidates). They are the same
    values in the same order as ``torch.sort(...)[trim : n - trim]`` (equal values are interchangeable), so
    the mean, taken the same way, is bitwise the same.

    A coordinate whose copies are all trimmed (k >= f and r_j + f <= k or r_j >= n - k) keeps reference rows
    that do not depend on v: [k - f, n - k - f) or [k, n - k). Their two means are taken once, so a candidate
    costs O(n) only on the coordinates whose copies are kept ("active": decided by comparing v with two rows
    of the sorted reference, with no search) and O(1) elsewhere, plus one mean over the kept rows."""

    def __init__(self, reference: torch.Tensor, f: int, trim: int) -> None:
        ordered = sorted_columns(reference)
        m = ordered.shape[0]
        n = f + m
        k = max(0, min(trim, (n - 1) // 2))
        self.ordered, self.f = ordered, f
        self.rows = torch.arange(k, n - k, device=reference.device, dtype=torch.int32)[:, None]  # the kept rows t
        if k >= f:  # the default (trim = f): both blocks are views of the sorted reference
            self.below_block, self.above_block = ordered[k : n - k], ordered[k - f : n - k - f]
            self.all_below = (ordered[k - f], self.above_block.mean(dim=0))  # v <= this row: r_j <= k - f
            self.all_above = (ordered[n - k - 1], self.below_block.mean(dim=0))  # v > this row: r_j >= n - k
        else:  # copies are always kept; rows past either end are never selected: any row stands in for them
            self.below_block = ordered[self.rows[:, 0].clamp(max=m - 1)]
            self.above_block = ordered[(self.rows[:, 0] - f).clamp(min=0)]
            self.all_below = self.all_above = None
        # The kept rows, averaged at full width whatever the active coordinates: a mean over dim 0 of a narrower
        # matrix may take another reduction path (and other bits). Inactive columns hold stale values, unused.
        self.kept = self.above_block.clone()

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        if self.all_below is None:
            self._fill_kept(vector, slice(None))
            return self.kept.mean(dim=0)
        (low_row, low_mean), (high_row, high_mean) = self.all_below, self.all_above
        below, above = vector <= low_row, vector > high_row
        out = torch.where(below, low_mean, high_mean)
        active = (~below & ~above).nonzero().squeeze(1)
        if active.numel():
            self._fill_kept(vector[active], active)
            out[active] = self.kept.mean(dim=0)[active]
        return out

    def _fill_kept(self, vector: torch.Tensor, columns: torch.Tensor | slice) -> None:
        """Write the kept rows of the union with copies of ``vector`` into ``columns`` of ``self.kept``."""
        sorted_columns = self.ordered[:, columns].T.contiguous()  # each coordinate's sorted values, for the search
        below = torch.searchsorted(sorted_columns, vector[:, None], out_int32=True).T  # r_j, values below v[j]
        kept = torch.where(self.rows < below + self.f, vector, self.above_block[:, columns])
        self.kept[:, columns] = torch.where(self.rows < below, self.below_block[:, columns], kept)


# ----------------------------------------------------------------------------------------- naive attacks


class RandomParams(AttackParams):
    variant: Literal["gaussian", "initial_model"] = Field(
        "gaussian",
        description="gaussian: each row ~ N(0, sigma^2 I) (LASA App. 7.3); initial_model: send the update "
        "that moves the global model back to the round-0 model (SDEA's RanN code)",
    )
    sigma: float = Field(0.5, ge=0, allow_inf_nan=False, description="std of the gaussian rows (LASA App. 7.3: 0.5)")


@register
class RandomAttack(ModelAttack[RandomParams]):
    """Random / RanN attack: every malicious row is replaced by noise.

    ``gaussian``: β_i ~ N(0, σ²I_d), σ = 0.5 (LASA Appendix 7.3, "Random attack"; SDEA Appendix D.2, RanN:
    "∇_k = *, normally Gaussian distribution or default initialization"). ``initial_model``: the "default
    initialization" reading of SDEA's RanN, as its code does: every attacker sends θ_0 - θ_t (``ctx.initial_params
    - ctx.global_params``), the update that resets the global model to the round-0 model.
    """

    name = "random"
    Params = RandomParams

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        f, d = own.shape
        if f == 0:
            return _empty(own)
        if self.params.variant == "gaussian":
            return self.params.sigma * _normal((f, d), ctx, own)
        if ctx.initial_params is None or ctx.global_params is None:
            raise ValueError("attack 'random' variant 'initial_model' needs ctx.initial_params and ctx.global_params")
        back = ctx.initial_params.reshape(-1) - ctx.global_params.reshape(-1)
        if back.numel() != d:
            raise ValueError(f"attack 'random': initial/global params have {back.numel()} entries, updates have {d}")
        return _repeat(back.to(device=own.device, dtype=own.dtype), f)


class NoiseParams(AttackParams):
    sigma: float = Field(
        0.5, ge=0, allow_inf_nan=False,
        description="std of the added gaussian noise (LASA App. 7.3: the random attack's N(0, 0.5^2))",
    )


@register
class NoiseAttack(ModelAttack[NoiseParams]):
    """Noise attack: own + N(0, σ²I). LASA Appendix 7.3: "perturb benign updates by adding Gaussian noise
    used in random attacks", i.e. μ = 0, σ = 0.5 (the default here comes from LASA)."""

    name = "noise"
    Params = NoiseParams

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        if own.shape[0] == 0:
            return _empty(own)
        return own + self.params.sigma * _normal(tuple(own.shape), ctx, own)


class GaussianScaleParams(AttackParams):
    s: float = Field(
        2.0, ge=0, allow_inf_nan=False,
        description="std of the multiplicative factor eps ~ N(1, s^2); the residual-reweighting paper §4.4 / "
        "Table 4 evaluates s in {0, 1, 2, 3} (0%-300%); default 2 = the middle of its non-zero grid",
    )
    apply_to: Literal["update", "model"] = Field(
        "update",
        description="update: eps multiplies each coordinate of the update; model: eps multiplies each parameter "
        "of the local model theta_global + update (the paper's wording), the update is then recomputed",
    )


@register
class GaussianScaleAttack(ModelAttack[GaussianScaleParams]):
    """Gaussian noise attack of the residual-based-reweighting paper (Fu et al.), §4.4: "multiplying each
    parameter by a scale ε sampled from a Gaussian distribution with a mean of 1"; Table 4 uses standard
    deviations 0%, 100%, 200%, 300% with 10 of 100 participants corrupted. Each coordinate of each malicious
    row gets its own ε ~ N(1, s²).

    The paper's clients upload models, so its ε multiplies parameters; ``apply_to="model"`` does exactly that
    (β = ε ⊙ (θ_t + u) - θ_t, needs ``ctx.global_params``); the default ``"update"`` multiplies the update u.
    """

    name = "gaussian_scale"
    Params = GaussianScaleParams

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        if own.shape[0] == 0:
            return _empty(own)
        eps = 1.0 + self.params.s * _normal(tuple(own.shape), ctx, own)
        if self.params.apply_to == "update":
            return eps * own
        if ctx.global_params is None:
            raise ValueError("attack 'gaussian_scale' apply_to 'model' needs ctx.global_params")
        theta = ctx.global_params.reshape(1, -1).to(device=own.device, dtype=own.dtype)
        return eps * (theta + own) - theta


class SignFlipParams(AttackParams):
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="the attackers send -scale * own update")


@register
class SignFlipAttack(ModelAttack[SignFlipParams]):
    """Sign-flip attack: β_i = -scale · Δ_i, flipping the sign of every coordinate of the attacker's honest
    update (LASA Appendix 7.3; scale 1 there)."""

    name = "sign_flip"
    Params = SignFlipParams

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return -self.params.scale * own


# ---------------------------------------------------------------------------------------------------- LIE


LIE_CODE_Z = 0.5
"""The z of LIE in the LASA authors' code (``lie_attack(..., z=0.5)``)."""


class LieParams(AttackParams):
    z: float | None = Field(
        None, allow_inf_nan=False,
        description="the number of standard deviations; None = Baruch et al.'s z_max = Phi^-1((n - s)/n) with "
        "s = floor(n/2 + 1) - f (LASA App. 7.3 fixes z = 0.5 instead); with variant lasa_code, None = 0.5",
    )
    variant: CodeVariant = Field(
        "paper", description=f"paper: LASA App. 7.3 / Baruch et al. as written; {LASA_CODE} (lie.py, lie_attack), "
        f"with z = 0.5 unless given; {SDEA_CODE}, with mu + z sigma and z = exp(-s^2) sqrt(2 pi) / 2 unless given")


@register
class LieAttack(ModelAttack[LieParams]):
    """A Little Is Enough (Baruch et al., NeurIPS 2019; SDEA Appendix D.2; LASA Appendix 7.3).

    All attackers send β = μ - z·σ, with μ, σ the coordinate-wise mean and standard deviation of
    ``reference`` (LASA App. 7.3: (β)_j = μ_j - z·σ_j). σ is the sample (Bessel-corrected, ``torch.std``)
    standard deviation, as in the NDSS'21 authors' re-implementation; one reference row gives σ = 0, so
    β = that row.

    ``z = None`` derives Baruch et al.'s z_max: the attackers need s = ⌊n/2 + 1⌋ - f benign "supporters"
    (so that together with the f attackers they form a majority), and z_max = Φ⁻¹((n - s)/n), the largest z
    with Φ(z) < (n - s)/n (Baruch et al.'s attack algorithm). For f ≥ 1 this is ≥ 0. Degenerate case: when the attackers
    alone form a majority (f ≥ ⌊n/2 + 1⌋, so s ≤ 0), (n - s)/n ≥ 1 and Φ⁻¹ would be +∞; the attackers then
    need no supporter and s is clamped to 1, i.e. z = Φ⁻¹((n - 1)/n); with n ≤ 1 there is no spread to
    exploit and z = 0.

    ``variant: lasa_code`` is the LASA authors' released code (JiiahaoXU/LASA, ``algorithms/attack/lie.py``,
    ``lie_attack``): μ and σ are those of the attackers' own f updates, whatever the attacker knows, and
    z = 0.5 unless given. With one attacker that code's ``torch.std`` is NaN and so is what it sends; here
    σ = 0 and the attacker sends its own update.

    ``variant: sdea_code`` is the SDEA authors' MarsFL code (WenkeHuang/MarsFL, ``Attack/byzantine/utils.py``,
    ``lie_attack``): μ and σ of the benign updates (as written), the vector μ **+** zσ with
    z = exp(-s²) / (2 / sqrt(2π)), s = ⌊n/2⌋ + 1 - f (not Φ⁻¹) unless z is given, written as the malicious
    model's weights (:func:`_written_as_weights`).
    """

    name = "lie"
    Params = LieParams

    @staticmethod
    def derived_z(n: int, f: int) -> float:
        """Baruch et al.'s z_max = Φ⁻¹((n - s)/n), s = ⌊n/2 + 1⌋ - f, with s clamped to [1, n - 1]."""
        if n <= 1:
            return 0.0
        s = math.floor(n / 2 + 1) - f
        s = min(max(s, 1), n - 1)
        from scipy.stats import norm  # here, not at the top: scipy.stats takes ~1 s to import in every actor

        return float(norm.ppf((n - s) / n))

    @staticmethod
    def sdea_code_z(n: int, f: int) -> float:
        """The MarsFL code's z = exp(-s²) / (2 / sqrt(2π)), s = n // 2 + 1 - f."""
        s = n // 2 + 1 - f
        return math.exp(-(s**2)) / (2 / math.sqrt(2 * math.pi))

    def z_for(self, ctx: AttackContext) -> float:
        if self.params.z is not None:
            return self.params.z
        if self.params.variant == "lasa_code":
            return LIE_CODE_Z
        if self.params.variant == "sdea_code":
            return self.sdea_code_z(ctx.num_clients, ctx.num_malicious)
        return self.derived_z(ctx.num_clients, ctx.num_malicious)

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        f = own.shape[0]
        if f == 0:
            return _empty(own)
        ref = _seen(own, reference, self.params.variant)
        if self.params.variant == "sdea_code":
            return _written_as_weights(ref.mean(dim=0) + self.z_for(ctx) * _std(ref), own, ctx)
        return _repeat(ref.mean(dim=0) - self.z_for(ctx) * _std(ref), f)


# ------------------------------------------------------------------------------------- Min-Max / Min-Sum


class _DistanceParams(AttackParams):
    perturbation: Perturbation = Field(
        "std",
        description="the perturbation direction: unit_vec = -mean/||mean||, std = -std, sign = -sign(mean) "
        "(NDSS'21; the authors' experiments use std)",
    )
    gamma_init: float = Field(10.0, gt=0, allow_inf_nan=False, description="initial gamma of the search (NDSS'21: 10)")
    tol: float = Field(
        1e-5, gt=0, allow_inf_nan=False, description="the search stops once its step is below tol (NDSS'21: 1e-5)"
    )
    bound: Literal["max", "min"] = Field(
        "max",
        description="max: the papers' bound (max over benign updates); min: the stealthy variant bounded by the "
        "minimum over benign updates instead (LASA App. 7.3)",
    )
    variant: CodeVariant = Field(
        "paper", description=f"paper: NDSS'21 / LASA App. 7.3 as written; {LASA_CODE} (agr.py: agrAgnosticMinMax, "
        f"agrAgnosticMinSum, both bounded by the max); {SDEA_CODE} (min_sum: with bound min, as that code)")


class _MinSumParams(_DistanceParams):
    """Min-Sum's parameters: the distance attacks', with the MarsFL code's bound required by its variant."""

    @field_validator("variant")
    @classmethod
    def _code_bound(cls, value: str, info: ValidationInfo) -> str:
        if value == "sdea_code" and info.data.get("bound") != "min":
            raise ValueError("variant 'sdea_code' is the MarsFL code's Min-Sum, bounded by the smallest sum: "
                             "set bound: min")
        return value


DistanceParams = TypeVar("DistanceParams", bound=_DistanceParams)


class _DistanceAttack(ModelAttack[DistanceParams]):
    """Shared machinery of Min-Max and Min-Sum (Shejwalkar & Houmansadr, NDSS'21, "AGR-agnostic attacks";
    SDEA Appendix D.2, eqs. 10–11; LASA Appendix 7.3).

    The malicious update is ∇m = mean(reference) + γ·∇p, and γ is the largest value the halving search
    (:func:`gamma_search`, γ_init = 10, τ = 1e-5) finds that keeps ∇m within the distance bound of the
    subclass. All attackers send the same ∇m (NDSS'21; LASA: "keep the updates of all malicious clients the
    same").

    Distances without any [m, m, d] tensor: with x_i = ∇_i - mean (centred rows), the Gram matrix G = X Xᵀ
    gives all pairwise ||∇_i - ∇_j||² = G_ii + G_jj - 2G_ij, and for the candidate
    ||∇m - ∇_i||² = ||γ∇p - x_i||² = G_ii - 2γ⟨x_i, ∇p⟩ + γ²||∇p||², so each γ costs O(m). Centring keeps
    the Gram trick accurate; the scalar algebra runs in float64.
    """

    Params = _DistanceParams

    def _bound_holds(self, a: torch.Tensor, b: torch.Tensor, c: float, d2: torch.Tensor) -> Callable[[float], bool]:
        """An oracle γ -> whether ∇m(γ) meets the bound; a_i = ||x_i||², b_i = ⟨x_i, ∇p⟩, c = ||∇p||², d2 the
        pairwise squared distances of the reference rows (all float64)."""
        raise NotImplementedError

    def craft_with_gamma(
        self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext | None = None
    ) -> tuple[torch.Tensor, float]:
        """The malicious vector ∇m [d] and the γ found (0.0 when no γ > 0 satisfies the bound)."""
        ref = _seen(own, reference, self.params.variant)
        mean = ref.mean(dim=0)
        direction = _perturbation(self.params.perturbation, mean, ref)
        x = ref - mean
        gram = (x @ x.T).double()
        a = torch.diagonal(gram)  # ||x_i||^2
        d2 = (a[:, None] + a[None, :] - 2.0 * gram).clamp_min(0.0)  # pairwise squared distances
        b = (x @ direction).double()  # <x_i, p>
        c = float(torch.dot(direction, direction).double())  # ||p||^2
        gamma = gamma_search(self._bound_holds(a, b, c, d2), self.params.gamma_init, self.params.tol)
        return mean + gamma * direction, gamma

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        f = own.shape[0]
        if f == 0:
            return _empty(own)
        vector, _ = self.craft_with_gamma(own, reference, ctx)
        if self.params.variant == "sdea_code":
            return _written_as_weights(vector, own, ctx)
        return _repeat(vector, f)


@register
class MinMaxAttack(_DistanceAttack[_DistanceParams]):
    """Min-Max (NDSS'21 "Min-Max"; SDEA Appendix D.2, eq. 10; LASA Appendix 7.3):

        argmax_γ  max_{i} ||∇m - ∇_i||  ≤  max_{i,j} ||∇_i - ∇_j||,   ∇m = mean + γ∇p,

    i, j over the reference updates: the malicious update is no farther from any benign update than the two
    most distant benign updates are from each other. ``bound="min"`` is the stealthy analogue of LASA's
    Min-Sum variant: the right side becomes min_i max_j ||∇_i - ∇_j|| (no farther out than the most central
    benign update's farthest neighbour). γ = 0 (the mean) always meets the ``max`` bound, since the mean is
    within max_j ||∇_i - ∇_j|| of every ∇_i.
    """

    name = "min_max"

    def _bound_holds(self, a: torch.Tensor, b: torch.Tensor, c: float, d2: torch.Tensor) -> Callable[[float], bool]:
        rows_max = d2.max(dim=1).values
        limit = float(rows_max.max() if self.params.bound == "max" else rows_max.min())

        def holds(gamma: float) -> bool:
            return float((a - 2.0 * gamma * b + gamma * gamma * c).max()) <= limit

        return holds


@register
class MinSumAttack(_DistanceAttack[_MinSumParams]):
    """Min-Sum (NDSS'21 "Min-Sum"; SDEA Appendix D.2, eq. 11; LASA Appendix 7.3):

        argmax_γ  Σ_i ||∇m - ∇_i||²  ≤  max_i Σ_j ||∇_i - ∇_j||²,   ∇m = mean + γ∇p,

    sums of *squared* distances as in NDSS'21 and SDEA's text (SDEA's printed eq. 11 drops the squares).
    ``bound="min"``: LASA's stealthy Min-Sum, bounded by min_i Σ_j ||∇_i - ∇_j||² instead (this is also what
    the NDSS'21 authors' released code does). With centred rows Σ_i x_i = 0, so the left side is
    Σ_i ||x_i||² + m γ² ||∇p||² and the search converges to sqrt((bound - Σ_i ||x_i||²) / (m ||∇p||²)) (0 when
    the bound is below Σ_i ||x_i||²).

    ``variant: sdea_code`` (with ``bound: min``, as the SDEA authors' MarsFL code bounds it) writes the vector
    as the malicious model's weights (:func:`_written_as_weights`); Min-Max's ``sdea_code`` likewise, with
    its max bound.
    """

    name = "min_sum"
    Params = _MinSumParams

    def _bound_holds(self, a: torch.Tensor, b: torch.Tensor, c: float, d2: torch.Tensor) -> Callable[[float], bool]:
        scores = d2.sum(dim=1)
        limit = float(scores.max() if self.params.bound == "max" else scores.min())
        m = a.shape[0]
        sum_a, sum_b = float(a.sum()), float(b.sum())

        def holds(gamma: float) -> bool:
            return sum_a - 2.0 * gamma * sum_b + m * gamma * gamma * c <= limit

        return holds


# ---------------------------------------------------------------------------- AGR-tailored trimmed mean


class TailoredTrMeanParams(AttackParams):
    perturbation: Perturbation = Field(
        "std", description="the perturbation direction, as for min_max (the NDSS'21 authors' trimmed-mean runs use std)"
    )
    trim: int | None = Field(
        None, ge=0,
        description="values trimmed from each end of every coordinate by the simulated trimmed mean; "
        "None = f, the number of attackers (NDSS'21 code: tr_mean(updates, n_attackers))",
    )
    gamma_init: float = Field(10.0, gt=0, allow_inf_nan=False, description="initial gamma of the search (NDSS'21: 10)")
    tol: float = Field(
        1e-5, gt=0, allow_inf_nan=False, description="the search stops once its step is below tol (NDSS'21: 1e-5)"
    )
    variant: Variant = Field("paper", description=f"paper: NDSS'21 / LASA App. 7.3 as written; {LASA_CODE} "
                             "(agr.py, agrTailoredTrmean), simulating max(1, f^2 // n) copies and trimming as many")


@register
class TailoredTrMeanAttack(ModelAttack[TailoredTrMeanParams]):
    """AGR-tailored attack on trimmed mean (Shejwalkar & Houmansadr, NDSS'21, "AGR-tailored attacks" on
    Trimmed-mean; LASA Appendix 7.3 "TailoredTrmean": maximise the distance between the simple average and
    the trimmed mean). This is the authors' own attack, not Fang et al.'s (USENIX'20)
    full-knowledge trim attack, which NDSS'21 only uses as a baseline.

    All f attackers send ∇m = mean(reference) + γ·∇p, with γ chosen by the same halving search as Min-Max to
    maximise the deviation of the trimmed mean from the benign mean:

        argmax_γ  || TrMean_k(∇m × f ∪ reference) - mean(reference) ||,

    where TrMean_k is the coordinate-wise trimmed mean dropping k = ``trim`` (default f) values at each end,
    simulated on the f copies of ∇m and the reference rows (the benign updates when omniscient). The search's
    oracle is the authors' (released code, ``our_attack_trmean``): a candidate γ is accepted when its objective
    is larger than that of the previously tested γ; the last accepted γ is used (0 if none).

    ``variant: lasa_code`` is the LASA authors' ``agrTailoredTrmean``: the reference is the attackers' own f
    updates, and the simulated trimmed mean runs over c = max(1, f² // n) copies of ∇m and those f updates,
    trimming c values at each end (``trim`` overrides the trimming, not the copies). The authors' code takes f
    from its configured number of attackers per round; here it is the round's f, the same when every round
    samples that many attackers.
    """

    name = "tailored_trmean"
    Params = TailoredTrMeanParams

    def copies(self, f: int, ctx: AttackContext | None) -> int:
        """How many copies of ∇m the simulated trimmed mean holds (and trims by default): f as written;
        max(1, f² // n) in the LASA authors' code."""
        if self.params.variant == "lasa_code":
            if ctx is None:
                raise ValueError("tailored_trmean variant 'lasa_code' needs the round's n (an AttackContext)")
            return max(1, f * f // ctx.num_clients)
        return f

    def objective(self, vector: torch.Tensor, reference: torch.Tensor, copies: int) -> float:
        """||TrMean_k(copies of vector ∪ reference) - mean(reference)||, by sorting all the rows (the
        definition; :class:`_TrimmedMeanOfCopies` gives the same numbers without sorting per candidate)."""
        rows = torch.cat([_repeat(vector, copies), reference], dim=0)
        k = copies if self.params.trim is None else self.params.trim
        return float(torch.linalg.vector_norm(trimmed_mean(rows, k) - reference.mean(dim=0)))

    def craft_with_gamma(
        self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext | None = None
    ) -> tuple[torch.Tensor, float]:
        copies = self.copies(own.shape[0], ctx)
        ref = _seen(own, reference, self.params.variant)
        mean = ref.mean(dim=0)
        direction = _perturbation(self.params.perturbation, mean, ref)
        simulated = _TrimmedMeanOfCopies(ref, copies, copies if self.params.trim is None else self.params.trim)
        previous = [-math.inf]

        def increased(gamma: float) -> bool:
            loss = float(torch.linalg.vector_norm(simulated(mean + gamma * direction) - mean))
            ok = loss > previous[0]
            previous[0] = loss
            return ok

        gamma = gamma_search(increased, self.params.gamma_init, self.params.tol)
        return mean + gamma * direction, gamma

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        f = own.shape[0]
        if f == 0:
            return _empty(own)
        vector, _ = self.craft_with_gamma(own, reference, ctx)
        return _repeat(vector, f)


# ------------------------------------------------------------------------------------------------ ByzMean


BYZMEAN_CODE_Z = 0.5
"""The z of the first group's LIE vector in the LASA authors' code (``byzmean_attack(..., z=0.5)``)."""


class ByzMeanParams(AttackParams):
    base: str = Field("lie", description="the model attack of the first group (Xu et al. / LASA App. 7.3: lie)")
    base_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the base attack")
    variant: Variant = Field(
        "paper", description="paper: LASA App. 7.3 as written; lasa_code: the LASA authors' released code (lie.py, "
        "byzmean_attack), where every attacker sends the second group's vector (see the attack's docstring)")

    @field_validator("variant")
    @classmethod
    def _code_fixes_its_first_group(cls, value: str, info: ValidationInfo) -> str:
        if value == "lasa_code" and (info.data.get("base", "lie") != "lie" or info.data.get("base_params")):
            raise ValueError("variant 'lasa_code' fixes the first group to the authors' LIE vector (z = 0.5 over "
                             "all n updates): leave base and base_params unset")
        return value

    @field_validator("base")
    @classmethod
    def _base_is_model_attack(cls, value: str) -> str:
        if value == "byzmean":
            raise ValueError("byzmean cannot be its own base attack")
        attack_class(value, kind="model")  # raises ValueError naming the known model attacks
        return value

    @field_validator("base_params")
    @classmethod
    def _base_params_valid(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        base = info.data.get("base")
        if base is not None:
            own = attack_class(base).Params.model_fields
            unknown = [key for key in value if key not in own]
            if unknown:
                raise ValueError(f"attack '{base}' parameter '{unknown[0]}': Extra inputs are not permitted "
                                 f"(it takes: {', '.join(own) or 'none'})")
            validate_params(base, value)  # raises ValueError naming the base attack's parameter
        return value


@register
class ByzMeanAttack(ModelAttack[ByzMeanParams]):
    """ByzMean (Xu et al., SignGuard; LASA Appendix 7.3): make the mean of all n updates equal to an
    arbitrary malicious vector.

    The f attackers split into m1 = ⌊f/2⌋ and m2 = f - m1. The first group sends the base attack's rows
    β_1..β_m1 (default LIE, as in Xu et al. and LASA); with ḡ1 their mean, the second group sends

        β' = ((n - m1)·ḡ1 - Σ_benign Δ_i) / m2,

    so the mean of all n updates is exactly ḡ1 (m1·ḡ1 + m2·β' + Σ_benign = n·ḡ1). Σ_benign is estimated as
    (n - f)·mean(reference), which is exact when omniscient (then reference is the n - f benign rows). Rows are
    ordered first group, then second. With f = 1 (m1 = 0) ḡ1 is the base attack's first row, which no one
    sends but the mean still equals.

    ``variant: lasa_code`` is what the LASA authors' released code computes (JiiahaoXU/LASA,
    ``algorithms/attack/lie.py``, ``byzmean_attack``), and so what LASA's published ByzMean numbers measure.
    There g1 = mean - 0.5·std (Bessel-corrected) over all n updates of the round, attackers' own included, and
    the second group's vector is

        g2 = ((n - f - m1)·g1 - Σ_{all n} u_i) / m2.

    Both groups' rows are written into one shared dictionary, so for f >= 2 **every** attacker sends g2, a
    vector several times the benign mean in the opposite direction; with f = 1 the attacker sends g1. Here the
    round's n updates are ``own`` followed by ``reference`` (attackers first, as in the authors' code): with
    an omniscient attacker they are exactly the round's updates and the vector is the code's. An agnostic
    attacker (``reference`` is ``own``) sees only its own f rows: its statistics are theirs, and the sum over
    all n is n times their mean.
    """

    name = "byzmean"
    Params = ByzMeanParams

    def __init__(self, params: ByzMeanParams) -> None:
        super().__init__(params)
        self.base = build(params.base, **params.base_params)

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        f = own.shape[0]
        if f == 0:
            return _empty(own)
        n = ctx.num_clients
        m1 = f // 2
        m2 = f - m1
        if self.params.variant == "lasa_code":
            return _repeat(self._code_vector(own, reference, n, m1, m2), f)
        base_rows = self.base.craft(own, reference, ctx).to(device=own.device, dtype=own.dtype)
        g1 = base_rows[:m1].mean(dim=0) if m1 > 0 else base_rows[0]
        benign_sum = (n - f) * _reference(own, reference).mean(dim=0)
        second = ((n - m1) * g1 - benign_sum) / m2
        return torch.cat([base_rows[:m1], _repeat(second, m2)], dim=0)

    @staticmethod
    def _code_vector(own: torch.Tensor, reference: torch.Tensor, n: int, m1: int, m2: int) -> torch.Tensor:
        """The vector every attacker sends in the LASA authors' code (``variant: lasa_code``)."""
        seen = own if reference is own or reference.shape[0] == 0 else torch.cat([own, _reference(own, reference)])
        g1 = seen.mean(dim=0) - BYZMEAN_CODE_Z * _std(seen)
        if m1 == 0:
            return g1
        total = seen.sum(dim=0) if seen.shape[0] == n else n * seen.mean(dim=0)
        return ((n - own.shape[0] - m1) * g1 - total) / m2


# ---------------------------------------------------------------------------------------------------- IPM


class IpmParams(AttackParams):
    epsilon: float = Field(
        0.1, gt=0, allow_inf_nan=False,
        description="the attackers send -epsilon * mean(reference) (Xie et al., UAI 2020: small epsilon, 0.1)",
    )


@register
class IpmAttack(ModelAttack[IpmParams]):
    """Inner-product manipulation (Xie, Koyejo & Gupta, "Fall of Empires", UAI 2020): every attacker sends
    -ε · mean(reference), so the inner product of the aggregate with the true mean turns negative while the
    malicious updates stay small. ε = 0.1 is the small-ε setting of Xie et al. (also used by Karimireddy et
    al., 2022); none of the defense papers reproduced here evaluates IPM (SDEA and LASA only cite it)."""

    name = "ipm"
    Params = IpmParams

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        f = own.shape[0]
        if f == 0:
            return _empty(own)
        return _repeat(-self.params.epsilon * _reference(own, reference).mean(dim=0), f)
