"""What each actor is built from: narrow, typed specs resolved from the config once on the driver.

A client actor gets a :class:`ClientSpec`, the server a :class:`ServerSpec`; both carry built objects
(the aggregator, the attacks) and plain values, never the config (docs/architecture.md, "Build once").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from byzlab import aggregators
from byzlab.orchestrator.config import ClientsConfig, ExperimentConfig
from byzlab.orchestrator.data.datasets import Dataset
from byzlab.orchestrator.learning.models import build_model
from byzlab.orchestrator.learning.server_optimizers import ServerOptimizer, build_server_optimizer
from byzlab.orchestrator.learning.training import LocalRecipe
from byzlab.orchestrator.specs.threat import ThreatSpec


def local_recipe(clients: ClientsConfig) -> LocalRecipe:
    return LocalRecipe(
        batch_size=clients.batch_size, local_epochs=clients.local_epochs, local_steps=clients.local_steps,
        lr=clients.lr, momentum=clients.momentum, weight_decay=clients.weight_decay, prox_mu=clients.prox_mu,
        lr_decay=clients.lr_decay, update_clip=clients.update_clip,
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    params: dict[str, Any] = field(default_factory=dict)
    vocabulary: tuple[str, ...] | None = None  # text data: the tokens by id, which text models size themselves by

    def build(self) -> nn.Module:
        """A freshly initialised model (seed the torch RNG first when its initial weights matter)."""
        return build_model(self.name, self.input_shape, self.num_classes, vocabulary=self.vocabulary, **self.params)


@dataclass(frozen=True)
class ClientSpec:
    """Everything a client actor needs besides its data shard."""

    seed: int
    device: str  # "auto", "cpu" or "cuda", resolved on the actor
    model: ModelSpec
    recipe: LocalRecipe
    attacker_recipe: LocalRecipe  # the recipe of an attacking data-attack client (overrides applied)
    threat: ThreatSpec


@dataclass(frozen=True)
class ServerSpec:
    """Everything the server actor needs besides the client actors and the test and server data."""

    seed: int
    device: str
    model: ModelSpec
    rounds: int
    eval_every: int
    eval_batch_size: int
    num_clients: int
    clients_per_round: int
    optimizer: ServerOptimizer
    aggregator: aggregators.Aggregator
    threat: ThreatSpec


def model_spec(cfg: ExperimentConfig, dataset: Dataset) -> ModelSpec:
    return ModelSpec(cfg.model.name, tuple(dataset.input_shape), dataset.num_classes, cfg.model.parameters(),
                     vocabulary=dataset.vocabulary)


def client_spec(cfg: ExperimentConfig, dataset: Dataset, threat: ThreatSpec) -> ClientSpec:
    recipe = local_recipe(cfg.clients)
    attacker_recipe = recipe
    if threat.data_attack is not None:
        attacker_recipe = dataclasses.replace(recipe, **threat.data_attack.local_recipe_overrides())
    return ClientSpec(cfg.run.seed, cfg.run.device, model_spec(cfg, dataset), recipe, attacker_recipe, threat)


def server_spec(cfg: ExperimentConfig, dataset: Dataset, threat: ThreatSpec) -> ServerSpec:
    server = cfg.server
    return ServerSpec(
        seed=cfg.run.seed, device=cfg.run.device, model=model_spec(cfg, dataset), rounds=cfg.run.rounds,
        eval_every=cfg.run.eval_every, eval_batch_size=server.eval_batch_size,
        num_clients=cfg.clients.num_clients, clients_per_round=cfg.clients.clients_per_round,
        optimizer=build_server_optimizer(server.optimizer, server.lr, server.optimizer_parameters()),
        aggregator=aggregators.build_pipeline(server.pre_aggregators, server.aggregator, server.aggregator_params),
        threat=threat,
    )
