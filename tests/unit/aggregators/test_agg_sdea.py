"""SDEA (aggregators.sdea): the loss (eqs. 4-6), Cooperative Cluster (eq. 7), the augmentations and the
whole rule on a tiny linear softmax model, values worked by hand."""

import math

import numpy as np
import pytest
import torch

from byzlab import aggregators
from byzlab.aggregators import RoundContext

LN2 = math.log(2.0)


@pytest.fixture(scope="module", autouse=True)
def sdea():
    """aggregators.sdea, imported (which registers "sdea") when these tests run, not when they are collected:
    tests/test_aggregator_invariants.py parametrises over the rules registered at collection, with a context
    that has no public data, until aggregators/__init__ imports sdea and that test provides some."""
    from byzlab.aggregators import sdea as module

    return module


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (16x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------------------------------------- loss


def test_loss_of_one_hot_rows(sdea):
    # P = [[1, 0], [0, 1]]: H(P_1) = H(P_2) = 0 -> L_IS = 0;
    # P_B = [0.5, 0.5] -> H(P_B) = -2 * 0.5 ln 0.5 = ln 2 -> L_CD = -ln 2
    l_is, l_cd = sdea.sdea_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    assert float(l_is) == pytest.approx(0.0, abs=1e-12)
    assert float(l_cd) == pytest.approx(-LN2, rel=1e-12)


def test_loss_of_uniform_rows(sdea):
    # P = [[0.5, 0.5], [0.5, 0.5]]: H(P_i) = ln 2 -> L_IS = ln 2; P_B = [0.5, 0.5] -> L_CD = -ln 2
    l_is, l_cd = sdea.sdea_loss(torch.full((2, 2), 0.5, dtype=torch.float64))
    assert float(l_is) == pytest.approx(LN2, rel=1e-12)
    assert float(l_cd) == pytest.approx(-LN2, rel=1e-12)


def test_loss_of_a_mixed_batch(sdea):
    # P_1 = [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 2 * 0.25 ln 4 = 0.5 ln 2 + ln 2 = 1.5 ln 2
    # P_2 = [1, 0, 0]: H = 0 (0 ln 0 = 0)              -> L_IS = (1.5 ln 2 + 0) / 2 = 0.75 ln 2
    # P_B = [0.75, 0.125, 0.125]: H = 0.75 ln(4/3) + 2 * 0.125 ln 8 = 0.75 (2 ln 2 - ln 3) + 0.75 ln 2
    #     = 0.75 (3 ln 2 - ln 3) = 0.75 ln(8/3)        -> L_CD = -0.75 ln(8/3)
    probs = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], dtype=torch.float64)
    l_is, l_cd = sdea.sdea_loss(probs)
    assert float(l_is) == pytest.approx(0.75 * LN2, rel=1e-12)
    assert float(l_cd) == pytest.approx(-0.75 * math.log(8 / 3), rel=1e-12)
    # eq. 6 on the same batch: L_COL = 0.75 (ln 2 - ln(8/3)) = 0.75 ln(3/4) = -0.2158
    assert float(l_is + l_cd) == pytest.approx(0.75 * math.log(0.75), rel=1e-12)


def test_loss_from_logits_matches_and_stays_finite(sdea):
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.7], [1.0, 1.0, 1.0]], dtype=torch.float64)
    expected = sdea.sdea_loss(torch.softmax(logits, dim=1))
    got = sdea.sdea_loss_from_logits(logits)
    assert torch.allclose(torch.stack(got), torch.stack(expected), atol=1e-12)
    # logits 1e4 apart: softmax underflows to exact zeros, where d entr(p)/dp = -ln p - 1 is infinite;
    # the log-space form still has finite values and gradients (one-hot rows: L_IS = 0, L_CD = -ln 2)
    huge = torch.tensor([[1e4, 0.0], [0.0, 1e4]], requires_grad=True)
    l_is, l_cd = sdea.sdea_loss_from_logits(huge)
    (l_is + l_cd).backward()
    assert l_is.item() == pytest.approx(0.0, abs=1e-6) and l_cd.item() == pytest.approx(-LN2, rel=1e-6)
    assert torch.isfinite(huge.grad).all()


# ---------------------------------------------------------------------------------- Cooperative Cluster


def _groups(labels):
    """The partition as a set of frozensets of indices (label values are arbitrary)."""
    return {frozenset(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)}


