"""Partitioners: split a labelled training set over federated clients.

Every partitioner maps ``labels`` (one integer class per training sample) to one sorted int64 index array
per client; each sample index goes to exactly one client. All randomness comes from the ``rng`` argument,
so the same seed gives the same partition. Classes are the distinct values in ``labels`` (they need not be
0..C-1).

Internally a partition is an *owner* array (``owner[i]`` is the client of sample ``i``), built either from
client sizes or from a (classes × clients) matrix of sample counts, then grouped into index arrays.

Each scheme is registered with its ``Params`` schema (docs/architecture.md, "Registries"): its parameters
are the config's ``partition.<name>`` keys and ``byzlab list partitions`` prints them. Adding a scheme is
one registered function ``(labels, num_clients, rng, **params)`` and its schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from byzlab.orchestrator.core.registry import Registry

PARTITION_SCHEMES: Registry[Callable[..., list[np.ndarray]]] = Registry("partition scheme", keep_order=True)


class DirichletParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.5, gt=0, description="concentration (smaller = more label skew)")
    min_samples: int = Field(10, ge=1, description="redraw until every client has this many")


class ShardsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes_per_client: int = Field(2, ge=1, description="distinct classes per client")


class LognormalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigma: float = Field(1.0, ge=0, description="std of log client sizes")
    label_skew: Literal["iid", "one_class"] = Field("iid", description="labels within clients")


def _class_ids_and_sizes(labels: np.ndarray, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the arguments every partitioner takes; return each sample's class id and the class sizes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} of dtype {labels.dtype}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > len(labels):
        raise ValueError(f"num_clients must be at most the number of samples ({len(labels)}), got {num_clients}")
    _, class_ids, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return class_ids, class_sizes


def _parts_from_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Group sample indices by owning client; a stable sort keeps each client's indices ascending."""
    by_client = np.argsort(owner, kind="stable").astype(np.int64)
    client_sizes = np.bincount(owner, minlength=num_clients)
    return np.split(by_client, np.cumsum(client_sizes)[:-1])


