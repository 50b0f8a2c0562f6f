"""Rules declare the optional RoundContext fields they read (``needs``): every registered rule runs, bitwise
as with the full context, on a context restricted to its declared fields (reading any other one raises), and
every declared field is really read; the driver loads server data from the same declaration."""

import numpy as np
import pytest
import torch

from byzlab import aggregators
from byzlab.aggregators import (
    BASE_FIELDS,
    OPTIONAL_FIELDS,
    Aggregator,
    AggregatorParams,
    RoundContext,
    UndeclaredContextField,
    context_fields,
)
from byzlab.orchestrator.core.layout import Layer

N, FEATURES, CLASSES = 8, 4, 3
LAYERS = (
    Layer("fc.weight", (CLASSES, FEATURES), 0, "weight"),
    Layer("fc.bias", (CLASSES,), FEATURES * CLASSES, "bias"),
    Layer("bn.running_mean", (2,), FEATURES * CLASSES + CLASSES, "buffer"),
)
D = FEATURES * CLASSES + CLASSES + 2

# What each rule reads (the table in the rules' ``needs``), written out once more here on purpose: a change
# of a rule's needs must be a deliberate change of this table too.
EXPECTED_NEEDS = {
    "bulyan": set(), "krum": set(), "l1_krum": set(), "multi_krum": set(),
    "median": set(), "trimmed_mean": set(), "repeated_median": set(), "residual": set(),
    "fedavg": {"num_samples"}, "geomed": {"num_samples"}, "rfa": {"num_samples"},
    "norm_bound": {"num_samples"}, "centered_clipping": {"num_samples"}, "sparsefed": {"num_samples"},
    "truncate": {"num_samples"},
    "fedra": {"num_samples", "num_clients_total", "num_byzantine_total"},
    "foolsgold": {"client_ids", "num_clients_total", "layers"},
    "lasa": {"layers"},
    "pawbrofl": {"loss_gaps", "layers", "generator"},
    "dnc": {"generator"}, "signguard": {"generator"},
    "fltrust": {"global_params", "model_fn", "proxy_data", "generator", "layers"},
    "sageflow": {"global_params", "model_fn", "proxy_data", "num_samples"},
    "sdea": {"global_params", "model_fn", "public_data", "generator"},
}

# Parameters under which a rule reads every field it declares (with the defaults DnC and SignGuard use all
# of these few coordinates and draw none; PAwBRoFL's layers and generator and FoolsGold's layers are their
# authors'-code variants'),
# and SDEA with fewer epochs, for speed.
EXERCISE = {
    "dnc": {"subsample_dim": 5, "niters": 2},
    "signguard": {"min_coordinates": 4},
    "sdea": {"epochs": 2},
    "pawbrofl": {"variant": "pawbrofl_code"},
    "foolsgold": {"variant": "residual_code"},
}


def _model_fn(flat, x):
    w = flat[: FEATURES * CLASSES].view(FEATURES, CLASSES)
    return x @ w + flat[FEATURES * CLASSES : FEATURES * CLASSES + CLASSES]


