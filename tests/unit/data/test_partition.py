import numpy as np
import pytest

from byzlab.orchestrator.data.partition import (
    PARTITION_SCHEMES,
    dirichlet,
    label_histograms,
    lognormal,
    partition_hash,
    shards,
)

NUM_CLASSES = 10
# Unequal classes: class c has 40 + 20·c samples (1,300 in all), in a shuffled order.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(NUM_CLASSES), 40 + 20 * np.arange(NUM_CLASSES)))

SCHEMES = {
    "iid": {},
    "dirichlet": {"beta": 0.5},
    "shards": {"classes_per_client": 2},
    "lognormal": {"sigma": 1.0},
    "lognormal-one-class": {"sigma": 1.0, "label_skew": "one_class"},
    "uniform_sizes": {},
}


def _partition(scheme: str, seed: int, num_clients: int = 20) -> list[np.ndarray]:
    name = scheme.removesuffix("-one-class")
    return PARTITION_SCHEMES.get(name)(LABELS, num_clients, np.random.default_rng(seed), **SCHEMES[scheme])


def _histograms(parts: list[np.ndarray]) -> np.ndarray:
    return label_histograms(LABELS, parts, NUM_CLASSES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_sample_is_assigned_exactly_once(scheme):
    parts = _partition(scheme, seed=0)
    assert len(parts) == 20
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates within a client
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partition_and_different_seed_different(scheme):
    first, again, other = _partition(scheme, 7), _partition(scheme, 7), _partition(scheme, 8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert partition_hash(first) == partition_hash(again)
    assert partition_hash(first) != partition_hash(other)


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(part) for part in _partition("iid", seed=0, num_clients=7)]
    assert max(sizes) - min(sizes) <= 1


def _mean_max_class_share(beta: float) -> float:
    shares = []
    for seed in range(5):
        hist = _histograms(dirichlet(LABELS, 10, np.random.default_rng(seed), beta=beta, min_samples=1))
        shares.append(np.mean(hist.max(axis=1) / hist.sum(axis=1)))
    return float(np.mean(shares))


def test_dirichlet_smaller_beta_gives_more_label_skew():
    skewed, mild = _mean_max_class_share(0.1), _mean_max_class_share(10.0)
    assert skewed > 0.5
    assert mild < 0.3
    assert skewed > mild + 0.3


def test_dirichlet_respects_min_samples():
    for seed in range(5):
        parts = dirichlet(LABELS, 20, np.random.default_rng(seed), beta=0.3, min_samples=25)
        assert min(len(part) for part in parts) >= 25


def test_dirichlet_raises_when_min_samples_is_impossible():
    with pytest.raises(ValueError, match="lower min_samples"):
        dirichlet(LABELS, 30, np.random.default_rng(0), beta=0.5, min_samples=50)  # needs 1,500 > 1,300
    with pytest.raises(ValueError, match="lower min_samples, raise beta or use fewer clients"):
        dirichlet(LABELS, 100, np.random.default_rng(0), beta=0.01, min_samples=5, max_tries=20)


@pytest.mark.parametrize("classes_per_client", [1, 2, 3])
def test_shards_gives_exactly_k_classes_spread_evenly(classes_per_client):
    num_clients = 25
    parts = shards(LABELS, num_clients, np.random.default_rng(0), classes_per_client=classes_per_client)
    holds = _histograms(parts) > 0
    assert np.all(holds.sum(axis=1) == classes_per_client)
    holders_per_class = holds.sum(axis=0)
    assert holders_per_class.max() - holders_per_class.min() <= 1
    assert holders_per_class.sum() == num_clients * classes_per_client


def test_shards_draws_varied_class_combinations():
    parts = shards(LABELS, 50, np.random.default_rng(0), classes_per_client=2)
    pairs = {tuple(np.flatnonzero(row)) for row in _histograms(parts) > 0}
    assert len(pairs) > 10


def _coefficient_of_variation(sigma: float) -> float:
    sizes = np.concatenate(
        [[len(p) for p in lognormal(LABELS, 50, np.random.default_rng(seed), sigma=sigma)] for seed in range(5)]
    )
    return float(sizes.std() / sizes.mean())


def test_lognormal_larger_sigma_spreads_client_sizes_more():
    assert _coefficient_of_variation(0.0) < 0.01
    assert _coefficient_of_variation(0.5) < _coefficient_of_variation(1.5)
    for seed in range(3):
        assert min(len(p) for p in lognormal(LABELS, 200, np.random.default_rng(seed), sigma=3.0)) >= 1


def test_uniform_sizes_spread_client_sizes_like_uniform_draws():
    """Sizes ∝ U(0, 1) (the PAwBRoFL authors' --variable_local_size): over 1,000 clients the largest holds about
    twice the mean, about half hold less than the mean, and the smallest few a sample or two."""
    labels = np.random.default_rng(5).integers(0, NUM_CLASSES, size=100_000)
    sizes = np.array([len(p) for p in PARTITION_SCHEMES.get("uniform_sizes")(labels, 1000, np.random.default_rng(0))])
    assert sizes.sum() == 100_000 and sizes.min() >= 1
    assert 1.9 < sizes.max() / sizes.mean() <= 2.0
    assert 0.45 < (sizes < sizes.mean()).mean() < 0.55
    assert np.sort(sizes)[:5].max() <= 0.03 * sizes.mean()


def test_lognormal_one_class_gives_single_class_clients():
    for seed in range(3):
        parts = lognormal(LABELS, 40, np.random.default_rng(seed), sigma=3.0, label_skew="one_class")
        assert np.all((_histograms(parts) > 0).sum(axis=1) == 1)
        assert min(len(part) for part in parts) >= 1


def test_label_histograms_rows_sum_to_client_sizes():
    parts = _partition("dirichlet", seed=3)
    hist = _histograms(parts)
    assert hist.shape == (20, NUM_CLASSES)
    assert hist.dtype == np.int64
    assert np.array_equal(hist.sum(axis=1), [len(part) for part in parts])
    assert np.array_equal(hist.sum(axis=0), np.bincount(LABELS))


def test_partition_hash_changes_when_one_index_moves():
    parts = _partition("iid", seed=0)
    moved = [part.copy() for part in parts]
    moved[1] = np.sort(np.append(moved[1], moved[0][-1]))
    moved[0] = moved[0][:-1]
    assert len(partition_hash(parts)) == 16
    assert partition_hash(moved) != partition_hash(parts)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda rng: PARTITION_SCHEMES.get("iid")(LABELS, 0, rng), "num_clients must be >= 1"),
        (lambda rng: PARTITION_SCHEMES.get("iid")(LABELS, len(LABELS) + 1, rng), "num_clients must be at most"),
        (lambda rng: dirichlet(LABELS, 5, rng, beta=0.0), "beta must be > 0"),
        (lambda rng: lognormal(LABELS, 5, rng, sigma=-1.0), "sigma must be >= 0"),
        (lambda rng: lognormal(LABELS, 5, rng, sigma=1.0, label_skew="two"), "label_skew must be"),
        (lambda rng: lognormal(LABELS, 5, rng, sigma=1.0, label_skew="one_class"), "num_clients >= the number"),
        (lambda rng: shards(LABELS, 5, rng, classes_per_client=0), "classes_per_client must be in 1..10"),
        (lambda rng: shards(LABELS, 5, rng, classes_per_client=11), "classes_per_client must be in 1..10"),
        (lambda rng: shards(LABELS, 4, rng, classes_per_client=2), "num_clients \\* classes_per_client"),
    ],
)
def test_invalid_arguments_raise_naming_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.random.default_rng(0))


def test_every_scheme_lists_its_parameters():
    assert PARTITION_SCHEMES.names() == ["iid", "dirichlet", "shards", "lognormal", "uniform_sizes", "natural"]
    assert PARTITION_SCHEMES.describe("dirichlet").splitlines()[1:] == [
        "beta=0.5: concentration (smaller = more label skew)",
        "min_samples=10: redraw until every client has this many",
    ]
