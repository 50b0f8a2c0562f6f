"""The invariants every component of byzlab must keep, as one public test helper: the built-ins' tests and a
plug-in author's (docs/architecture.md, "Plug-ins") call the same functions, one per kind::

    from byzlab.orchestrator.testing import check_aggregator

    def test_my_rule():
        check_aggregator("mypkg.rules:MyRule", {"trim": 1})

Each takes a component the way a config names it (a built-in name, an entry point name, or an import
path ``package.module:attribute``) or the class / function itself, with its parameters. It first checks
the family's contract, exactly as a config naming it would, then runs the component on small seeded
inputs; a broken property raises AssertionError naming the component and the property. A keyword switches
off a property the component lacks by design (say why beside the call). No pytest needed.
"""

from __future__ import annotations

import io
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from byzlab import aggregators, attacks
from byzlab.aggregators import AggregationResult, Aggregator, RoundContext
from byzlab.attacks.base import Attack, AttackContext
import byzlab.orchestrator.config  # noqa: F401  (gives the registries their plug-in contracts)
from byzlab.orchestrator.core.layout import model_layout
from byzlab.orchestrator.core.registry import Registry, params_of
from byzlab.orchestrator.data.datasets import DATASETS, DEFAULT_DATA_ROOT, Dataset
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.learning.models import MODELS
from byzlab.orchestrator.learning.training import LocalRecipe

# ------------------------------------------------------------------------------------------ resolution


def _resolve(registry: Registry, component: Any) -> tuple[str, Any]:
    """(name, entry): a name is looked up (an import path imported and admitted); an object is checked
    against the family's contract without being registered."""
    if isinstance(component, str):
        try:
            return component, registry.get(component)
        except ValueError as err:
            raise AssertionError(str(err)) from None
    for name in registry.names():
        if registry.get(name) is component:
            return name, component
    label = getattr(component, "__qualname__", repr(component))
    try:
        registry.check_plugin(label, component)
    except ValueError as err:
        raise AssertionError(str(err)) from None
    return label, component


def _parse(name: str, entry: Any, params: dict[str, Any] | None) -> BaseModel:
    try:
        return params_of(entry)(**(params or {}))
    except ValidationError as err:
        raise AssertionError(f"'{name}': parameters {params} do not validate: {err.errors()[0]['msg']}") from None


def _check(condition: Any, name: str, what: str) -> None:
    if not condition:
        raise AssertionError(f"'{name}': {what}")


# ------------------------------------------------------------------------------------------ aggregators

TOY_CLIENTS = 10
TOY_CLASSES = 3
TOY_DIMENSION = 8 * TOY_CLASSES + TOY_CLASSES  # exactly the parameters of the toy linear model


