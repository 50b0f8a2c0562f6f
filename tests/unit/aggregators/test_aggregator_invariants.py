"""Properties every registered aggregation rule must have, checked rule by rule."""

import typing

import pytest
import torch

from byzlab import aggregators
from byzlab.aggregators import RoundContext

N = 10
CLASSES = 3
D = 8 * CLASSES + CLASSES  # exactly the linear model's parameters


def _model_fn(flat, x):
    """A linear softmax model over 8 features: the smallest model FLTrust / Sageflow can train."""
    weight = flat[: 8 * CLASSES].view(8, CLASSES)
    return x @ weight + flat[8 * CLASSES : 8 * CLASSES + CLASSES]


def _context(n, num_byzantine=2, seed=0, perm=None):
    g = torch.Generator().manual_seed(123)
    counts = torch.randint(20, 60, (N,), generator=g).float()
    gaps = torch.rand(N, generator=g)
    proxy_x = torch.randn(40, 8, generator=g)
    proxy_y = torch.randint(0, CLASSES, (40,), generator=g)
    ids = torch.arange(N)
    if perm is not None:
        counts, gaps, ids = counts[perm], gaps[perm], ids[perm]
    return RoundContext(
        client_ids=ids[:n], num_samples=counts[:n], loss_gaps=gaps[:n], num_byzantine=num_byzantine,
        global_params=torch.zeros(D), generator=torch.Generator().manual_seed(seed), model_fn=_model_fn,
        proxy_data=(proxy_x, proxy_y), public_data=torch.randn(40, 8, generator=g), round=1,
    )


# In this toy problem (3 classes, a linear model) every model predicts close to uniformly, i.e. with entropy
# near ln 3 = 1.10; Sageflow's default threshold (1.0, the paper's) would reject every client.
TOY_PARAMS = {"sageflow": {"entropy_threshold": 2.0}}


def _build(name, **params):
    return aggregators.build(name, **{**TOY_PARAMS.get(name, {}), **params})


ALL = aggregators.names()


@pytest.mark.parametrize("name", ALL)
def test_permuting_clients_permutes_decisions_and_keeps_the_update(clustered_updates, name):
    updates, _ = clustered_updates(D, n=N)
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    base = _build(name)(updates, _context(N))
    permuted = _build(name)(updates[perm], _context(N, perm=perm))
    assert torch.allclose(permuted.update, base.update, atol=1e-5), name
    if base.weights is not None:
        assert torch.allclose(permuted.weights, base.weights[perm], atol=1e-5)
    if base.accepted is not None:
        assert torch.equal(permuted.accepted, base.accepted[perm])


# Rules whose output for n identical updates u is not u, and why.
NOT_IDENTITY = {
    "fltrust": "rescales every update to the norm of the server's own update",
    "sparsefed": "sends only the top-k coordinates of the (clipped) mean",
    "lasa": "sparsifies every update: identical inputs return their top-k part",
}


@pytest.mark.parametrize("name", ALL)
def test_identical_updates_return_that_update(clustered_updates, name):
    u = clustered_updates(D, n=N)[1]
    result = _build(name)(u.repeat(N, 1), _context(N))
    if name in NOT_IDENTITY:
        pytest.skip(NOT_IDENTITY[name])
    assert torch.allclose(result.update, u, atol=1e-5), name


# Rules that do not bound a single far outlier's influence, and why.
NOT_OUTLIER_ROBUST = {
    "fedavg": "the plain mean: one update can move it anywhere",
    "foolsgold": "defends against sybils (similar updates), not against a single outlier",
    "sageflow": "a confidently wrong model passes its entropy filter; loss weighting only shrinks it "
    "(tests/test_agg_proxy.py checks that shrinking and the exclusion of a sign-flipped model)",
    "sdea": "catches attackers whose mixed model predicts with high entropy; this outlier makes it more "
    "confident (SDEA paper §3.3, limitation ii)",
}
# Rules whose aggregate is not on the scale of the honest updates: only the exclusion is checked.
RESCALES = {"fltrust": "rescales every update to the norm of the server's own update"}


# Clipping rules bound an outlier's influence by their threshold / n: the threshold must be on the scale of
# honest updates (here about 0.26) for the bound to mean anything.
OUTLIER_PARAMS = {"centered_clipping": {"tau": 0.5}, "norm_bound": {"threshold": 0.5}, "sparsefed": {"clip": 0.5}}


@pytest.mark.parametrize("name", ALL)
def test_one_far_outlier_is_excluded_or_bounded(clustered_updates, name):
    updates, centre = clustered_updates(D, n=N)
    updates[4] = -100 * centre  # far from the cluster and opposed to it
    result = _build(name, **OUTLIER_PARAMS.get(name, {}))(updates, _context(N, num_byzantine=1))
    if name in NOT_OUTLIER_ROBUST:
        pytest.skip(NOT_OUTLIER_ROBUST[name])
    honest_mean = torch.cat([updates[:4], updates[5:]]).mean(dim=0)
    if name not in RESCALES:
        assert torch.linalg.vector_norm(result.update - honest_mean) < 0.5 * torch.linalg.vector_norm(centre), name
    if result.accepted is not None:
        assert not result.accepted[4], f"{name} accepted the outlier"
    if result.weights is not None:
        assert result.weights[4] < 0.05, f"{name} gave the outlier weight {result.weights[4]:.3f}"


@pytest.mark.parametrize("name", ALL)
def test_nan_and_inf_rows_never_reach_the_aggregate(clustered_updates, name):
    updates, _ = clustered_updates(D, n=N)
    updates[2, 5] = float("nan")
    updates[7] = float("inf")
    rule = _build(name)
    result = rule(updates, _context(N))
    if not rule.drops_nonfinite:  # rules that cannot filter return a non-finite aggregate, which the server refuses
        assert not torch.isfinite(result.update).all()
        return
    assert torch.isfinite(result.update).all(), name
    assert not result.accepted[2] and not result.accepted[7]
    if result.weights is not None:
        assert result.weights[2] == 0 and result.weights[7] == 0
    assert result.info["nonfinite_dropped"] == 2


def _schema_argument(cls, base):
    """The parameter schema ``cls`` binds ``base``'s generic parameter to (a class, or a TypeVar when the rule
    is itself generic): the first parametrised base found along the MRO."""
    for klass in cls.__mro__:
        for orig in klass.__dict__.get("__orig_bases__", ()):
            origin, args = typing.get_origin(orig), typing.get_args(orig)
            if origin is not None and args and issubclass(origin, base):
                return args[0]
    raise AssertionError(f"{cls.__name__} does not parametrise {base.__name__}")


@pytest.mark.parametrize("name", ALL)
def test_the_generic_parameter_is_the_params_schema(name):
    """``class Krum(Aggregator[KrumParams])`` with ``Params = KrumParams``: the type ``self.params`` is
    declared with is the schema the registry validates with."""
    cls = aggregators.aggregator_class(name)
    assert _schema_argument(cls, aggregators.Aggregator) is cls.Params
    assert type(aggregators.build(name).params) is cls.Params
