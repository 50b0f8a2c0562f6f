"""A run's inputs, resolved once on the driver before anything is written: the clients' dataset, its
partition, the threat (malicious set and built attacks) and the data the server holds. Every check that
can fail on bad input happens here, as a :class:`ConfigError`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from byzlab.orchestrator.config import ExperimentConfig
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.seeding import Stream, numpy_rng
from byzlab.orchestrator.data.datasets import Dataset, load_dataset
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.specs.roles import ClientSpec, ModelSpec, ServerSpec, client_spec, server_spec
from byzlab.orchestrator.specs.server_data import ServerData, prepare_server_data
from byzlab.orchestrator.specs.threat import ThreatSpec, resolve_threat


def load_configured_dataset(cfg: ExperimentConfig) -> Dataset:
    data = cfg.data
    try:
        return load_dataset(data.dataset, data.data_root, data.download, **data.parameters())
    except ValueError as err:  # the files' content does not fit the configured columns, classes or split
        raise ConfigError(f"data: {err}") from None


def make_partition(cfg: ExperimentConfig, dataset: Dataset) -> list[np.ndarray]:
    partitioner = PARTITION_SCHEMES.get(cfg.partition.scheme)
    rng = numpy_rng(cfg.run.seed, Stream.PARTITION)
    extra = {}
    if getattr(partitioner, "needs_groups", False):
        if dataset.train_groups is None:
            raise ConfigError(f"partition: scheme '{cfg.partition.scheme}' needs a group column in the data "
                              f"(data.group_column of dataset csv); {dataset.name} has none")
        extra["groups"] = dataset.train_groups
    try:
        return partitioner(dataset.train_y, cfg.clients.num_clients, rng, **cfg.partition.parameters(), **extra)
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None


def _fit_attack_to_data(cfg: ExperimentConfig, dataset: Dataset, threat: ThreatSpec) -> None:
    """Pixel triggers need images; feature-value triggers need named tabular features and token triggers a
    vocabulary, and are bound to their columns or token ids here, once, before the attack is shipped to the
    actors."""
    attack = threat.data_attack
    if attack is None:
        return
    holds = "images" if dataset.is_images else "token rows" if dataset.is_text else "tabular rows"
    for needs, has, what in ((attack.needs_images, dataset.is_images, "a pixel trigger and needs images"),
                             (attack.needs_features, dataset.feature_names is not None,
                              "feature values and needs tabular rows"),
                             (attack.needs_vocabulary, dataset.is_text, "a token trigger and needs text")):
        if needs and not has:
            raise ConfigError(f"threat.attack '{cfg.threat.attack}' sets {what}; {dataset.name} holds {holds}")
    try:
        attack.check_data(tuple(dataset.input_shape), dataset.num_classes)
        if attack.needs_features:
            attack.bind(dataset.feature_names, dataset.feature_scaling)
        elif attack.needs_vocabulary:
            attack.bind(dataset.vocabulary, dataset.input_shape[0])
    except ValueError as err:
        raise ConfigError(f"threat.attack_params: {err} ({dataset.name}: {_data_shape(dataset)})") from None


def _data_shape(dataset: Dataset) -> str:
    """What a data-dependent attack setting is checked against, in words: '8x8 images, 10 classes'."""
    shape = dataset.input_shape
    rows = f"{shape[-2]}x{shape[-1]} images" if dataset.is_images else f"rows of {shape[0]} " + (
        "tokens" if dataset.is_text else "features")
    return f"{rows}, {dataset.num_classes} classes"


@dataclass
class RunInputs:
    """The clients' dataset (without a held-out proxy slice), one index array per client, the threat, the
    server's data, and the actors' specs built from them."""

    dataset: Dataset
    parts: list[np.ndarray]
    threat: ThreatSpec
    server_data: ServerData
    client: ClientSpec
    server: ServerSpec

    @property
    def malicious(self) -> np.ndarray:
        return self.threat.malicious


def _check_model_fits(spec: ClientSpec) -> None:
    """Build the model once here, without allocating its weights (torch's meta device), so that a model
    that cannot take the data (a text model on images, a CNN on 8x8 images too small for it, a missing
    embeddings file) is one line now rather than a traceback in every actor."""
    try:
        with torch.device("meta"):
            spec.model.build()
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def num_flat_params(spec: ModelSpec) -> int:
    """The length of the model's flat state, counted on torch's meta device: what a checkpoint of this
    model holds (docs/architecture.md, "Flat parameters and layout": parameters and buffers)."""
    with torch.device("meta"):
        model = spec.build()
    return sum(tensor.numel() for tensor in model.state_dict().values())


def resolve_inputs(cfg: ExperimentConfig) -> RunInputs:
    dataset, server_data = prepare_server_data(cfg, load_configured_dataset(cfg))
    threat = resolve_threat(cfg.threat, cfg.run.seed, cfg.clients.num_clients)
    _fit_attack_to_data(cfg, dataset, threat)
    parts = make_partition(cfg, dataset)
    client = client_spec(cfg, dataset, threat)
    _check_model_fits(client)
    return RunInputs(dataset, parts, threat, server_data, client, server_spec(cfg, dataset, threat))
