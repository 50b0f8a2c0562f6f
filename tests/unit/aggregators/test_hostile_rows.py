"""Hostile rows (issue 12, item 2): no rule's output is driven non-finite, or to overflow, by at most its
documented number of arbitrary *finite* rows (``tolerated_rows``, up to +-3.4e38), and past that number every
rule does what its docstring says.

A property test (hypothesis) over every registered rule draws rounds of n honest-looking rows, a declared f the
rule accepts, and hostile rows from {NaN, +-Inf, +-1e30, +-float32 max, huge norms, a single +-float32-max
coordinate, the honest mean scaled by -+1e30, exact copies of honest rows, exact copies of each other}:

* within ``tolerated_rows``: the output is finite (except ``fedavg`` next to a NaN / Inf row, which the server
  refuses), no coordinate exceeds 1e6 x the honest rows' largest |coordinate|, and the rules whose papers give
  a bound meet it (:data:`BOUNDS`);
* past it: the output is finite and stays in the rows' coordinate range (or norm) as documented
  (:data:`PAST`).

Rules that are faithful to their papers and still pass a huge update (FoolsGold, SDEA, Sageflow, DnC with two
rows of different scales, FedRA and the repeated median just inside the declared f) are pinned down by the
example tests further below. The default run is short (``max_examples`` below, derandomised); the ``slow``
test runs many more examples. The counts of ``benchmarks/hostile_rows.py`` (benchmarks/results/hostile_rows.md)
come from the same kinds of rows.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byzlab import aggregators
from byzlab.aggregators import RoundContext, numerics
from hostile_setting import CLASSES, FMAX, MODEL_RULES, OVERFLOW_FACTOR, context, declared_range, tolerated

ALL = aggregators.names()
KINDS = ("nan", "inf", "big", "fmax", "huge_norm", "spike", "sign_flip", "boost", "dup_honest", "dup_hostile")
EXAMPLES = 50
SLOW_RULES = {"sdea": 15, "fltrust": 25, "signguard": 25, "sageflow": 25, "foolsgold": 30}  # training, MeanShift


def profile(name: str) -> settings:
    """The default run: short and derandomised (the same examples every run)."""
    return settings(max_examples=SLOW_RULES.get(name, EXAMPLES), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------- rounds


def hostile_row(kind: str, honest: torch.Tensor, previous: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
    d = honest.shape[1]
    sign = 1.0 if bool(torch.rand(1, generator=g) < 0.5) else -1.0
    signs = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    pick = honest[int(torch.randint(len(honest), (1,), generator=g))].clone()
    if kind == "nan":
        pick[int(torch.randint(d, (1,), generator=g))] = float("nan")
        return pick
    if kind == "inf":
        return torch.full((d,), sign * math.inf)
    if kind in ("big", "fmax"):
        value = 1e30 if kind == "big" else FMAX
        return value * (signs if bool(torch.rand(1, generator=g) < 0.5) else torch.full((d,), sign))
    if kind == "huge_norm":
        direction = torch.randn(d, generator=g, dtype=torch.float64)
        norm = 10 ** (19 + 20 * float(torch.rand(1, generator=g)))
        return (direction / direction.norm() * norm).clamp(-FMAX, FMAX).float()
    if kind == "spike":
        pick[int(torch.randint(d, (1,), generator=g))] = sign * FMAX
        return pick
    if kind in ("sign_flip", "boost"):
        mean = honest.mean(dim=0)
        return (-1e30 if kind == "sign_flip" else 1e30) * mean / mean.abs().max().clamp_min(1e-30)
    if kind == "dup_hostile" and previous is not None:
        return previous.clone()
    return pick  # dup_honest (and dup_hostile for the first hostile row)


@st.composite
def hostile_rounds(draw, name: str, past: bool):
    """(updates [n, d], hostile mask [n], n, f, h, kinds, seed) for rule ``name``: h <= tolerated_rows
    (``past`` False) or tolerated_rows < h <= n - 1 (``past`` True). The round's context is
    ``context(name, n, d, f, seed)`` (not drawn: hypothesis prints what it draws, and a restricted
    context refuses to show the fields the rule does not declare)."""
    smallest = next(n for n in range(3, 40) if declared_range(name, n))
    n = draw(st.integers(smallest, max(smallest, 14)), label="n")
    f = draw(st.sampled_from(declared_range(name, n)), label="f")
    limit = min(tolerated(name, n, f), n - 1)
    if past:
        h = draw(st.integers(limit + 1, n - 1), label="h") if limit < n - 1 else n - 1
    else:
        h = draw(st.integers(0, limit), label="h")
    k = draw(st.integers(1, 12), label="features")
    d = CLASSES * (k + 1) if name in MODEL_RULES else draw(st.integers(1, 40), label="d")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    scale = 10 ** draw(st.floats(-2, 2), label="log10 scale")
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=h, max_size=h), label="kinds")
    g = torch.Generator().manual_seed(seed)
    honest = scale * (0.05 * torch.randn(d, generator=g) + 0.01 * torch.randn(n, d, generator=g))
    hostile = torch.zeros(n, dtype=torch.bool)
    hostile[torch.randperm(n, generator=g)[:h]] = True
    updates = honest.clone()
    previous = None
    for row, kind in zip(hostile.nonzero().squeeze(1).tolist(), kinds):
        previous = hostile_row(kind, honest[~hostile], previous, g)
        updates[row] = previous
    return updates, hostile, n, f, h, kinds, seed


# ------------------------------------------------------------------------------------------------ bounds


def box_distance(update: torch.Tensor, rows: torch.Tensor, widen: float = 0.0) -> float:
    """L2 distance (float64) from ``update`` to the coordinate box of ``rows``, widened by ``widen`` times
    each coordinate's width on both sides."""
    rows = rows.double()
    lo, hi = rows.min(dim=0).values, rows.max(dim=0).values
    width = widen * (hi - lo)
    u = update.double()
    return float(torch.linalg.vector_norm(u - u.clamp(lo - width, hi + width)))