def test_finch_two_clusters_and_equal_benign_shares(sdea):
    w = torch.tensor([0.02, 0.03, 0.2, 0.25, 0.25, 0.25], dtype=torch.float64)
    # first neighbours (Euclidean, 1-D): 0.02 <-> 0.03 (0.01 apart); 0.2 -> 0.25 (0.05, its only
    # neighbour closer than 0.17); the 0.25s -> another 0.25 (distance 0): components {0,1}, {2,3,4,5}
    labels = sdea.cluster_weights(w, "finch")
    assert _groups(labels) == {frozenset({0, 1}), frozenset({2, 3, 4, 5})}
    final, malicious = sdea.cooperative_cluster(w, labels)
    # means: 0.025 vs 0.2375 -> {0, 1} is malicious and keeps 0.02, 0.03;
    # the other four share 1 - 0.05 = 0.95 -> 0.2375 each
    assert malicious.tolist() == [True, True, False, False, False, False]
    assert torch.allclose(final, torch.tensor([0.02, 0.03, 0.2375, 0.2375, 0.2375, 0.2375], dtype=torch.float64))
    assert float(final.sum()) == pytest.approx(1.0)


def test_finch_three_clusters_only_the_lowest_is_malicious(sdea):
    w = torch.tensor([0.01, 0.02, 0.15, 0.16, 0.33, 0.33], dtype=torch.float64)
    # mutual first-neighbour pairs: {0.01, 0.02}, {0.15, 0.16}, {0.33, 0.33} -> three clusters
    labels = sdea.cluster_weights(w, "finch")
    assert _groups(labels) == {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})}
    final, malicious = sdea.cooperative_cluster(w, labels)
    # lowest mean 0.015 -> {0, 1} malicious; the other four share 1 - 0.03 = 0.97 -> 0.2425 each
    assert malicious.tolist() == [True, True, False, False, False, False]
    assert torch.allclose(final, torch.tensor([0.01, 0.02, 0.2425, 0.2425, 0.2425, 0.2425], dtype=torch.float64))


def test_single_cluster_gives_uniform_weights(sdea):
    w = torch.tensor([0.05, 0.1, 0.2, 0.65], dtype=torch.float64)
    # first neighbours: 0.05 -> 0.1 (0.05), 0.1 -> 0.05 (0.05 < 0.1), 0.2 -> 0.1 (0.1 < 0.45),
    # 0.65 -> 0.2 (0.45): one chain 0.05 - 0.1 - 0.2 - 0.65, one cluster -> 1/4 each, nobody malicious
    labels = sdea.cluster_weights(w, "finch")
    assert len(np.unique(labels)) == 1
    final, malicious = sdea.cooperative_cluster(w, labels)
    assert torch.allclose(final, torch.full((4,), 0.25, dtype=torch.float64))
    assert not malicious.any()
    # n < 3: FINCH links every point to its first neighbour, so two points are one cluster
    two = torch.tensor([0.1, 0.9])
    final, malicious = sdea.cooperative_cluster(two, sdea.cluster_weights(two, "finch"))
    assert final.tolist() == [0.5, 0.5] and not malicious.any()


def test_kmeans_and_dbscan_clusterings(sdea):
    w = torch.tensor([0.02, 0.03, 0.2, 0.25, 0.25, 0.25], dtype=torch.float64)
    # KMeans (k = 2): centres 0.025 and 0.2375; 0.2 is 0.0375 from the upper centre, 0.175 from the lower
    assert _groups(sdea.cluster_weights(w, "kmeans", seed=3)) == {frozenset({0, 1}), frozenset({2, 3, 4, 5})}
    # DBSCAN, eps = 0.25 / n = 0.25 / 6 = 0.0417, minPts 2 (with the point itself):
    w = torch.tensor([0.01, 0.1, 0.2, 0.23, 0.23, 0.23], dtype=torch.float64)
    # 0.1 - 0.01 = 0.09 > eps and 0.2 - 0.1 = 0.1 > eps: 0.01 and 0.1 have no neighbour -> noise;
    # 0.2, 0.23 x3 are within 0.03 of each other -> one cluster. The noise group {0.01, 0.1} (mean 0.055)
    # is malicious; the other four share 1 - 0.11 = 0.89 -> 0.2225 each
    labels = sdea.cluster_weights(w, "dbscan")
    assert _groups(labels) == {frozenset({0, 1}), frozenset({2, 3, 4, 5})}
    final, malicious = sdea.cooperative_cluster(w, labels)
    assert malicious.tolist() == [True, True, False, False, False, False]
    assert torch.allclose(final, torch.tensor([0.01, 0.1, 0.2225, 0.2225, 0.2225, 0.2225], dtype=torch.float64))
    # identical weights: one cluster for every method
    for method in ("finch", "kmeans", "dbscan"):
        assert len(np.unique(sdea.cluster_weights(torch.full((5,), 0.2), method))) == 1, method


# ------------------------------------------------------------------------------------------ augmentation


