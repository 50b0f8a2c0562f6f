"""Distance-based selection rules: Krum and Multi-Krum (Blanchard et al., NeurIPS 2017), the L1-based Krum of
FedRA (§4.1) and Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018).

All of them start from the n x n matrix of pairwise distances between the updates
(``numerics.pairwise_distances``: squared Euclidean from a float64 Gram matrix, or L1), so memory is O(n^2)
beyond the input, and rank the updates with ``numerics.krum_order``. Equal Krum scores are ordered by the
total distance to all others, then by the lower row index; only in that last case (exactly tied updates)
does the choice depend on the client order.

``f`` is the Byzantine count the defense is told (``ctx.num_byzantine``; Multi-Krum's and Bulyan's own ``f``
parameter overrides it, as the LASA authors' engine fixes it at 10 and 5). ``check_setting`` refuses
configurations the rule cannot support; in a round that holds more declared attackers than the rule supports
for that round's n (client sampling), ``aggregate`` clamps f to the largest feasible value and reports
``info["f_clamped"] = 1``.

Hostile rows. Up to f arbitrary rows (``tolerated_rows``: the declared f, clamped to what n supports) cannot
be selected unless they are close to the honest ones: an honest update's score is at most (n - f - 2) D^2
(D the honest rows' diameter), while a row at distance R from every honest one scores at least
(n - 2f - 1) R^2 since at most f - 1 of its n - f - 2 neighbours are hostile, so a selected row lies within
sqrt((n - f - 2) / (n - 2f - 1)) D of an honest row (a deterministic form of the argument behind Blanchard
et al.'s Proposition 1, §4; for L1-Krum the same with L1 distances, unsquared). Bulyan keeps, per coordinate, values
within the honest range extended by its width (El Mhamdi et al. §4: beta = theta - 2f values closest to a
median that honest values surround). Distances are float64 Gram sums (finite for any finite float32 rows;
L1 distances may be +inf, which ranks last). Past the breakdown point -- more hostile rows than f, e.g.
f + 1 colluding copies of one 1e30 row whose scores are 0 -- hostile rows are selected and the aggregate is
their (partial) mean: finite (means that overflow float32 are redone in float64), within the rows'
coordinate range, but as large as the hostile rows.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeVar

import torch
from pydantic import Field, model_validator

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import coordinate_chunks, krum_order, mean_rows, pairwise_distances, sorted_median
from byzlab.aggregators.registry import register
from byzlab.orchestrator.core.columns import sorted_columns

KP = TypeVar("KP", bound=AggregatorParams)


def _largest_f(n: int, per_f: int, base: int) -> int:
    """Largest f with n >= per_f * f + base (0 if none)."""
    return max(0, (n - base) // per_f)


def _assumed_f(params: AggregatorParams, num_byzantine: int) -> int:
    """The Byzantine count a rule works with: its own ``f`` parameter where it has one and it is set, else the
    round's declared count."""
    f = getattr(params, "f", None)
    return num_byzantine if f is None else f


def _own_count(engine_default: int, rule: str):
    """The ``f`` parameter of Multi-Krum and Bulyan: a count that overrides the round's declared one."""
    return Field(None, ge=0, description="the Byzantine count the rule assumes; None = the round's declared count "
                 f"(threat.declared_byzantine, else the true one); the LASA authors' engine calls {rule} with "
                 f"{engine_default} whatever the attack ratio")


# ---------------------------------------------------------------------------------------- krum family


def _authors_selection(distances: torch.Tensor, f: int, count: int) -> list[int]:
    """The LASA authors' repeated Krum (``multi_krum`` and ``bulyan`` of their
    ``byzantine_robust_aggregation.py``): up to ``count`` times, while r - 2 - f > 0 for the r updates left,
    score each by the sum of the r - 2 - f smallest squared distances of its row (its own 0 among them) and
    move the lowest (the first of equal ones) to the selection. Returns the selected rows in order."""
    remaining = torch.arange(distances.shape[0], device=distances.device)
    chosen: list[int] = []
    while len(chosen) < count and remaining.numel() - 2 - f > 0:
        rows = distances[remaining][:, remaining].sort(dim=1).values
        best = int(torch.argmin(rows[:, : remaining.numel() - 2 - f].sum(dim=1)))
        chosen.append(int(remaining[best]))
        remaining = torch.cat([remaining[:best], remaining[best + 1:]])
    return chosen