def _full_context(seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return RoundContext(
        layers=LAYERS,
        client_ids=torch.arange(N) * 3,
        num_samples=torch.randint(10, 50, (N,), generator=g).float(),
        loss_gaps=torch.rand(N, generator=g),
        global_params=0.1 * torch.randn(D, generator=g),
        num_byzantine=2,
        num_clients_total=3 * N,
        num_byzantine_total=6,
        round=4,
        generator=torch.Generator().manual_seed(seed),
        model_fn=_model_fn,
        public_data=torch.randn(30, FEATURES, generator=g),
        proxy_data=(torch.randn(20, FEATURES, generator=g), torch.randint(0, CLASSES, (20,), generator=g)),
    )


def _updates(seed=0, nonfinite=False):
    g = torch.Generator().manual_seed(seed)
    centre = 0.05 * torch.randn(D, generator=g)
    u = centre + 0.02 * torch.randn(N, D, generator=g)
    u[1] = -20 * centre
    if nonfinite:
        u[3, 0] = float("nan")
    return u


def _same(a, b):
    for field in ("update", "weights", "accepted"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert torch.equal(x.nan_to_num(), y.nan_to_num()) and torch.equal(x.isnan(), y.isnan()), field
    assert a.info.keys() == b.info.keys()
    assert all(a.info[k] == b.info[k] or (a.info[k] != a.info[k] and b.info[k] != b.info[k]) for k in a.info)


def _same_state(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


CASES = [(name, {}) for name in aggregators.names()] + [(name, p) for name, p in EXERCISE.items()]


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}{'-' + str(p) if p else ''}" for n, p in CASES])
@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nan-row"])
def test_a_context_of_the_declared_fields_gives_bitwise_the_same_result(name, params, nonfinite):
    full = _full_context()
    restricted = _full_context().restricted_to(context_fields(aggregators.aggregator_class(name)))
    with_full, with_restricted = aggregators.build(name, **params), aggregators.build(name, **params)
    for seed in range(2):  # a second round for the stateful rules (history, centre, error feedback)
        expected = with_full(_updates(seed, nonfinite), full)
        _same(with_restricted(_updates(seed, nonfinite), restricted), expected)
    _same_state(with_restricted.state_dict(), with_full.state_dict())


def test_the_declared_needs_are_the_table():
    assert {name: set(aggregators.aggregator_class(name).needs) for name in aggregators.names()} == EXPECTED_NEEDS


@pytest.mark.parametrize(
    "name, field",
    [(name, field) for name in aggregators.names() for field in sorted(aggregators.aggregator_class(name).needs)],
)
def test_every_declared_field_is_read(name, field):
    rule = aggregators.build(name, **EXERCISE.get(name, {}))
    without = aggregators.aggregator_class(name).needs - {field}
    with pytest.raises(UndeclaredContextField, match=f"RoundContext.{field} was read"):
        rule(_updates(), _full_context().restricted_to(without))


# ------------------------------------------------------------------------------------ the mechanism


def test_context_fields_is_the_needs_plus_the_base_fields():
    fltrust = aggregators.aggregator_class("fltrust")
    expected = {"global_params", "model_fn", "proxy_data", "generator", "layers", "num_byzantine", "round"}
    assert context_fields(fltrust) == expected
    assert context_fields(aggregators.build("fltrust")) == expected  # an instance works too
    assert context_fields(aggregators.aggregator_class("krum")) == BASE_FIELDS == {"num_byzantine", "round"}
    assert BASE_FIELDS | OPTIONAL_FIELDS == {f.name for f in RoundContext.__dataclass_fields__.values()}


def test_a_rule_with_unknown_needs_is_refused_when_its_class_is_defined():
    with pytest.raises(TypeError, match="num_sample.*not optional RoundContext fields"):
        class Typo(Aggregator[AggregatorParams]):
            needs = frozenset({"num_sample"})
    with pytest.raises(TypeError, match="round"):  # in every context: nothing to declare
        class Base(Aggregator[AggregatorParams]):
            needs = frozenset({"round"})
    with pytest.raises(TypeError, match="frozenset"):
        class NotFrozen(Aggregator[AggregatorParams]):
            needs = {"layers"}


def test_restricted_context_holds_only_its_fields():
    full = _full_context()
    ctx = full.restricted_to({"num_samples", "layers"})
    assert ctx.held_fields() == {"num_samples", "layers", "num_byzantine", "round"}
    assert ctx.num_samples is full.num_samples and ctx.layers == LAYERS
    assert (ctx.num_byzantine, ctx.round) == (2, 4)
    with pytest.raises(UndeclaredContextField, match="RoundContext.client_ids was read.*layers, num_samples"):
        ctx.client_ids
    assert "num_samples=" in repr(ctx) and "client_ids" not in repr(ctx)
    with pytest.raises(ValueError, match="no field bogus"):
        full.restricted_to({"bogus"})
    narrower = ctx.restricted_to({"layers"})
    with pytest.raises(UndeclaredContextField):
        narrower.num_samples
    with pytest.raises(UndeclaredContextField):  # cannot widen: the value is not there
        narrower.restricted_to({"num_samples"})


def test_with_values_keeps_the_restriction():
    ctx = _full_context().restricted_to({"num_samples"})
    fewer = ctx.with_values(num_samples=ctx.num_samples[:3], num_byzantine=1)
    assert fewer.held_fields() == ctx.held_fields() and fewer.num_samples.shape == (3,) and fewer.num_byzantine == 1
    with pytest.raises(UndeclaredContextField, match="loss_gaps"):
        ctx.with_values(loss_gaps=torch.zeros(3))
    plain = _full_context().with_values(num_byzantine=0)
    assert plain.held_fields() == BASE_FIELDS | OPTIONAL_FIELDS and plain.num_byzantine == 0


def test_dropped_nonfinite_rows_shrink_the_held_per_row_fields():
    seen = {}

    class Spy(Aggregator[AggregatorParams]):
        name = "spy"
        needs = frozenset({"num_samples"})

        def aggregate(self, updates, ctx):
            seen["ctx"] = ctx
            return aggregators.AggregationResult(update=updates.mean(dim=0))

    ctx = RoundContext(num_samples=torch.tensor([1.0, 2.0, 3.0]), client_ids=torch.arange(3), num_byzantine=2)
    updates = torch.tensor([[0.0], [float("inf")], [1.0]])
    Spy(AggregatorParams())(updates, ctx.restricted_to(Spy.needs))
    assert seen["ctx"].num_samples.tolist() == [1.0, 3.0] and seen["ctx"].num_byzantine == 1
    with pytest.raises(UndeclaredContextField):
        seen["ctx"].client_ids


def test_missing_server_inputs_keep_their_clear_error_in_a_declared_context():
    rule = aggregators.build("sdea")
    ctx = RoundContext(global_params=torch.zeros(D)).restricted_to(context_fields(rule))
    with pytest.raises(ValueError, match="'sdea' needs the server's public_data: RoundContext is missing model_fn, public_data"):
        rule(_updates(), ctx)


# ----------------------------------------------------------------------------------- the driver side


@pytest.mark.parametrize(
    "aggregator, proxy, public", [("fltrust", True, False), ("sageflow", True, False), ("sdea", False, True),
                                  ("median", False, False)]
)
def test_server_data_is_loaded_for_the_rules_that_need_it(aggregator, proxy, public):
    from byzlab.orchestrator.config import ExperimentConfig
    from byzlab.orchestrator.data.datasets import load_dataset
    from byzlab.orchestrator.specs.server_data import prepare_server_data

    cfg = ExperimentConfig(server={"aggregator": aggregator, "proxy_data": {"size": 20}, "public_data": {"size": 5}})
    digits = load_dataset("digits")
    clients, data = prepare_server_data(cfg, digits)
    assert (data.proxy is not None, data.public is not None) == (proxy, public)
    assert len(clients.train_y) == len(digits.train_y) - (20 if proxy else 0)  # a held-out proxy slice
    if public:
        assert data.public.shape == (5, *digits.input_shape) and np.isfinite(data.public).all()