def test_weak_augmentation_is_a_flip_and_a_small_shift(sdea):
    x = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8) + 1  # distinct non-zero pixels
    out = sdea.augment(x, "weak", torch.Generator().manual_seed(0))
    # pad = round(0.125 * 8) = 1: each image is x or its mirror image, moved by (dy, dx) in {-1, 0, 1}^2
    # with zeros filling the uncovered border
    for img, src in zip(out, x):
        candidates = []
        for flipped in (src, src.flip(-1)):
            padded = torch.nn.functional.pad(flipped, (1, 1, 1, 1))
            candidates += [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(img, c) for c in candidates)
    assert torch.equal(out, sdea.augment(x, "weak", torch.Generator().manual_seed(0)))  # seeded
    assert sdea.augment(x, "none", torch.Generator()) is x


def test_strong_augmentation_is_weak_plus_erasing(sdea):
    x = torch.arange(4 * 64, dtype=torch.float32).view(4, 1, 8, 8) + 1
    weak = sdea.augment(x, "weak", torch.Generator().manual_seed(5))
    # same seed: the strong transform draws the weak one first; without noise and erasing every image,
    # it differs from weak only on one erased rectangle (at least 0.02 * 64 -> 1 pixel), set to 0
    strong = sdea.augment(x, "strong", torch.Generator().manual_seed(5), noise_std=0.0, erase_prob=1.0)
    changed = strong != weak
    assert (strong[changed] == 0).all()
    assert changed.flatten(1).any(dim=1).all()


# ------------------------------------------------------------------------------------- the whole rule

FEATURES, CLASSES = 16, 4
D = CLASSES * FEATURES + CLASSES


