"""Properties every registered aggregation rule must have, checked rule by rule."""

import typing

import pytest

from byzlab import aggregators
from byzlab.orchestrator import testing

# The properties are the public test helper's (byzlab.orchestrator.testing), which plug-in authors run on
# their own rules; this file runs them on every built-in, with the exceptions each rule has by design.

# In this toy problem (3 classes, a linear model) every model predicts close to uniformly, i.e. with entropy
# near ln 3 = 1.10; Sageflow's default threshold (1.0, the paper's) would reject every client.
TOY_PARAMS = {"sageflow": {"entropy_threshold": 2.0}}

ALL = aggregators.names()


@pytest.mark.parametrize("name", ALL)
def test_permuting_clients_permutes_decisions_and_keeps_the_update(name):
    testing.check_permutation_invariance(name, TOY_PARAMS.get(name))


@pytest.mark.parametrize("name", ALL)
def test_output_has_the_updates_shape_dtype_and_device_and_is_finite(name):
    testing.check_aggregator_output(name, TOY_PARAMS.get(name))


# Rules whose output for n identical updates u is not u, and why.
NOT_IDENTITY = {
    "fltrust": "rescales every update to the norm of the server's own update",
    "sparsefed": "sends only the top-k coordinates of the (clipped) mean",
    "lasa": "sparsifies every update: identical inputs return their top-k part",
}


@pytest.mark.parametrize("name", ALL)
def test_identical_updates_return_that_update(name):
    if name in NOT_IDENTITY:
        pytest.skip(NOT_IDENTITY[name])
    testing.check_identical_updates(name, TOY_PARAMS.get(name))


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
def test_one_far_outlier_is_excluded_or_bounded(name):
    if name in NOT_OUTLIER_ROBUST:
        pytest.skip(NOT_OUTLIER_ROBUST[name])
    params = {**TOY_PARAMS.get(name, {}), **OUTLIER_PARAMS.get(name, {})}
    testing.check_outlier_bounded(name, params, rescales=name in RESCALES)


@pytest.mark.parametrize("name", ALL)
def test_nan_and_inf_rows_never_reach_the_aggregate(name):
    testing.check_nonfinite_rows(name, TOY_PARAMS.get(name))


@pytest.mark.parametrize("name", ALL)
def test_state_saves_loads_with_weights_only_and_aggregates_alike(name):
    testing.check_state_round_trip(name, TOY_PARAMS.get(name))


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