def _owner_from_sizes(client_sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Client ``j`` gets ``client_sizes[j]`` samples drawn uniformly at random, regardless of class."""
    return rng.permutation(np.repeat(np.arange(len(client_sizes)), client_sizes))


def _owner_from_class_counts(class_ids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Client ``j`` gets ``counts[c, j]`` random samples of class ``c``; row ``c`` must sum to class ``c``'s size."""
    owner = np.empty(len(class_ids), dtype=np.int64)
    clients = np.arange(counts.shape[1])
    for class_id, class_counts in enumerate(counts):
        owner[class_ids == class_id] = rng.permutation(np.repeat(clients, class_counts))
    return owner


def _proportional_sizes(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer sizes summing to ``total``: one each, the rest split ∝ ``weights`` (largest remainders round up)."""
    shares = (total - len(weights)) * weights / weights.sum()
    sizes = np.floor(shares).astype(np.int64)
    leftover = total - len(weights) - sizes.sum()
    sizes[np.argsort(sizes - shares, kind="stable")[:leftover]] += 1
    return sizes + 1


@PARTITION_SCHEMES.register_function("iid")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A uniformly random split; client sizes differ by at most one sample."""
    _class_ids_and_sizes(labels, num_clients)
    client_sizes = _proportional_sizes(np.ones(num_clients), len(labels))
    return _parts_from_owner(_owner_from_sizes(client_sizes, rng), num_clients)


@PARTITION_SCHEMES.register_function("dirichlet", DirichletParams)
def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    beta: float,
    min_samples: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label skew: each class is split over the clients in proportions drawn from Dir(beta·1).

    This is the Dir(β) label skew of SDEA (§4.1, "Data Heterogeneity": β ∈ {0.3, 0.5}, smaller β = more
    imbalanced) and LASA (§5 and appendix 7.2: Dir(α), default α = 0.5). Class ``c``'s shuffled samples are
    cut at ``floor(cumsum(p_c) · n_c)`` for its draw ``p_c``. As is common practice, the whole draw is
    repeated until every client holds at least ``min_samples`` samples; after ``max_tries`` failed draws
    a ValueError says how to make the request feasible.
    """
    class_ids, class_sizes = _class_ids_and_sizes(labels, num_clients)
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (smaller = more label skew), got {beta}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    if num_clients * min_samples > len(labels):
        raise ValueError(
            f"min_samples={min_samples} for {num_clients} clients needs {num_clients * min_samples} samples, "
            f"but there are only {len(labels)}; lower min_samples or use fewer clients"
        )
    for _ in range(max_tries):
        proportions = rng.dirichlet(np.full(num_clients, beta), size=len(class_sizes))
        cuts = np.floor(np.cumsum(proportions, axis=1) * class_sizes[:, None]).astype(np.int64)
        cuts[:, -1] = class_sizes
        counts = np.diff(cuts, axis=1, prepend=0)
        if counts.sum(axis=0).min() >= min_samples:
            return _parts_from_owner(_owner_from_class_counts(class_ids, counts, rng), num_clients)
    raise ValueError(
        f"no Dirichlet draw in {max_tries} tries gave all {num_clients} clients at least {min_samples} samples "
        f"(beta={beta}); lower min_samples, raise beta or use fewer clients"
    )


@PARTITION_SCHEMES.register_function("shards", ShardsParams)
def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, classes_per_client: int
) -> list[np.ndarray]:
    """Pathological label skew: every client holds exactly ``classes_per_client`` distinct classes.

    The residual-based-reweighting paper (§4.2, §4.4) gives each MNIST client "two random digits". Here
    the ``num_clients · k`` (client, class) slots are spread evenly: each class goes to ⌊num_clients·k/C⌋ or
    ⌈num_clients·k/C⌉ clients (which classes get the extra client is seeded). Clients are filled one by one
    with the k classes that have the most slots left, ties broken at random, which always completes and
    gives random class combinations. Each class's samples are split evenly among the clients holding it.
    """
    class_ids, class_sizes = _class_ids_and_sizes(labels, num_clients)
    num_classes = len(class_sizes)
    if not 1 <= classes_per_client <= num_classes:
        raise ValueError(
            f"classes_per_client must be in 1..{num_classes} (the number of classes), got {classes_per_client}"
        )
    if num_clients * classes_per_client < num_classes:
        raise ValueError(
            f"num_clients * classes_per_client must be >= the number of classes ({num_classes}) so that every "
            f"class has a client, got {num_clients} * {classes_per_client}"
        )
    slots_left = np.full(num_classes, num_clients * classes_per_client // num_classes)
    slots_left[rng.permutation(num_classes)[: num_clients * classes_per_client % num_classes]] += 1
    if np.any(slots_left > class_sizes):
        raise ValueError(
            f"some class has fewer samples than the {slots_left.max()} clients that would hold it; "
            "lower num_clients or classes_per_client"
        )
    holds = np.zeros((num_classes, num_clients), dtype=bool)
    for client in range(num_clients):
        chosen = np.lexsort((rng.random(num_classes), -slots_left))[:classes_per_client]
        holds[chosen, client] = True
        slots_left[chosen] -= 1
    counts = np.zeros((num_classes, num_clients), dtype=np.int64)
    for class_id, holders in enumerate(holds):
        counts[class_id, holders] = _proportional_sizes(np.ones(holders.sum()), class_sizes[class_id])
    return _parts_from_owner(_owner_from_class_counts(class_ids, counts, rng), num_clients)


def _one_class_counts(class_sizes: np.ndarray, client_sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(classes × clients) counts giving every client one class, honouring ``client_sizes`` where possible.

    Clients pick a class largest first: the C largest take one class each (largest client, largest class;
    equal class sizes in random order), every other client takes the class with the most samples not yet
    claimed. Each class's samples are then split among its clients in proportion to their sizes.
    """
    num_classes, num_clients = len(class_sizes), len(client_sizes)
    classes_by_size = rng.permutation(num_classes)
    classes_by_size = classes_by_size[np.argsort(-class_sizes[classes_by_size], kind="stable")]
    unclaimed = class_sizes.astype(np.int64)
    class_of_client = np.empty(num_clients, dtype=np.int64)
    for rank, client in enumerate(np.argsort(-client_sizes, kind="stable")):
        class_id = classes_by_size[rank] if rank < num_classes else np.argmax(unclaimed)
        class_of_client[client] = class_id
        unclaimed[class_id] -= client_sizes[client]
    counts = np.zeros((num_classes, num_clients), dtype=np.int64)
    for class_id in range(num_classes):
        members = np.flatnonzero(class_of_client == class_id)
        counts[class_id, members] = _proportional_sizes(client_sizes[members].astype(float), class_sizes[class_id])
    return counts


@PARTITION_SCHEMES.register_function("lognormal", LognormalParams)
def lognormal(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    sigma: float,
    label_skew: Literal["iid", "one_class"] = "iid",
) -> list[np.ndarray]:
    """Quantity skew: client sizes ∝ exp(N(0, sigma²)), as in FedRA (§5.1, where sigma = 3).

    Sizes are scaled to the number of samples with every client holding at least one (one sample each,
    the rest split in proportion, largest remainders rounded up); sigma = 0 gives equal sizes.

    ``label_skew="iid"`` fills each client with random samples (FedRA's IID setting). ``"one_class"`` is
    FedRA's non-IID setting, where samples are grouped by label and "each client selects samples from a
    single group whenever possible". We make that strict, so every client holds exactly one class: clients
    choose, largest first, the class with the most samples not yet claimed (the C largest clients first
    take one class each, so no class is left without a client), and each class's samples are then split
    among its clients in proportion to their drawn sizes. Sizes are thus honoured exactly when they fit the
    classes and rescaled within a class when they do not (a client larger than every class gets a whole
    class, not samples of a second one). Needs num_clients >= the number of classes.
    """
    class_ids, class_sizes = _class_ids_and_sizes(labels, num_clients)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if label_skew not in ("iid", "one_class"):
        raise ValueError(f"label_skew must be 'iid' or 'one_class', got {label_skew!r}")
    client_sizes = _proportional_sizes(rng.lognormal(0.0, sigma, size=num_clients), len(labels))
    if label_skew == "iid":
        return _parts_from_owner(_owner_from_sizes(client_sizes, rng), num_clients)
    if num_clients < len(class_sizes):
        raise ValueError(
            f"label_skew='one_class' needs num_clients >= the number of classes ({len(class_sizes)}), "
            f"got {num_clients}"
        )
    counts = _one_class_counts(class_sizes, client_sizes, rng)
    return _parts_from_owner(_owner_from_class_counts(class_ids, counts, rng), num_clients)


@PARTITION_SCHEMES.register_function("uniform_sizes")
def uniform_sizes(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity skew with random samples: client sizes ∝ U(0, 1), as the PAwBRoFL authors' runs draw them
    (``src/simulate.py``, ``--variable_local_size``, which ``train.sh`` sets; the paper says equal sizes).
    Every client holds at least one sample (one each, the rest split in proportion)."""
    _class_ids_and_sizes(labels, num_clients)
    client_sizes = _proportional_sizes(rng.random(num_clients), len(labels))
    return _parts_from_owner(_owner_from_sizes(client_sizes, rng), num_clients)


class NaturalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_group_size: int = Field(1, ge=1, description="groups with fewer training samples are left out")


@PARTITION_SCHEMES.register_function("natural", NaturalParams, needs_groups=True)
def natural(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, groups: np.ndarray, min_group_size: int = 1
) -> list[np.ndarray]:
    """Natural partition: one client per value of the data's group column (a US state, a writer, a role).

    Residual reweighting's LOAN federation puts each US state on its own client (§4.1); LEAF's FEMNIST and
    Shakespeare split by writer and speaking role. Groups with fewer than ``min_group_size`` training samples
    are left out (their samples train nobody). With as many clients as the remaining groups, every group
    becomes a client in order of its value and ``rng`` is not used; with fewer, ``num_clients`` groups are
    drawn uniformly without replacement, as LEAF samples a fraction of its users (LASA Table 4: 5% of
    FEMNIST's writers), and become clients in order of their value. More clients than groups is an error.
    """
    _class_ids_and_sizes(labels, num_clients)
    group_ids, sizes = np.unique(groups, return_counts=True)
    kept = group_ids[sizes >= min_group_size]
    if num_clients > len(kept):
        raise ValueError(
            f"the data has {len(kept)} groups with at least {min_group_size} training samples, fewer than "
            f"clients.num_clients ({num_clients}); set clients.num_clients to at most {len(kept)} (one client per group)"
        )
    if num_clients < len(kept):
        kept = np.sort(rng.choice(kept, size=num_clients, replace=False))
    return [np.flatnonzero(groups == group).astype(np.int64) for group in kept]


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client class counts, shape (num_clients, num_classes), int64; labels must lie in 0..num_classes-1."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (num_classes={num_classes})")
    client_of_sample = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    flat = np.bincount(client_of_sample * num_classes + labels[indices], minlength=len(parts) * num_classes)
    return flat.astype(np.int64).reshape(len(parts), num_classes)


def partition_hash(parts: list[np.ndarray]) -> str:
    """A stable digest of the assignment: sha256 over each client's size and indices (int64 little-endian)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.int64(len(part)).astype("<i8").tobytes())
        digest.update(np.asarray(part).astype("<i8").tobytes())
    return digest.hexdigest()[:16]
