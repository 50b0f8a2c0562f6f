"""FLTrust and Sageflow (aggregators.proxy) on a tiny linear softmax model, values worked by hand."""

import math

import pytest
import torch

from byzlab import aggregators
from byzlab.aggregators import RoundContext
from byzlab.orchestrator.core.layout import Layer

FEATURES, CLASSES = 2, 2


def linear_fn(features: int, classes: int):
    """logits = x @ W + b with flat = cat(W.flatten(), b, anything else): extra coordinates are ignored."""

    def forward(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w = flat[: features * classes].view(features, classes)
        b = flat[features * classes : features * classes + classes]
        return x @ w + b

    return forward


def ce_gradient(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Analytic gradient of the mean cross-entropy of the linear model: G = (softmax - onehot) / m,
    dW = x^T G, db = sum_rows G (no autograd)."""
    features = x.shape[1]
    w = flat[: features * classes].view(features, classes)
    b = flat[features * classes : features * classes + classes]
    g = (torch.softmax(x @ w + b, dim=1) - torch.eye(classes, dtype=flat.dtype)[y]) / len(y)
    grad = torch.zeros_like(flat)
    grad[: features * classes] = (x.T @ g).flatten()
    grad[features * classes : features * classes + classes] = g.sum(dim=0)
    return grad


# FLTrust problem: 4 proxy samples, 2 features, 2 classes, d = 6
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1, 0])
THETA = torch.tensor([0.3, -0.2, 0.1, 0.4, 0.05, -0.1], dtype=torch.float64)


def fl_context(theta=THETA, layers=(), seed=0, **kw):
    return RoundContext(
        layers=layers,
        global_params=theta,
        model_fn=linear_fn(FEATURES, CLASSES),
        proxy_data=(X, Y),
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def one_step_g0(lr=0.5):
    """One full-batch GD step from THETA: g0 = -lr * grad L(THETA)."""
    return -lr * ce_gradient(THETA, X, Y, CLASSES)


def orthogonal_to(v: torch.Tensor, length: float) -> torch.Tensor:
    """A vector orthogonal to v with the given length (Gram-Schmidt of a fixed vector)."""
    a = torch.arange(1.0, v.numel() + 1, dtype=v.dtype)
    w = a - (a @ v) / (v @ v) * v
    return w / w.norm() * length


# ---------------------------------------------------------------------------------------------- FLTrust


def test_fltrust_server_update_is_one_gradient_step():
    g0 = one_step_g0()
    rule = aggregators.build("fltrust", server_lr=0.5, server_steps=1, batch_size=4)
    # one client along g0 but 3x longer: trust 1, rescaled to ||g0|| -> the aggregate is g0 itself
    result = rule(3.0 * g0[None, :], fl_context())
    assert torch.allclose(result.update, g0, atol=1e-12)
    assert result.info["server_update_norm"] == pytest.approx(float(g0.norm()), rel=1e-9)
    assert result.info["trust_mean"] == pytest.approx(1.0)
    assert result.accepted.tolist() == [True]


def test_fltrust_server_update_two_momentum_steps():
    lr, m = 0.5, 0.9
    grad0 = ce_gradient(THETA, X, Y, CLASSES)
    theta1 = THETA - lr * grad0  # first step: velocity = grad
    velocity = m * grad0 + ce_gradient(theta1, X, Y, CLASSES)
    g0 = theta1 - lr * velocity - THETA
    rule = aggregators.build("fltrust", server_lr=lr, server_momentum=m, server_steps=2, batch_size=100)
    result = rule(g0[None, :] * 0.1, fl_context())
    assert torch.allclose(result.update, g0, atol=1e-12)


def test_fltrust_trust_scores_and_rescaling_by_hand():
    g0 = one_step_g0()
    w = orthogonal_to(g0, float(g0.norm()))
    # u1 = 10 g0: cos 1, rescaled to g0; u2 = -g0: cos -1, trust 0; u3 = g0 + w: cos 1/sqrt(2), rescaled to
    # ||g0|| (g0 + w) / (sqrt(2) ||g0||) = (g0 + w) / sqrt(2)
    updates = torch.stack([10.0 * g0, -g0, g0 + w])
    trust = torch.tensor([1.0, 0.0, 1.0 / math.sqrt(2)], dtype=torch.float64)
    expected = (1.0 * g0 + trust[2] * (g0 + w) / math.sqrt(2)) / trust.sum()
    result = aggregators.build("fltrust", server_lr=0.5, server_steps=1, batch_size=4)(updates, fl_context())
    assert torch.allclose(result.update, expected, atol=1e-12)
    assert torch.allclose(result.weights, trust / trust.sum(), atol=1e-12)
    assert result.accepted.tolist() == [True, False, True]
    assert result.info["trust_mean"] == pytest.approx(float(trust.mean()))
    assert result.info["num_accepted"] == 2.0


def test_fltrust_excludes_sign_flipped_and_far_outliers():
    g0 = one_step_g0()
    honest = torch.stack([g0 * 2.0, g0 + orthogonal_to(g0, 0.5 * float(g0.norm()))])
    flipped = -5.0 * honest[0]
    far = -1e6 * g0 + orthogonal_to(g0, 1e5)  # huge and pointing away from g0
    updates = torch.cat([honest, flipped[None], far[None]])
    rule = aggregators.build("fltrust", server_lr=0.5, server_steps=1, batch_size=4)
    result = rule(updates, fl_context())
    assert result.accepted.tolist() == [True, True, False, False]
    assert result.weights[2:].tolist() == [0.0, 0.0]
    assert torch.allclose(result.update, rule(honest, fl_context()).update, atol=1e-12)
    assert result.update.norm() <= g0.norm() * (1 + 1e-9)  # a convex mix of vectors of norm ||g0||


def test_fltrust_identical_updates():
    g0 = one_step_g0()
    rule = aggregators.build("fltrust", server_lr=0.5, server_steps=1, batch_size=4)
    u = g0 * 7.0 + orthogonal_to(g0, 3.0 * float(g0.norm()))  # cos > 0
    result = rule(u.repeat(4, 1), fl_context())
    assert torch.allclose(result.update, g0.norm() * u / u.norm(), atol=1e-12)  # not u: rescaled to ||g0||
    assert torch.allclose(result.weights, torch.full((4,), 0.25, dtype=torch.float64))
    # identical updates against g0: every trust 0 -> the zero update, nobody accepted
    against = rule((-u).repeat(3, 1), fl_context())
    assert torch.equal(against.update, torch.zeros(6, dtype=torch.float64))
    assert against.accepted.tolist() == [False] * 3 and against.weights.tolist() == [0.0] * 3


def test_fltrust_zero_update_gets_no_trust():
    g0 = one_step_g0()
    updates = torch.stack([torch.zeros(6, dtype=torch.float64), g0])
    result = aggregators.build("fltrust", server_lr=0.5, server_steps=1, batch_size=4)(updates, fl_context())
    assert result.accepted.tolist() == [False, True]
    assert torch.allclose(result.update, g0, atol=1e-12)


def test_fltrust_buffers_are_averaged_not_judged():
    """A buffer coordinate (BatchNorm statistics) takes no gradient: trust and norms ignore it and the
    aggregate's buffer entry is the trust-weighted mean of the clients' buffer deltas."""
    layers = (Layer("w", (2, 2), 0, "weight"), Layer("b", (2,), 4, "bias"), Layer("stat", (1,), 6, "buffer"))
    theta = torch.cat([THETA, torch.tensor([2.0], dtype=torch.float64)])
    g0 = one_step_g0()
    w = orthogonal_to(g0, float(g0.norm()))
    updates = torch.stack([
        torch.cat([4.0 * g0, torch.tensor([50.0], dtype=torch.float64)]),  # a big buffer delta changes no trust
        torch.cat([g0 + w, torch.tensor([-1.0], dtype=torch.float64)]),
    ])
    trust = torch.tensor([1.0, 1.0 / math.sqrt(2)], dtype=torch.float64)
    weights = trust / trust.sum()
    rule = aggregators.build("fltrust", server_lr=0.5, server_steps=1, batch_size=4)
    result = rule(updates, fl_context(theta=theta, layers=layers))
    assert torch.allclose(result.weights, weights, atol=1e-12)
    assert torch.allclose(result.update[:6], weights[0] * g0 + weights[1] * (g0 + w) / math.sqrt(2), atol=1e-12)
    assert result.update[6] == pytest.approx(float(weights[0] * 50.0 - weights[1] * 1.0))


def test_fltrust_minibatches_come_from_the_generator():
    x = torch.randn(8, FEATURES, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    u = torch.ones(1, 6, dtype=torch.float64)
    rule = aggregators.build("fltrust", server_lr=0.5, server_steps=3, batch_size=3)

    def norm_g0(seed):
        ctx = fl_context(seed=seed)
        ctx.proxy_data = (x, y)
        return rule(u, ctx).info["server_update_norm"]

    assert norm_g0(5) == norm_g0(5)
    assert norm_g0(5) != norm_g0(6)
    ctx = fl_context()
    ctx.generator = None  # falls back to a fixed seed: still deterministic
    assert rule(u, ctx).info["server_update_norm"] == rule(u, ctx).info["server_update_norm"]


def test_fltrust_params_and_registry():
    assert "proxy_data" in aggregators.aggregator_class("fltrust").needs
    assert "proxy_data" not in aggregators.aggregator_class("fedavg").needs
    defaults = aggregators.build("fltrust").params
    assert (defaults.server_lr, defaults.server_momentum, defaults.server_steps, defaults.batch_size) == (
        0.05, 0.9, 8, 32
    )
    with pytest.raises(ValueError, match="parameter 'server_steps'"):
        aggregators.build("fltrust", server_steps=0)
    with pytest.raises(ValueError, match="parameter 'server_lr'"):
        aggregators.build("fltrust", server_lr=-1.0)


# ---------------------------------------------------------------------------------------------- Sageflow

# Sageflow problem: 3 classes, 2 features, d = 9; 4 proxy samples with labels 0, 0, 0, 1
SF_FEATURES, SF_CLASSES = 2, 3
SX = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7], [2.0, 1.0]], dtype=torch.float64)
SY = torch.tensor([0, 0, 0, 1])
SF_THETA = torch.tensor([0.2, -0.1, 0.3, 0.5, 0.1, -0.4, 1.0, 0.0, -1.0], dtype=torch.float64)


def sf_context(**kw):
    return RoundContext(
        global_params=SF_THETA,
        model_fn=linear_fn(SF_FEATURES, SF_CLASSES),
        proxy_data=(SX, SY),
        generator=torch.Generator().manual_seed(0),
        **kw,
    )


def constant_model(bias) -> torch.Tensor:
    """Flat parameters with W = 0 and b = bias: the same prediction softmax(bias) for every input."""
    weights = torch.zeros(SF_FEATURES * SF_CLASSES, dtype=torch.float64)
    return torch.cat([weights, torch.tensor(bias, dtype=torch.float64)])


def entropy_of(bias) -> float:
    z = sum(math.exp(b) for b in bias)
    return -sum(math.exp(b) / z * (b - math.log(z)) for b in bias)


def test_sageflow_uniform_model_is_filtered_and_losses_weight_the_rest():
    # A: b = (4, 0, 0) -> p = e^4 / (e^4 + 2) on class 0, q = 1 / (e^4 + 2) elsewhere
    # B: b = (0, 4, 0) -> p on class 1. Labels 0, 0, 0, 1:
    #   loss_A = (3 (-ln p) + (-ln q)) / 4,  loss_B = ((-ln p) + 3 (-ln q)) / 4
    # U: W = b = 0 -> uniform prediction, entropy ln 3 = 1.0986 >= 1.0: filtered.
    p = math.exp(4) / (math.exp(4) + 2)
    q = 1 / (math.exp(4) + 2)
    loss_a = (3 * -math.log(p) - math.log(q)) / 4
    loss_b = (-math.log(p) + 3 * -math.log(q)) / 4
    models = torch.stack([constant_model([4.0, 0.0, 0.0]), constant_model([0.0, 4.0, 0.0]), constant_model([0.0] * 3)])
    updates = models - SF_THETA  # client i's model is theta + Delta_i
    counts = torch.tensor([10.0, 30.0, 5.0])
    delta = 2.0
    beta = torch.tensor([10.0 / loss_a**delta, 30.0 / loss_b**delta, 0.0], dtype=torch.float64)
    weights = beta / beta.sum()

    rule = aggregators.build("sageflow", delta=delta)
    result = rule(updates, sf_context(num_samples=counts))
    assert result.accepted.tolist() == [True, True, False]
    assert torch.allclose(result.weights, weights, atol=1e-12)
    assert torch.allclose(result.update, weights @ updates, atol=1e-12)
    h = entropy_of([4.0, 0.0, 0.0])
    assert h < 1.0 < math.log(3)
    assert result.info["entropy_mean"] == pytest.approx((2 * h + math.log(3)) / 3)
    assert result.info["loss_mean"] == pytest.approx((loss_a + loss_b) / 2)

    # uniform weighting ignores the claimed counts; delta = 0 is the plain mean of the kept clients
    uniform = aggregators.build("sageflow", delta=delta, weighting="uniform")(updates, sf_context(num_samples=counts))
    expected = torch.tensor([1 / loss_a**delta, 1 / loss_b**delta], dtype=torch.float64)
    assert torch.allclose(uniform.weights[:2], expected / expected.sum(), atol=1e-12)
    plain = aggregators.build("sageflow", delta=0.0, weighting="uniform")(updates, sf_context())
    assert torch.allclose(plain.update, updates[:2].mean(dim=0), atol=1e-12)


def test_sageflow_threshold_is_strict_and_configurable():
    updates = torch.stack([constant_model([4.0, 0.0, 0.0]), constant_model([0.0] * 3)]) - SF_THETA
    loose = aggregators.build("sageflow", entropy_threshold=1.2)(updates, sf_context())
    assert loose.accepted.tolist() == [True, True]
    at = aggregators.build("sageflow", entropy_threshold=entropy_of([4.0, 0.0, 0.0]) - 1e-9)(updates, sf_context())
    assert at.accepted.tolist() == [False, False]
    assert torch.equal(at.update, torch.zeros(9, dtype=torch.float64))  # nothing kept: the global model stays
    assert at.weights.tolist() == [0.0, 0.0]


def test_sageflow_excludes_sign_flipped_model_and_downweights_far_outlier():
    confident = 4.0 * constant_model([1.0, 0.0, -1.0]) + torch.tensor([0.5] * 6 + [0.0] * 3, dtype=torch.float64)
    ctx = sf_context()
    ctx.global_params = confident
    gen = torch.Generator().manual_seed(3)
    honest = 0.05 * torch.randn(3, 9, generator=gen, dtype=torch.float64)
    # Sageflow's model-poisoning attack: the model replaced by -0.1 x the global model (Delta = -1.1 theta):
    # small logits, near-uniform predictions, high entropy
    flipped = -1.1 * confident
    # a far outlier: a huge random model, confident but wrong -> low entropy, enormous loss
    far = 1e3 * torch.randn(9, generator=gen, dtype=torch.float64)
    updates = torch.cat([honest, flipped[None], far[None]])
    rule = aggregators.build("sageflow")
    result = rule(updates, ctx)
    assert result.accepted[:3].all() and not result.accepted[3]
    assert result.weights[3] == 0.0
    assert result.weights[4] < 1e-3  # kept by the entropy filter, silenced by the loss weighting
    assert (result.update - rule(honest, ctx).update).norm() < 1e-3 * far.norm()


def test_sageflow_sdea_code_weighs_every_client_alike_as_the_marsfl_server_does():
    """MarsFL's SageFlowSever scores the global model for every client: alpha_j = q / L**5 + 1e-5 is the same
    for all j, so the weights are 1/n. On the first test's clients the uniform model U, which the paper's
    Sageflow drops, and the claimed counts, which it weighs by, change nothing: the plain mean of all three."""
    models = torch.stack([constant_model([4.0, 0.0, 0.0]), constant_model([0.0, 4.0, 0.0]), constant_model([0.0] * 3)])
    updates = models - SF_THETA
    counts = torch.tensor([10.0, 30.0, 5.0])
    result = aggregators.build("sageflow", variant="sdea_code")(updates, sf_context(num_samples=counts))
    assert result.accepted.tolist() == [True, True, True]
    assert result.weights.tolist() == [1 / 3] * 3
    assert torch.allclose(result.update, (updates[0] + updates[1] + updates[2]) / 3, atol=1e-15)
    paper = aggregators.build("sageflow")(updates, sf_context(num_samples=counts))
    assert paper.accepted.tolist() == [True, True, False]


def test_sageflow_identical_updates_return_that_update():
    u = constant_model([3.0, 0.0, 0.0]) - SF_THETA
    result = aggregators.build("sageflow")(u.repeat(4, 1), sf_context(num_samples=torch.tensor([1.0, 2.0, 3.0, 4.0])))
    assert torch.allclose(result.update, u, atol=1e-12)
    assert result.accepted.all()


# ---------------------------------------------------------------------------------------------- both


@pytest.mark.parametrize("name", ["fltrust", "sageflow"])
def test_missing_server_data_is_a_clear_error(name):
    rule = aggregators.build(name)
    updates = torch.zeros(2, 6, dtype=torch.float64)
    base = dict(global_params=THETA, model_fn=linear_fn(FEATURES, CLASSES), proxy_data=(X, Y))
    for missing in ("model_fn", "proxy_data", "global_params"):
        with pytest.raises(ValueError, match=f"'{name}'.*missing {missing}"):
            rule(updates, RoundContext(**{**base, missing: None}))
    with pytest.raises(ValueError, match="missing global_params, model_fn, proxy_data"):
        rule(updates, RoundContext())
    with pytest.raises(ValueError, match="coordinates"):
        rule(torch.zeros(2, 5, dtype=torch.float64), RoundContext(**base))
    assert {"global_params", "model_fn", "proxy_data"} <= aggregators.aggregator_class(name).needs


@pytest.mark.parametrize("name", ["fltrust", "sageflow"])
def test_nonfinite_rows_are_dropped(name):
    if name == "fltrust":
        good = one_step_g0()[None, :]
        ctx = fl_context(num_samples=torch.tensor([1.0, 2.0]))
        rule = aggregators.build(name, server_lr=0.5, server_steps=1, batch_size=4)
    else:
        good = (constant_model([4.0, 0.0, 0.0]) - SF_THETA)[None, :]
        ctx = sf_context(num_samples=torch.tensor([1.0, 2.0]))
        rule = aggregators.build(name)
    bad = torch.full_like(good, float("nan"))
    result = rule(torch.cat([bad, good]), ctx)
    assert result.accepted.tolist() == [False, True]
    assert result.weights.tolist() == [0.0, 1.0]
    assert torch.allclose(result.update, good[0], atol=1e-12)
    assert result.info["nonfinite_dropped"] == 1.0