class _KrumFamily(Aggregator[KP]):
    """Shared body: score every update by its n - f - 2 nearest neighbours (distance ``p``) and average the
    ``m`` lowest-scoring ones with equal weights."""

    p: ClassVar[int] = 2
    default_m: ClassVar[int | None] = 1  # None: n - f

    def _m(self) -> int | None:
        return getattr(self.params, "m", self.default_m)

    @classmethod
    def check_setting(cls, params: KP, num_clients: int, num_byzantine: int) -> None:
        n, f = num_clients, _assumed_f(params, num_byzantine)
        if n <= 2 * f + 2:
            raise ValueError(
                f"{cls.name} needs n > 2f + 2 updates per round: n={n}, f={f} (2f + 2 = {2 * f + 2}; "
                f"at most f={_largest_f(n, 2, 3)} for n={n})"
            )
        m = getattr(params, "m", cls.default_m)
        if m is not None and m > n - f:
            raise ValueError(
                f"{cls.name}: m={m} selected updates exceed the n - f = {n - f} honest ones (n={n}, f={f})"
            )

    @classmethod
    def tolerated_rows(cls, params: KP, num_clients: int, num_byzantine: int) -> int:
        return min(_assumed_f(params, num_byzantine), _largest_f(num_clients, 2, 3))

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        declared = _assumed_f(self.params, ctx.num_byzantine)
        f = min(declared, _largest_f(n, 2, 3))
        m = self._m()
        m = n - f if m is None else m
        m = max(1, min(m, n - f))
        chosen = krum_order(pairwise_distances(updates, self.p), f)[:m]
        weights = torch.zeros(n, device=updates.device, dtype=updates.dtype)
        weights[chosen] = 1.0 / m
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[chosen] = True
        update = mean_rows(updates[chosen])
        info = {"f_clamped": float(f < declared), "selected": float(m)}
        return AggregationResult(update=update, weights=weights, accepted=accepted, info=info)


class KrumParams(AggregatorParams):
    """Krum has no parameters besides the declared Byzantine count f (from the round context)."""


@register
class Krum(_KrumFamily[KrumParams]):
    """Krum (Blanchard et al., NeurIPS 2017, §4): the update with the lowest score
    ``s(i) = sum_{i -> j} ||V_i - V_j||^2`` over its n - f - 2 nearest other updates. Requires n > 2f + 2
    (Proposition 1). ``weights`` and ``accepted`` are one-hot on the chosen update."""

    name = "krum"
    Params = KrumParams


class MultiKrumParams(AggregatorParams):
    m: int | None = Field(
        None,
        ge=1,
        description="number of lowest-score updates averaged; default n - f (Blanchard et al. 2017, §5), "
        "clamped to n - f",
    )
    f: int | None = _own_count(10, "multi_krum")
    variant: Literal["paper", "lasa_code"] = Field(
        "paper",
        description="paper: Blanchard et al.'s Multi-Krum; lasa_code: the LASA authors' multi_krum (one update at a "
        "time by Krum on the rest, until 2f + 2 remain; scores over the n - f - 2 smallest squared distances, "
        "its own 0 among them)",
    )

    @model_validator(mode="after")
    def _no_m_in_the_code(self) -> "MultiKrumParams":
        if self.variant == "lasa_code" and self.m is not None:
            raise ValueError("variant 'lasa_code' selects n - 2f - 2 updates, as the LASA authors' code: leave m unset")
        return self