def _rounding(rows: torch.Tensor) -> float:
    return 1e-5 * float(rows.abs().max()) + 1e-30


def _in_box(result, honest, n, f, h):
    return box_distance(result.update, honest), _rounding(honest)


def _bulyan(result, honest, n, f, h):  # the beta values closest to a median that honest values surround
    return box_distance(result.update, honest, widen=1.0), _rounding(honest)


def _krum(result, honest, n, f, h):  # a selected row: sqrt((n-f-2)/(n-2f-1)) D from an honest one (squared L2)
    diameter = float(torch.cdist(honest.double(), honest.double()).max())
    bound = math.sqrt((n - f - 2) / (n - 2 * f - 1)) * diameter * 1.001 + _rounding(honest)
    return box_distance(result.update, honest), bound


def _l1_krum(result, honest, n, f, h):  # the same in L1, unsquared
    diameter = float(torch.cdist(honest.double(), honest.double(), p=1).max())
    return box_distance(result.update, honest), (n - f - 2) / (n - 2 * f - 1) * diameter * 1.001 + _rounding(honest)


def _geomed(result, honest, n, f, h):  # Minsker 2015, Lemma 2.1, with a = h / n < 1/2 (equal claims)
    centre = honest.double().mean(dim=0)
    radius = float(torch.linalg.vector_norm(honest.double() - centre, dim=1).max())
    a = h / n
    c_a = (1 - a) / math.sqrt(1 - 2 * a)
    distance = float(torch.linalg.vector_norm(result.update.double() - centre))
    return distance, c_a * radius * 1.01 + 1e-3 * radius + _rounding(honest)


def _norm_within(bound_of):
    """||update|| <= max(largest honest norm, the rule's radius): clipping at radius r keeps every row's
    contribution within min(||x_i||, r) (a convex-or-less combination of such rows)."""
    def check(result, honest, n, f, h):
        largest = float(torch.linalg.vector_norm(honest.double(), dim=1).max())
        size = float(numerics.safe_row_norms(result.update[None])[0])
        return size, max(largest, bound_of(result)) * (1 + 1e-5) + 1e-30
    return check