def toy_updates(d: int = TOY_DIMENSION, n: int = TOY_CLIENTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded toy round: ``(updates, centre)``, n honest-looking updates scattered (std 0.01) around a
    common centre (std 0.05) in d dimensions."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=generator) * 0.05
    return centre + 0.01 * torch.randn(n, d, generator=generator), centre


def _toy_model_fn(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A linear softmax model over 8 features: the smallest model FLTrust / Sageflow can train."""
    weight = flat[: 8 * TOY_CLASSES].view(8, TOY_CLASSES)
    return x @ weight + flat[8 * TOY_CLASSES: 8 * TOY_CLASSES + TOY_CLASSES]


def toy_context(n: int = TOY_CLIENTS, num_byzantine: int = 2, seed: int = 0,
                perm: torch.Tensor | None = None) -> RoundContext:
    """Every RoundContext field of the toy round (claimed counts, loss gaps, a linear model with proxy and
    public data), for rows ``perm`` of the clients (all, in order, by default)."""
    g = torch.Generator().manual_seed(123)
    counts = torch.randint(20, 60, (TOY_CLIENTS,), generator=g).float()
    gaps = torch.rand(TOY_CLIENTS, generator=g)
    proxy_x = torch.randn(40, 8, generator=g)
    proxy_y = torch.randint(0, TOY_CLASSES, (40,), generator=g)
    ids = torch.arange(TOY_CLIENTS)
    if perm is not None:
        counts, gaps, ids = counts[perm], gaps[perm], ids[perm]
    return RoundContext(
        client_ids=ids[:n], num_samples=counts[:n], loss_gaps=gaps[:n], num_byzantine=num_byzantine,
        global_params=torch.zeros(TOY_DIMENSION), generator=torch.Generator().manual_seed(seed),
        model_fn=_toy_model_fn, proxy_data=(proxy_x, proxy_y), public_data=torch.randn(40, 8, generator=g), round=1,
    )


def _rule(rule: Any, params: dict[str, Any] | None) -> tuple[str, Aggregator]:
    name, cls = _resolve(aggregators.AGGREGATORS, rule)
    return name, cls(_parse(name, cls, params))


def check_aggregator_output(rule: Any, params: dict[str, Any] | None = None) -> AggregationResult:
    """On a finite round: an update of shape [d] with the updates' dtype and device, finite; weights [n]
    (finite) and accepted [n] (bool) when given; info values that are numbers."""
    name, aggregator = _rule(rule, params)
    updates, _ = toy_updates()
    result = aggregator(updates, toy_context())
    _check(isinstance(result, AggregationResult), name, f"returned {type(result).__name__}, not an AggregationResult")
    update = result.update
    _check(update.shape == (TOY_DIMENSION,), name, f"update has shape {tuple(update.shape)}, not ({TOY_DIMENSION},)")
    _check(update.dtype == updates.dtype and update.device == updates.device, name,
           f"update is {update.dtype} on {update.device}, the updates {updates.dtype} on {updates.device}")
    _check(torch.isfinite(update).all(), name, "non-finite aggregate of finite updates")
    if result.weights is not None:
        _check(result.weights.shape == (TOY_CLIENTS,) and torch.isfinite(result.weights).all(), name,
               f"weights must be [n] and finite, got {result.weights}")
    if result.accepted is not None:
        _check(result.accepted.shape == (TOY_CLIENTS,) and result.accepted.dtype == torch.bool, name,
               f"accepted must be a bool [n] mask, got {result.accepted}")
    for key, value in result.info.items():
        _check(isinstance(key, str) and isinstance(float(value), float), name, f"info[{key!r}] is not a number")
    return result


def check_permutation_invariance(rule: Any, params: dict[str, Any] | None = None) -> None:
    """Permuting the clients (rows and their context) permutes the weights and decisions and keeps the
    aggregate."""
    name, _ = _rule(rule, params)
    updates, _ = toy_updates()
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    base = _rule(rule, params)[1](updates, toy_context())
    permuted = _rule(rule, params)[1](updates[perm], toy_context(perm=perm))
    _check(torch.allclose(permuted.update, base.update, atol=1e-5, equal_nan=True), name,
           "the aggregate changes when the clients are permuted")
    if base.weights is not None:
        _check(torch.allclose(permuted.weights, base.weights[perm], atol=1e-5), name,
               "the weights do not follow a permutation of the clients")
    if base.accepted is not None:
        _check(torch.equal(permuted.accepted, base.accepted[perm]), name,
               "the accepted clients do not follow a permutation of the clients")


def check_identical_updates(rule: Any, params: dict[str, Any] | None = None) -> None:
    """n identical updates u aggregate to u."""
    name, aggregator = _rule(rule, params)
    u = toy_updates()[1]
    result = aggregator(u.repeat(TOY_CLIENTS, 1), toy_context())
    _check(torch.allclose(result.update, u, atol=1e-5), name, "n identical updates do not aggregate to that update")


def check_outlier_bounded(rule: Any, params: dict[str, Any] | None = None, *, rescales: bool = False) -> None:
    """One far outlier (declared Byzantine count 1) is excluded or its influence bounded: the aggregate stays
    within half the centre's norm of the honest mean (unless the rule ``rescales`` its output), the outlier
    is not accepted and gets weight < 0.05."""
    name, aggregator = _rule(rule, params)
    updates, centre = toy_updates()
    updates[4] = -100 * centre  # far from the cluster and opposed to it
    result = aggregator(updates, toy_context(num_byzantine=1))
    honest_mean = torch.cat([updates[:4], updates[5:]]).mean(dim=0)
    if not rescales:
        distance = torch.linalg.vector_norm(result.update - honest_mean)
        _check(distance < 0.5 * torch.linalg.vector_norm(centre), name,
               f"one outlier moved the aggregate {float(distance):.3g} from the honest mean")
    if result.accepted is not None:
        _check(not result.accepted[4], name, "accepted the outlier")
    if result.weights is not None:
        _check(result.weights[4] < 0.05, name, f"gave the outlier weight {float(result.weights[4]):.3f}")


def check_nonfinite_rows(rule: Any, params: dict[str, Any] | None = None) -> None:
    """NaN and Inf rows never reach the aggregate of a rule that drops them (weight 0, not accepted, counted
    in ``info["nonfinite_dropped"]``); a rule that cannot (``drops_nonfinite = False``) returns a
    non-finite aggregate, which the server refuses to apply."""
    name, aggregator = _rule(rule, params)
    updates, _ = toy_updates()
    updates[2, 5] = float("nan")
    updates[7] = float("inf")
    result = aggregator(updates, toy_context())
    if not aggregator.drops_nonfinite:
        _check(not torch.isfinite(result.update).all(), name, "cannot filter yet returned a finite aggregate")
        return
    _check(torch.isfinite(result.update).all(), name, "a NaN / Inf row reached the aggregate")
    _check(result.accepted is not None and not result.accepted[2] and not result.accepted[7], name,
           "accepted a non-finite row")
    if result.weights is not None:
        _check(result.weights[2] == 0 and result.weights[7] == 0, name, "gave a non-finite row weight")
    _check(result.info.get("nonfinite_dropped") == 2, name, "info['nonfinite_dropped'] is not 2")


def check_state_round_trip(rule: Any, params: dict[str, Any] | None = None) -> None:
    """The state after a round saves with torch.save, loads with ``weights_only=True`` into a fresh rule, and
    the two then aggregate the next round alike (a resumed run gives the numbers of an uninterrupted one)."""
    name, aggregator = _rule(rule, params)
    aggregator(toy_updates(seed=1)[0], toy_context(seed=1))
    buffer = io.BytesIO()
    torch.save(aggregator.state_dict(), buffer)
    buffer.seek(0)
    restored = _rule(rule, params)[1]
    try:
        restored.load_state_dict(torch.load(buffer, weights_only=True))
    except Exception as err:  # pickled objects refused by weights_only, or a state the rule cannot read
        raise AssertionError(f"'{name}': its state does not load with weights_only=True ({err})") from None
    updates, _ = toy_updates(seed=2)
    first, second = aggregator(updates, toy_context(seed=2)), restored(updates, toy_context(seed=2))
    _check(torch.allclose(first.update, second.update, atol=1e-6), name, "a restored rule aggregates differently")


def check_aggregator(rule: Any, params: dict[str, Any] | None = None, *, identity: bool = True,
                     outlier_robust: bool = True, rescales: bool = False) -> None:
    """Every aggregator invariant: the contract, output shape / dtype / device / finiteness, permutation
    invariance, NaN and Inf rows kept out, state that round-trips; with ``identity``, identical updates
    aggregate to themselves; with ``outlier_robust``, one far outlier is excluded or bounded."""
    check_aggregator_output(rule, params)
    check_permutation_invariance(rule, params)
    check_nonfinite_rows(rule, params)
    check_state_round_trip(rule, params)
    if identity:
        check_identical_updates(rule, params)
    if outlier_robust:
        check_outlier_bounded(rule, params, rescales=rescales)


# ------------------------------------------------------------------------------------------------ attacks


def _attack_context(n: int, f: int, seed: int = 0) -> AttackContext:
    return AttackContext(round=1, num_clients=n, num_malicious=f, generator=torch.Generator().manual_seed(seed),
                         initial_params=torch.ones(10), global_params=torch.zeros(10))


def _check_model_attack(name: str, attack: Attack) -> None:
    reference = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) + 0.3
    own = torch.randn(3, 10, generator=torch.Generator().manual_seed(1)) + 0.3
    kept = (own.clone(), reference.clone())
    out = attack.craft(own, reference, _attack_context(9, 3))
    _check(out.shape == (3, 10), name, f"crafted {tuple(out.shape)} for 3 attackers of 10 coordinates, not (3, 10)")
    _check(out.dtype == torch.float32 and torch.isfinite(out).all(), name, "crafted rows must be finite float32")
    _check(torch.equal(own, kept[0]) and torch.equal(reference, kept[1]), name, "modified its inputs in place")
    _check(torch.equal(out, attack.craft(own, reference, _attack_context(9, 3))), name,
           "crafts different rows from the same generator seed")
    _check(attack.craft(own.double(), reference.double(), _attack_context(9, 3)).dtype == torch.float64, name,
           "float64 updates give rows of another dtype")
    _check(attack.craft(own[:0], reference, _attack_context(6, 0)).shape == (0, 10), name,
           "no attackers must give no rows")


def _check_data_attack(name: str, attack: Attack) -> None:
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(0))
    labels = attack.poison_labels(y.clone(), 10, torch.Generator().manual_seed(1))
    _check(labels.shape == y.shape and labels.dtype == torch.int64, name, "poisoned labels change shape or dtype")
    _check(bool(((labels >= 0) & (labels < 10)).all()), name, "poisoned labels leave 0..num_classes-1")
    _check(torch.equal(labels, attack.poison_labels(y.clone(), 10, torch.Generator().manual_seed(1))), name,
           "poisons labels differently from the same generator seed")
    overrides = set(attack.local_recipe_overrides()) - {f.name for f in fields(LocalRecipe)}
    _check(not overrides, name, f"overrides {sorted(overrides)}, not fields of the local recipe")
    scale = attack.update_scale(1)
    _check(np.isfinite(float(scale)), name, f"update scale {scale} is not finite")
    if getattr(attack, "needs_features", False) or getattr(attack, "needs_vocabulary", False):
        return  # bound to the data's columns or vocabulary before it poisons a batch
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    kept = (x.clone(), y.clone())
    bx, by = attack.poison_batch(x, y, 0, 2, torch.Generator().manual_seed(3))
    _check(bx.shape == x.shape and bx.dtype == x.dtype and by.shape == y.shape and by.dtype == y.dtype, name,
           "a poisoned batch changes shape or dtype")
    _check(torch.equal(x, kept[0]) and torch.equal(y, kept[1]), name, "modified the batch in place")
    triggered = attack.triggered_test_set(x, y)
    if triggered is not None:
        tx, ty = triggered
        _check(tx.shape[1:] == x.shape[1:] and len(tx) == len(ty), name, "the triggered test set is malformed")


def _check_quantity_attack(name: str, attack: Attack) -> None:
    benign = torch.tensor([50.0, 40.0, 60.0, 30.0, 70.0])
    claims = attack.claims(benign, 3)
    _check(claims.shape == (3,) and torch.isfinite(claims).all() and bool((claims >= 0).all()), name,
           f"claims {claims} for 3 attackers: must be 3 finite counts >= 0")
    _check(attack.claims(benign, 0).shape == (0,), name, "no attackers must claim nothing")


def check_attack(attack: Any, params: dict[str, Any] | None = None) -> None:
    """The attack's contract, then by kind: a model attack crafts [f, d] finite rows of the updates' dtype,
    reproducibly, without touching its inputs, none for no attackers; a data attack keeps labels and
    batches in shape, dtype and label range, reproducibly and not in place, and overrides only recipe
    fields; a quantity attack claims f finite counts >= 0."""
    name, cls = _resolve(attacks.ATTACKS, attack)
    built = cls(_parse(name, cls, params))
    checks = {"model": _check_model_attack, "data": _check_data_attack, "quantity": _check_quantity_attack}
    checks[cls.kind](name, built)


# ------------------------------------------------------------------------------------------------- models


def check_model(model: Any, params: dict[str, Any] | None = None, *, input_shape: tuple[int, ...] = (1, 8, 8),
                num_classes: int = 10, inputs: torch.Tensor | None = None,
                vocabulary: tuple[str, ...] | None = None) -> nn.Module:
    """The builder's contract, then: an ``nn.Module`` whose initial weights follow torch's seed, one float32
    finite score per class for a batch of ``inputs`` (random of ``input_shape``: token ids for a text
    model), finite gradients, and a flat layout covering its state. Returns the model."""
    name, builder = _resolve(MODELS, model)
    parsed = _parse(name, builder, params)
    takes_vocabulary = getattr(builder, "takes_vocabulary", False)
    vocabulary = vocabulary or tuple(f"token{i}" for i in range(50))
    extra = {"vocabulary": vocabulary} if takes_vocabulary else {}
    torch.manual_seed(0)
    first = builder(tuple(input_shape), num_classes, parsed, **extra)
    torch.manual_seed(0)
    second = builder(tuple(input_shape), num_classes, parsed, **extra)
    _check(isinstance(first, nn.Module), name, f"built {type(first).__name__}, not a torch.nn.Module")
    same = all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    _check(same, name, "the same torch seed gives different initial weights")
    if inputs is None:
        generator = torch.Generator().manual_seed(0)
        inputs = (torch.randint(2, len(vocabulary), (4, *input_shape), generator=generator) if takes_vocabulary
                  else torch.randn(4, *input_shape, generator=generator))
    scores = first(inputs)
    _check(scores.shape == (len(inputs), num_classes), name,
           f"scores of shape {tuple(scores.shape)} for {len(inputs)} inputs, not ({len(inputs)}, {num_classes})")
    _check(scores.dtype == torch.float32 and torch.isfinite(scores).all(), name, "scores must be finite float32")
    scores.sum().backward()
    gradients = [p.grad for p in first.parameters() if p.grad is not None]
    _check(gradients and all(torch.isfinite(g).all() for g in gradients), name, "no finite gradient reaches it")
    covered = sum(layer.numel for layer in model_layout(first))
    _check(covered == sum(t.numel() for t in first.state_dict().values()), name, "its flat layout misses state")
    return first


# ----------------------------------------------------------------------------------------------- datasets


def _check_arrays(name: str, data: Dataset, modality: str) -> None:
    _check(isinstance(data, Dataset), name, f"loaded {type(data).__name__}, not a byzlab Dataset")
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        _check(y.ndim == 1 and y.dtype == np.int64 and len(x) == len(y) > 0, name,
               f"{split}: labels must be int64 [N] beside N inputs")
        _check(y.min() >= 0 and y.max() < data.num_classes, name, f"{split}: labels leave 0..num_classes-1")
        if modality in ("image", "tabular"):
            _check(x.dtype == np.float32 and np.isfinite(x).all(), name, f"{split}: inputs must be finite float32")
    _check(data.num_classes >= 2 and data.test_x.shape[1:] == data.train_x.shape[1:], name,
           "needs two classes or more and test inputs shaped like the training inputs")
    expected = {"image": 4, "tabular": 2, "text": 2}.get(modality)
    _check(expected is None or data.train_x.ndim == expected, name,
           f"{modality} inputs must have {expected} dimensions, got {data.train_x.ndim}")
    _check(modality != "text" or data.vocabulary is not None, name, "text needs its vocabulary")
    _check(data.train_groups is None or len(data.train_groups) == len(data.train_y), name,
           "train_groups must hold one group per training sample")


def check_dataset(dataset: Any, params: dict[str, Any] | None = None, *, root: str | Path | None = None,
                  download: bool = False) -> Dataset:
    """The loader's contract, then: a Dataset of int64 labels in 0..num_classes-1, finite float32 images
    (N, C, H, W) or rows (N, F), or int64 token ids with a vocabulary, as its modality says; the same
    arrays when loaded twice; and its default model trains on them (one score per class). Returns it."""
    name, loader = _resolve(DATASETS, dataset)
    parsed = _parse(name, loader, params)
    root = Path(root or DEFAULT_DATA_ROOT).expanduser()
    first, second = loader(root, download, parsed), loader(root, download, parsed)
    _check_arrays(name, first, loader.modality)
    for split in ("train_x", "train_y", "test_x", "test_y"):
        _check(np.array_equal(getattr(first, split), getattr(second, split)), name, f"{split} differs between loads")
    default = loader.default_model
    model = default[getattr(parsed, "input_kind", None)] if isinstance(default, dict) else default
    check_model(model, input_shape=first.input_shape, num_classes=first.num_classes,
                inputs=torch.as_tensor(first.train_x[:4]), vocabulary=first.vocabulary)
    return first


# --------------------------------------------------------------------------------------------- partitions


def check_partition(scheme: Any, params: dict[str, Any] | None = None, *, num_clients: int = 10,
                    labels: np.ndarray | None = None) -> list[np.ndarray]:
    """The scheme's contract, then on 600 labels of 10 classes (or ``labels``): one sorted int64 index
    array per client, every sample in exactly one, the same partition from the same seed. A scheme with
    ``needs_groups`` gets one group per client. Returns the partition."""
    name, partitioner = _resolve(PARTITION_SCHEMES, scheme)
    values = _parse(name, partitioner, params).model_dump()
    if labels is None:
        labels = np.random.default_rng(0).integers(0, 10, size=600).astype(np.int64)
    if getattr(partitioner, "needs_groups", False):
        values["groups"] = np.arange(len(labels)) % num_clients

    def draw() -> list[np.ndarray]:
        return partitioner(labels, num_clients, np.random.default_rng(0), **values)

    parts = draw()
    _check(isinstance(parts, list) and len(parts) == num_clients, name, f"must return {num_clients} index arrays")
    for part in parts:
        _check(part.ndim == 1 and part.dtype == np.int64 and np.all(np.diff(part) > 0), name,
               "each client's indices must be sorted, distinct int64")
    everything = np.sort(np.concatenate(parts))
    _check(np.array_equal(everything, np.arange(len(labels))), name, "some sample is lost or assigned twice")
    _check(all(np.array_equal(a, b) for a, b in zip(parts, draw())), name, "the same seed gives another partition")
    return parts