@register
class MultiKrum(_KrumFamily[MultiKrumParams]):
    """Multi-Krum (Blanchard et al., NeurIPS 2017, §5): compute every Krum score once, select the m updates
    with the lowest scores and average them (weights 1/m on the selected, ``accepted`` = selected).
    ``m`` defaults to n - f, i.e. only the f worst-scored updates are left out (Blanchard et al.'s Multi-Krum
    experiments; also the default of EPFL's ByzFL ``MultiKrum``); m = 1 is Krum. Requires n > 2f + 2 and
    m <= n - f."""

    name = "multi_krum"
    Params = MultiKrumParams
    default_m = None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        if self.params.variant != "lasa_code":
            return super().aggregate(updates, ctx)
        return self._authors_code(updates, ctx)

    def _authors_code(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        """The LASA authors' ``multi_krum`` (JiiahaoXU/LASA, ``algorithms/defense/byzantine_robust_aggregation.py``
        l.10-51, with ``multi_k=True``): while more than 2f + 2 updates remain, score each remaining one by the
        sum of the r - 2 - f smallest squared distances of its row (r remaining; its own 0 is one of them, so
        r - 3 - f neighbours), move the lowest (the first of equal ones) to the selection; average the
        selection, n - 2f - 2 updates. Their engine calls it with its default f = 10 whatever the attack ratio
        (``algorithms/engine/fedavg_all.py``): give that count with the ``f`` parameter."""
        n = updates.shape[0]
        declared = _assumed_f(self.params, ctx.num_byzantine)
        f = min(declared, _largest_f(n, 2, 3))
        chosen = _authors_selection(pairwise_distances(updates, 2), f, n - 2 * f - 2)
        weights = torch.zeros(n, device=updates.device, dtype=updates.dtype)
        weights[chosen] = 1.0 / len(chosen)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[chosen] = True
        info = {"f_clamped": float(f < declared), "selected": float(len(chosen))}
        return AggregationResult(update=mean_rows(updates[chosen]), weights=weights, accepted=accepted, info=info)


class L1KrumParams(AggregatorParams):
    m: int | None = Field(
        1,
        ge=1,
        description="number of lowest-score updates averaged; 1 = L1-Krum of FedRA §4.1 (one update); "
        "None = n - f; clamped to n - f",
    )


@register
class L1Krum(_KrumFamily[L1KrumParams]):
    """L1-based Krum (FedRA, Section 4.1): Krum with the squared Euclidean distance replaced by the L1
    distance, ``s(i) = sum_{i -> j} ||g_i - g_j||_1`` over the n - f - 2 nearest others (nearest in L1), and
    the lowest-score update returned. FedRA §4.1 selects one update (``m = 1``, the default); with ``m > 1``
    this is the L1 analogue of Multi-Krum (uniform average of the m best). FedRA's full rule (Algorithm 1:
    quantity-aware scores, c = n - f - 1 selected, sample-weighted) is a different rule, not this one."""

    name = "l1_krum"
    Params = L1KrumParams
    p = 1


# ---------------------------------------------------------------------------------------------- bulyan


class BulyanParams(AggregatorParams):
    f: int | None = _own_count(5, "bulyan")
    variant: Literal["paper", "lasa_code"] = Field(
        "paper",
        description="paper: El Mhamdi et al.'s Bulyan; lasa_code: the LASA authors' bulyan (their Krum scores over the "
        "r - f - 2 smallest squared distances, its own 0 among them; per coordinate the f values closest to the "
        "lower median and the f farthest dropped)",
    )


@register
class Bulyan(Aggregator[BulyanParams]):
    """Bulyan over Krum (El Mhamdi, Guerraoui & Rouault, ICML 2018, §4): select n - 2f updates by repeated
    Krum, then per coordinate average the n - 4f selected values closest to their median.

    1. selection: theta = n - 2f updates, chosen one at a time by Krum on the remaining set (each Krum
       call scores the remaining r updates with their r - f - 2 nearest remaining neighbours, clipped to at
       least 1 near the end of the recursion, and its winner is moved to the selection);
    2. aggregation, per coordinate: of the theta selected values keep the beta = theta - 2f closest to their
       coordinate-wise median (mean of the two middle values for even theta) and average them.

    Requires n >= 4f + 3. ``accepted`` = the theta selected updates; ``weights`` is None because the
    coordinate-wise step uses different updates per coordinate. Equidistant values at the edge of the beta
    kept are resolved towards the smaller value, so the result depends on the values only.

    **Paper text or authors' code** (``variant``). ``lasa_code`` is the Bulyan the LASA authors ran as a
    baseline (``JiiahaoXU/LASA``, ``algorithms/defense/byzantine_robust_aggregation.py``, ``bulyan``, l.54-107),
    called by their engine with its default f = 5 whatever the attack ratio (give it with ``f``):

    1. selection, as their Multi-Krum: while fewer than n - 2f are selected and r - 2 - f > 0 (r remaining),
       score each remaining update by the sum of the r - 2 - f smallest squared distances of its row (its own
       0 among them) and move the lowest to the selection;
    2. per coordinate, sort the theta selected values by their distance to the *lower* median
       (``torch.median``) and average positions f to theta - f - 1 (l.91-95): the f values *closest* to the
       median are dropped with the f farthest, where the paper keeps the theta - 2f closest. With f = 0
       nothing is dropped (their slice ``[0:-0]`` is empty and gives NaN).

    It needs theta - 2f >= 1 values per coordinate, n >= 4f + 1, not the paper's n >= 4f + 3.
    """

    name = "bulyan"
    Params = BulyanParams

    @staticmethod
    def _base(params: BulyanParams) -> int:
        return 1 if params.variant == "lasa_code" else 3  # n >= 4f + base

    @classmethod
    def check_setting(cls, params: BulyanParams, num_clients: int, num_byzantine: int) -> None:
        n, f, base = num_clients, _assumed_f(params, num_byzantine), cls._base(params)
        if n < 4 * f + base:
            raise ValueError(
                f"bulyan needs n >= 4f + {base} updates per round: n={n}, f={f} (4f + {base} = {4 * f + base}; "
                f"at most f={_largest_f(n, 4, base)} for n={n})"
            )

    @classmethod
    def tolerated_rows(cls, params: BulyanParams, num_clients: int, num_byzantine: int) -> int:
        return min(_assumed_f(params, num_byzantine), _largest_f(num_clients, 4, cls._base(params)))

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        if self.params.variant == "lasa_code":
            return self._authors_code(updates, ctx)
        n, d = updates.shape
        declared = _assumed_f(self.params, ctx.num_byzantine)
        f = min(declared, _largest_f(n, 4, 3))
        theta = n - 2 * f
        beta = theta - 2 * f
        dist = pairwise_distances(updates, 2)
        remaining = torch.ones(n, dtype=torch.bool, device=updates.device)
        for _ in range(theta):
            remaining[krum_order(dist, f, remaining)[0]] = False
        accepted = ~remaining
        chosen = accepted.nonzero().squeeze(1)
        out = torch.empty(d, device=updates.device, dtype=updates.dtype)
        for cols in coordinate_chunks(d, theta):
            ordered = sorted_columns(updates[:, cols][chosen])
            gap = (ordered - sorted_median(ordered, dim=0)).abs()
            keep = torch.sort(gap, dim=0, stable=True).indices[:beta]
            out[cols] = mean_rows(ordered.gather(0, keep))
        info = {"f_clamped": float(f < declared), "selected": float(theta), "beta": float(beta)}
        return AggregationResult(update=out, accepted=accepted, info=info)

    def _authors_code(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        """The LASA authors' ``bulyan`` (see the class docstring)."""
        n, d = updates.shape
        declared = _assumed_f(self.params, ctx.num_byzantine)
        f = min(declared, _largest_f(n, 4, 1))
        chosen = _authors_selection(pairwise_distances(updates, 2), f, n - 2 * f)
        theta = len(chosen)
        selected = updates[chosen]
        out = torch.empty(d, device=updates.device, dtype=updates.dtype)
        for cols in coordinate_chunks(d, theta):
            block = selected[:, cols]
            lower_median = block.median(dim=0).values
            order = (block - lower_median).abs().sort(dim=0, stable=True).indices
            out[cols] = mean_rows(block.gather(0, order[f: theta - f]))
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[chosen] = True
        info = {"f_clamped": float(f < declared), "selected": float(theta), "beta": float(theta - 2 * f)}
        return AggregationResult(update=out, accepted=accepted, info=info)