def linear_fn(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A linear softmax model: flat = cat(W.flatten(), b), W [C, F]; logits = x.flatten(1) @ W^T + b."""
    w = flat[: CLASSES * FEATURES].view(CLASSES, FEATURES)
    return x.flatten(1) @ w.T + flat[CLASSES * FEATURES :]


PUBLIC = torch.randn(128, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # 2 batches of 64 per epoch


def context(seed=0, **kw):
    return RoundContext(
        global_params=torch.zeros(D), model_fn=linear_fn, public_data=PUBLIC,
        generator=torch.Generator().manual_seed(seed), num_byzantine=2, **kw,
    )


def benign_and_noisy():
    """4 confident benign models near one linear classifier, 2 "noisy" ones that leave the global model
    (theta_g = 0: every prediction uniform, entropy ln 4) where it is."""
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(D, generator=g)
    benign = centre + 0.3 * torch.randn(4, D, generator=g)
    return torch.cat([benign, torch.zeros(2, D)])


def test_high_entropy_clients_get_less_weight_and_are_rejected():
    updates = benign_and_noisy()
    result = aggregators.build("sdea")(updates, context())
    # any weight on the zero updates pulls the model towards uniform predictions (L_IS up): their learned
    # weights fall below the benign ones, FINCH puts the two (equal) zero-update weights in one cluster
    # with the lowest mean -> malicious, keeping their weight; the benign four share the rest equally
    w = result.weights
    assert result.accepted.tolist() == [True, True, True, True, False, False]
    assert float(w[4]) == pytest.approx(float(w[5])) and float(w[4]) < 1 / 6
    assert torch.allclose(w[:4], torch.full((4,), (1 - 2 * float(w[4])) / 4))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(result.update, w @ updates)
    # (the benign weights may split into several FINCH clusters of their own; all of them share equally)
    assert result.info["malicious_cluster_size"] == 2 and result.info["num_clusters"] >= 2
    assert result.info["skipped_steps"] == 0 and math.isfinite(result.info["loss_final"])


def test_identical_updates_return_that_update():
    u = benign_and_noisy()[0]
    result = aggregators.build("sdea")(u.repeat(5, 1), context())
    # equal updates -> equal gradients for every M_k -> M stays equal -> FINCH on 5 equal weights: one
    # cluster -> 1/5 each -> sum_k u / 5 = u
    assert torch.allclose(result.weights, torch.full((5,), 0.2))
    assert torch.allclose(result.update, u, atol=1e-6)
    assert result.accepted.all()


def test_permuting_clients_permutes_weights_and_keeps_the_update():
    updates = benign_and_noisy()
    perm = torch.tensor([4, 2, 0, 5, 3, 1])
    rule = aggregators.build("sdea", cooperative_cluster=False)  # compare the learned weights themselves
    base, permuted = rule(updates, context()), rule(updates[perm], context())
    assert torch.allclose(permuted.weights, base.weights[perm], atol=1e-5)
    assert torch.allclose(permuted.update, base.update, atol=1e-5)
    full = aggregators.build("sdea")
    base, permuted = full(updates, context()), full(updates[perm], context())
    assert torch.equal(permuted.accepted, base.accepted[perm])
    assert torch.allclose(permuted.weights, base.weights[perm], atol=1e-5)
    assert torch.allclose(permuted.update, base.update, atol=1e-5)


def test_deterministic_with_the_same_seed():
    updates = benign_and_noisy()
    rule = aggregators.build("sdea", augmentation="strong", cooperative_cluster=False)
    a, b = rule(updates, context(seed=7)), rule(updates, context(seed=7))
    assert torch.equal(a.weights, b.weights) and torch.equal(a.update, b.update) and a.info == b.info
    c = rule(updates, context(seed=8))  # other batches and augmentations: other weights
    assert not torch.equal(a.weights, c.weights)


def test_ablations():
    updates = benign_and_noisy()
    # Cooperative Cluster off: the learned softmax(M) is final (the benign weights are not equalised) and
    # every client is accepted
    off = aggregators.build("sdea", cooperative_cluster=False)(updates, context())
    assert off.accepted.all() and off.info["num_clusters"] == 1 and off.info["malicious_cluster_size"] == 0
    assert float(off.weights[:4].max() - off.weights[:4].min()) > 1e-3
    assert float(off.weights[4:].max()) < float(off.weights[:4].min())
    # no loss term: M stays 0 -> equal weights (Cooperative Cluster: one cluster), no loss reported
    none = aggregators.build("sdea", instance_sharpness=False, class_diversity=False)(updates, context())
    assert torch.allclose(none.weights, torch.full((6,), 1 / 6)) and math.isnan(none.info["loss_final"])
    # Class Diversity alone rewards spread-out batch predictions, which uniform models give best: without
    # Instance Sharpness the zero updates gain weight (above 1/6) instead of losing it
    cd_only = aggregators.build("sdea", instance_sharpness=False, cooperative_cluster=False)(updates, context())
    assert float(cd_only.weights[4]) > 1 / 6 > float(off.weights[4])


def test_class_diversity_counters_heterogeneous_sharpness():
    # "heterogeneous sharpness" (§3.2): two benign clients are very sure of class 0 for every image (bias 6:
    # P = e^6 / (e^6 + 3) = 0.993, H = 0.05), two predict diversely but less sharply (random W, H ~ 0.87).
    # Instance Sharpness alone tilts towards the class-0 pair; adding Class Diversity (P_B of the pair is
    # one-hot, H(P_B) ~ 0.05 vs ~1.38) tilts towards the diverse pair instead
    g = torch.Generator().manual_seed(0)
    sharp = torch.zeros(D)
    sharp[CLASSES * FEATURES] = 6.0
    diverse = torch.cat([0.5 * torch.randn(CLASSES * FEATURES, generator=g), torch.zeros(CLASSES)])
    noise = 0.01 * torch.randn(2, D, generator=g)
    updates = torch.stack([sharp, sharp + noise[0], diverse, diverse + noise[1]])
    is_only = aggregators.build("sdea", class_diversity=False, cooperative_cluster=False)(updates, context())
    both = aggregators.build("sdea", cooperative_cluster=False)(updates, context())
    assert float(is_only.weights[:2].sum()) > 0.5 > float(both.weights[:2].sum())


def test_kmeans_and_dbscan_in_the_rule():
    updates = benign_and_noisy()
    for method in ("kmeans", "dbscan"):
        result = aggregators.build("sdea", clustering=method)(updates, context())
        assert result.accepted.tolist() == [True, True, True, True, False, False], method


def test_huge_update_steps_are_skipped_not_propagated():
    updates = benign_and_noisy()
    updates[5] = 3e38  # finite, but the mixed model's logits / the gradient overflow
    result = aggregators.build("sdea", epochs=1, cooperative_cluster=False)(updates, context())
    assert result.info["skipped_steps"] > 0
    assert torch.isfinite(result.weights).all()


def test_single_client_and_missing_context():
    u = benign_and_noisy()[:1]
    result = aggregators.build("sdea")(u, context())
    assert result.weights.tolist() == [1.0] and torch.equal(result.update, u[0])
    rule = aggregators.build("sdea")
    with pytest.raises(ValueError, match="public_data"):
        rule(u, RoundContext(global_params=torch.zeros(D), model_fn=linear_fn))
    with pytest.raises(ValueError, match="model_fn, public_data"):
        rule(u, RoundContext(global_params=torch.zeros(D)))
    with pytest.raises(ValueError, match="global_params"):
        rule(u, RoundContext(model_fn=linear_fn, public_data=PUBLIC))


def test_params_are_documented_and_the_rule_asks_for_public_data(sdea):
    assert "sdea" in aggregators.names()
    assert {"global_params", "model_fn", "public_data"} <= aggregators.aggregator_class("sdea").needs
    assert "proxy_data" not in aggregators.aggregator_class("sdea").needs
    for name, field in sdea.SDEAParams.model_fields.items():
        assert field.description, name
    p = sdea.SDEAParams()
    assert (p.lr, p.epochs, p.batch_size, p.clustering, p.augmentation) == (0.005, 20, 64, "finch", "weak")
    with pytest.raises(ValueError):
        aggregators.build("sdea", clustering="hdbscan")