BOUNDS = {
    "median": _in_box,  # Yin et al. 2018: between two honest values while fewer than half are hostile
    "trimmed_mean": _in_box,  # Yin et al. 2018, Definition 2 with beta >= f / n
    "truncate": _in_box,  # the weighted trimmed mean with equal claims trims f per side
    "bulyan": _bulyan,  # El Mhamdi et al. 2018, §4
    "krum": _krum,  # Blanchard et al. 2017: a deterministic form of the argument behind Proposition 1
    "multi_krum": _krum,
    "l1_krum": _l1_krum,
    "geomed": _geomed,
    "rfa": _geomed,
    "norm_bound": _norm_within(lambda result: 1.0),  # Sun et al. 2019: threshold M = 1
    "centered_clipping": _norm_within(lambda result: 100.0),  # Karimireddy et al. 2021: tau = 100, centre 0
    "sparsefed": _norm_within(lambda result: 1.0),  # Panda et al. 2022: clip L = 1, top-k only drops
    "fltrust": _norm_within(lambda result: result.info["server_update_norm"]),  # Cao et al. 2021: ||g_0||
    "signguard": _norm_within(lambda result: 0.0),  # Xu et al. 2022: clipped to the (honest) median norm
    "lasa": _norm_within(lambda result: 0.0),  # clipped to the (honest) median norm (LASA's reference code)
}


# ------------------------------------------------------------------------------------ past the breakdown

CONVEX = "convex"  # every coordinate within the rows' coordinate range
SUB_CONVEX = "sub-convex"  # within the rows' range extended to 0 (coefficients >= 0 summing to at most 1)
PAST = {
    **dict.fromkeys(["fedavg", "median", "trimmed_mean", "truncate", "krum", "multi_krum", "l1_krum", "bulyan",
                     "fedra", "dnc", "geomed", "rfa", "foolsgold", "sdea"], CONVEX),
    **dict.fromkeys(["sageflow", "signguard", "lasa", "norm_bound", "centered_clipping", "sparsefed"], SUB_CONVEX),
    "fltrust": "norm <= ||g_0||",
    "pawbrofl": "norm <= the rows' largest norm, or +-inf where eq. 9 exceeds float32",
    "repeated_median": "the line extrapolated to the centre: range widened by (n - 1) / 2, or non-finite",
    "residual": "the line extrapolated to the centre: range widened by (n - 1) / 2, or non-finite",
}


def check_past(name: str, result, finite_rows: torch.Tensor, n: int) -> None:
    update, kind = result.update, PAST[name]
    tolerance = _rounding(finite_rows)
    if kind in (CONVEX, SUB_CONVEX):
        assert torch.isfinite(update).all(), f"{name}: non-finite output past the breakdown point"
        rows = finite_rows if kind == CONVEX else torch.cat([finite_rows, torch.zeros_like(finite_rows[:1])])
        assert box_distance(update, rows) <= tolerance, f"{name}: output outside the rows' coordinate range"
    elif name == "fltrust":
        assert torch.isfinite(update).all()
        bound = result.info["server_update_norm"] * (1 + 1e-5) + 1e-30
        assert float(torch.linalg.vector_norm(update.double())) <= bound
    elif name == "pawbrofl":
        if torch.isfinite(update).all():
            largest = float(numerics.safe_row_norms(finite_rows).max())
            assert float(numerics.safe_row_norms(update[None])[0]) <= largest * (1 + 1e-5) + 1e-30
        else:
            assert not torch.isnan(update).any(), "pawbrofl: NaN past the breakdown point (only +-inf is documented)"
    else:  # repeated_median, residual
        finite = torch.isfinite(update)
        widen = (n - 1) / 2
        assert box_distance(torch.where(finite, update, finite_rows[0]), finite_rows, widen) <= tolerance * (1 + widen)


# ----------------------------------------------------------------------------------------------- the tests


def _aggregate(name: str, updates: torch.Tensor, ctx: RoundContext):
    return aggregators.build(name)(updates, ctx)


def _within(name: str, drawn) -> None:
    updates, hostile, n, f, h, kinds, seed = drawn
    ctx = context(name, n, updates.shape[1], f, seed)
    result = _aggregate(name, updates, ctx)
    honest = updates[~hostile]
    if name == "fedavg" and not bool(torch.isfinite(updates).all()):
        assert not torch.isfinite(result.update).all()  # refused by the server (update_applied = 0)
        return
    assert torch.isfinite(result.update).all(), f"{name}: non-finite output with {h} hostile rows {kinds}"
    if result.weights is not None:
        assert torch.isfinite(result.weights).all(), f"{name}: non-finite weights"
    largest = float(result.update.abs().max()) if result.update.numel() else 0.0
    assert largest <= OVERFLOW_FACTOR * float(honest.abs().max()), f"{name}: overflow {largest:.3g} with {kinds}"
    if name in BOUNDS and h > 0:
        distance, bound = BOUNDS[name](result, honest, n, f, h)
        assert distance <= bound, f"{name}: {distance:.6g} > the paper's bound {bound:.6g} with {kinds}"


