"""A run's inputs, resolved once on the driver before anything is written: the clients' dataset, its
partition, the threat (malicious set and built attacks) and the data the server holds. Every check that
can fail on bad input happens here, as a :class:`ConfigError`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from byzlab.orchestrator.config import ExperimentConfig
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.core.seeding import Stream, numpy_rng
from byzlab.orchestrator.data.datasets import Dataset, load_dataset
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.specs.roles import ClientSpec, ServerSpec, client_spec, server_spec
from byzlab.orchestrator.specs.server_data import ServerData, prepare_server_data
from byzlab.orchestrator.specs.threat import ThreatSpec, resolve_threat


def load_configured_dataset(cfg: ExperimentConfig) -> Dataset:
    data = cfg.data
    return load_dataset(data.dataset, data.data_root, data.download, **data.parameters())


def make_partition(cfg: ExperimentConfig, labels: np.ndarray) -> list[np.ndarray]:
    partitioner = PARTITION_SCHEMES.get(cfg.partition.scheme)
    rng = numpy_rng(cfg.run.seed, Stream.PARTITION)
    try:
        return partitioner(labels, cfg.clients.num_clients, rng, **cfg.partition.parameters())
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None


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


def resolve_inputs(cfg: ExperimentConfig) -> RunInputs:
    dataset, server_data = prepare_server_data(cfg, load_configured_dataset(cfg))
    threat = resolve_threat(cfg.threat, cfg.run.seed, cfg.clients.num_clients)
    parts = make_partition(cfg, dataset.train_y)
    return RunInputs(dataset, parts, threat, server_data, client_spec(cfg, dataset, threat),
                     server_spec(cfg, dataset, threat))