def _past(name: str, drawn) -> None:
    updates, hostile, n, f, h, kinds, seed = drawn
    ctx = context(name, n, updates.shape[1], f, seed)
    result = _aggregate(name, updates, ctx)
    finite_rows = updates[aggregators.finite_rows(updates)]
    if name == "fedavg" and finite_rows.shape[0] < n:
        assert not torch.isfinite(result.update).all()
        return
    check_past(name, result, finite_rows, n)


def run_property(name: str, past: bool, profile: settings) -> None:
    check = _past if past else _within

    @profile
    @given(drawn=hostile_rounds(name, past=past))
    def prop(drawn):
        check(name, drawn)

    prop()


WITHIN = [name for name in ALL if tolerated(name, 15, 3) > 0]  # fedavg, foolsgold, sageflow, sdea: 0


@pytest.mark.parametrize("name", WITHIN)
def test_within_the_breakdown_point_the_output_is_finite_and_bounded(name):
    run_property(name, past=False, profile=profile(name))


@pytest.mark.parametrize("name", ALL)
def test_past_the_breakdown_point_the_output_is_as_documented(name):
    run_property(name, past=True, profile=profile(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_hostile_rows_many_examples(name):
    many = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    if name in WITHIN:
        run_property(name, past=False, profile=many)
    run_property(name, past=True, profile=many)


def test_every_rule_documents_its_breakdown_and_what_lies_past_it():
    """Every rule has a documented behaviour past its ``tolerated_rows`` (here, and in its docstrings)."""
    assert set(PAST) == set(ALL)
    for name in ALL:
        cls = aggregators.aggregator_class(name)
        docs = [klass.__doc__ or "" for klass in cls.__mro__
                if klass.__module__.startswith("byzlab.aggregators.") and klass.__module__ != "byzlab.aggregators.base"]
        docs.append(__import__(cls.__module__, fromlist=["_"]).__doc__ or "")
        text = " ".join(docs).lower()
        assert "hostile rows" in text or "breakdown" in text, f"{name}: no documented breakdown"


# ---------------------------------------------------------------------------------- examples, rule by rule


def _round(n: int = 10, d: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(d, generator=g) + 0.01 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("name", ["geomed", "rfa"])
def test_geomed_survives_a_1e30_sign_flip(name):
    """The observed failure: one attacker's sign flip scaled by 1e30 made every geomed / rfa aggregate NaN
    (the float32 sums of squares overflowed, every Weiszfeld weight became 0/0) and no round was applied."""
    updates = _round()
    honest = updates[1:].clone()
    updates[0] = -1e30 * honest.mean(dim=0)
    ctx = RoundContext(num_samples=torch.full((10,), 50.0), num_byzantine=1)
    result = aggregators.build(name)(updates, ctx)
    assert torch.isfinite(result.update).all() and result.info["float64_restart"] == 1.0
    assert box_distance(result.update, honest) < 0.05 * float(honest.abs().max())
    assert float(result.weights[0]) < 1e-25  # weight ~ alpha / distance
    plain = aggregators.build(name)(honest, RoundContext(num_samples=torch.full((9,), 50.0)))
    assert plain.info["float64_restart"] == 0.0  # ordinary rounds keep the float32 iteration


def test_geomed_from_float32_max_converges_within_max_iter():
    """Two honest rows and one at float32's largest: from the mean, each step would only halve the distance;
    the float64 iteration starts from the coordinate-wise median and converges."""
    updates = _round(n=3, d=8)
    updates[2] = FMAX
    result = aggregators.build("geomed")(updates, RoundContext(num_samples=torch.full((3,), 1.0)))
    assert result.info["iterations"] < 100
    _, bound = _geomed(result, updates[:2], 3, 1, 1)
    assert float(torch.linalg.vector_norm(result.update.double() - updates[:2].double().mean(0))) <= bound


@pytest.mark.parametrize("value", [-1e30, FMAX])
def test_geomed_in_one_dimension_restarts_when_the_mean_start_does_not_converge(value):
    """d = 1: |x - z| does not overflow, but from a mean at ~value / 3 the float32 iteration only halves the
    distance per step and stops at max_iter far from the median (found by the property test)."""
    updates = torch.tensor([[0.0741], [value], [0.0827]])
    result = aggregators.build("rfa")(updates, RoundContext(num_samples=torch.full((3,), 50.0), num_byzantine=1))
    assert result.info["float64_restart"] == 1.0 and 0.074 <= float(result.update) <= 0.083


def test_fedavg_passes_a_finite_outlier_and_refuses_nan():
    updates = _round()
    updates[3] = 1e30
    result = aggregators.build("fedavg", weighting="uniform")(updates, RoundContext())
    assert torch.isfinite(result.update).all() and float(result.update.abs().max()) > 1e28  # breakdown point 0
    updates[:2] = FMAX  # two rows at float32's largest: the float32 sum overflows, the mean does not
    assert torch.isfinite(aggregators.build("fedavg", weighting="uniform")(updates, RoundContext()).update).all()
    updates[5, 0] = float("nan")
    assert not torch.isfinite(aggregators.build("fedavg")(updates, RoundContext()).update).all()


def test_foolsgold_lets_a_lone_outlier_through_and_reports_it():
    updates = _round()
    updates[4] = 1e30
    rule = aggregators.build("foolsgold")
    result = rule(updates, RoundContext(client_ids=torch.arange(10), num_clients_total=10, num_byzantine=1))
    assert float(result.weights[4]) > 0 and float(result.update.abs().max()) > 1e27  # as the paper's rule does
    assert result.info["update_norm_ratio"] > 1e25
    updates[2] = updates[7]  # exact duplicates: sybils, weight 0
    result = aggregators.build("foolsgold")(updates, RoundContext(client_ids=torch.arange(10), num_clients_total=10))
    assert float(result.weights[2]) == 0.0 and float(result.weights[7]) == 0.0


def test_foolsgold_history_saturates_instead_of_overflowing():
    rule = aggregators.build("foolsgold")
    ctx = RoundContext(client_ids=torch.arange(10), num_clients_total=10)
    for _ in range(3):
        updates = _round()
        updates[0] = FMAX
        result = rule(updates, ctx)
        assert torch.isfinite(result.update).all()
    assert torch.isfinite(rule.state_dict()["history"]).all()


@pytest.mark.parametrize("row", ["constant", "random signs"])
def test_sdea_lets_a_huge_update_through_and_reports_it(row):
    """A 1e30 row dominates the mixed model whatever the weights: every class shifted alike (constant row) or
    saturated logits (random signs) leave the loss flat in M, so the learned weights stay uniform."""
    d = CLASSES * (8 + 1)
    updates = _round(n=6, d=d)
    signs = torch.where(torch.rand(d, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    updates[0] = 1e30 if row == "constant" else 1e30 * signs
    result = aggregators.build("sdea", epochs=4)(updates, context("sdea", 6, d, 1, seed=0))
    assert torch.allclose(result.weights, torch.full((6,), 1 / 6))
    assert float(result.update.abs().max()) > 1e28 and result.info["update_norm_ratio"] > 1e25


def test_sageflow_gives_a_scaled_up_model_the_proxy_likes_most_of_the_weight():
    d = CLASSES * (8 + 1)
    ctx = context("sageflow", 10, d, 1, seed=0)
    updates = _round(d=d)
    updates[0] = 1e6 * ctx.global_params  # confident and right on the proxy data: tiny loss
    result = aggregators.build("sageflow")(updates, ctx)
    assert float(result.weights[0]) > 0.99 and float(result.update.abs().max()) > 1e5
    updates[0] = -1e30 * ctx.global_params  # confidently wrong: weight ~ 1 / loss, contribution of order 1
    result = aggregators.build("sageflow")(updates, ctx)
    assert torch.isfinite(result.update).all() and float(result.update.abs().max()) < 1e3


def test_dnc_removes_one_far_row_but_not_a_smaller_one_next_to_a_larger():
    updates = _round()
    updates[0] = 1e30
    one = aggregators.build("dnc")(updates, RoundContext(num_byzantine=2))
    assert not one.accepted[0] and float(one.update.abs().max()) < 1.0
    updates[1] = 0.0
    updates[1, 5] = FMAX  # the larger hostile row sets the top singular direction ...
    two = aggregators.build("dnc")(updates, RoundContext(num_byzantine=2))
    assert not two.accepted[1] and two.accepted[0]  # ... and the 1e30 row projects like the honest ones
    assert two.info["update_norm_ratio"] > 1e25  # reported (DnC as published)


def test_fedra_and_krum_with_colluding_copies():
    """FedRA's check_setting allows n = 2f + 1; then f copies of one row score 0 and are selected. Krum's
    condition n > 2f + 2 (FedRA's tolerated_rows) keeps them out."""
    ctx = RoundContext(num_samples=torch.full((7,), 50.0), num_byzantine=3)
    updates = _round(n=7)
    updates[:3] = 1e30
    assert aggregators.aggregator_class("fedra").tolerated_rows(aggregators.build("fedra").params, 7, 3) == 2
    assert float(aggregators.build("fedra")(updates, ctx).update.abs().max()) > 1e28
    updates = _round(n=9)
    updates[:3] = 1e30
    ctx = RoundContext(num_samples=torch.full((9,), 50.0), num_byzantine=3)
    for name in ("fedra", "krum", "multi_krum", "l1_krum"):
        assert float(aggregators.build(name)(updates, ctx).update.abs().max()) < 1.0, name


@pytest.mark.parametrize("name", ["repeated_median", "residual"])
def test_the_repeated_median_line_breaks_one_row_before_half(name):
    updates = _round(n=13)
    updates[:5] = 1e30
    assert float(aggregators.build(name)(updates, RoundContext()).update.abs().max()) < 1.0
    updates[5] = 1e30  # 6 of 13: each inner median over 12 slopes has 6 hostile ones
    assert float(aggregators.build(name)(updates, RoundContext()).update.abs().max()) > 1e28
    assert aggregators.aggregator_class(name).tolerated_rows(aggregators.build(name).params, 13, 0) == 5


def test_residual_moves_to_the_line_without_cancellation():
    """A 1e30 value corrected to the line: summing "uncorrected + offset" in float32 left ~1e23 behind."""
    updates = _round(n=14)
    updates[:6, 3] = FMAX
    result = aggregators.build("residual")(updates, RoundContext())
    assert box_distance(result.update, updates[6:], widen=7.0) == 0.0 and float(result.update.abs().max()) < 1.0


# ------------------------------------------------------------------------------------------ shared numerics


def test_overflow_safe_sums_and_medians():
    rows = torch.tensor([[FMAX, 1.0], [FMAX, 3.0], [-FMAX, 5.0]])
    assert torch.equal(numerics.mean_rows(rows[:2]), torch.tensor([FMAX, 2.0]))  # float32 sum: inf
    assert torch.equal(numerics.weighted_rows(torch.tensor([0.5, 0.5]), rows[:2]), torch.tensor([FMAX, 2.0]))
    assert torch.equal(numerics.sorted_median(torch.tensor([[1.0], [FMAX], [FMAX], [FMAX]]), 0), torch.tensor([FMAX]))
    assert torch.equal(numerics.trimmed_mean(rows, 0)[1:], torch.tensor([3.0]))
    plain = torch.randn(6, 5)
    assert torch.equal(numerics.mean_rows(plain), plain.mean(dim=0))  # ordinary inputs: the plain expression
    w = torch.rand(6)
    assert torch.equal(numerics.weighted_rows(w, plain), w @ plain)


def test_safe_norms_and_clip_scales_beyond_float32():
    rows = torch.tensor([[1e20, 1e20], [3.0, 4.0], [FMAX, FMAX]])
    norms = numerics.safe_row_norms(rows)
    assert norms.dtype == torch.float64 and float(norms[1]) == 5.0
    assert float(norms[0]) == pytest.approx(math.sqrt(2) * 1e20)
    assert float(norms[2]) == pytest.approx(math.sqrt(2) * FMAX)
    scales = numerics.clip_scales_wide(norms, 2.0, torch.float32)
    assert scales[1] == numerics.clip_scales(torch.tensor([5.0]), 2.0)[0] and 0 < float(scales[2]) < 1e-38
    assert float(torch.linalg.vector_norm((scales[2].double() * rows[2].double()))) == pytest.approx(2.0, rel=1e-3)


def test_lines_at_centre_and_update_norm_ratio():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    slopes = torch.tensor([[math.inf, math.inf, -math.inf]])
    assert torch.equal(numerics.lines_at_centre(z, slopes, torch.tensor([1.0, 0.0, -1.0])),
                       torch.tensor([[math.inf, 2.0, math.inf]]))
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    assert numerics.update_norm_ratio(torch.tensor([0.0, 10.0]), rows) == 2.0  # 10 / median(5, 1, 10)
    assert numerics.update_norm_ratio(torch.zeros(2), rows) == 0.0
