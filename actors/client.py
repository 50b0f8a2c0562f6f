"""ClientActor: hosts a shard of virtual clients and trains the sampled ones each round. Malicious
clients running a data attack poison their labels, minibatches, recipe or update here."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from byzlab.actors.resources import actor_device
from byzlab.actors.reusable import Reusable
from byzlab.orchestrator.core.seeding import Stream, derive_seed, torch_generator
from byzlab.orchestrator.learning.training import LocalResult, train_locally
from byzlab.orchestrator.specs.roles import ClientSpec


class ClientWorker(Reusable):
    """The virtual clients of one actor. Their data is copied in once; a client is a slice of it."""

    def __init__(
        self,
        spec: ClientSpec,
        train_x: np.ndarray,
        train_y: np.ndarray,
        client_indices: dict[int, np.ndarray],
        num_threads: int,
    ) -> None:
        torch.set_num_threads(num_threads)
        self.spec = spec
        self.device = actor_device(spec.device)
        own = np.concatenate(list(client_indices.values()))
        self.x = torch.from_numpy(train_x[own]).to(self.device)
        self.y = torch.from_numpy(train_y[own]).to(self.device)
        self.slices: dict[int, slice] = {}
        start = 0
        for client, indices in client_indices.items():
            self.slices[client] = slice(start, start + len(indices))
            start += len(indices)
        self.model = spec.model.build().to(self.device)
        self._init_data_attack()

    def _init_data_attack(self) -> None:
        """Set up this actor's data attackers: poisoned labels are drawn once, keyed by client."""
        malicious = self.spec.threat.malicious
        self.num_attackers = len(malicious)
        self.attacker_index = {int(c): i for i, c in enumerate(malicious) if int(c) in self.slices}
        self.data_attack = self.spec.threat.data_attack if self.attacker_index else None
        if self.data_attack is None:
            return
        self.poisoned_y = self.y.clone()
        for client in self.attacker_index:
            part = self.slices[client]
            generator = torch_generator(self.spec.seed, Stream.LABEL_POISON, client)
            self.poisoned_y[part] = self.data_attack.poison_labels(self.y[part], self.spec.model.num_classes, generator)

    def _train_client(self, client: int, round_index: int, global_flat: torch.Tensor) -> LocalResult:
        part = self.slices[client]
        seed = self.spec.seed
        generator = torch_generator(seed, Stream.LOCAL_TRAINING, round_index, client)
        torch.manual_seed(derive_seed(seed, Stream.DROPOUT, round_index, client))  # dropout draws from torch's RNG
        attacking = (
            self.data_attack is not None and client in self.attacker_index
            and self.spec.threat.schedule.active(round_index)
        )
        if not attacking:
            recipe = self.spec.recipe.for_round(round_index)
            return train_locally(self.model, global_flat, self.x[part], self.y[part], recipe, generator)
        attack, attacker = self.data_attack, self.attacker_index[client]
        batch_generator = torch_generator(seed, Stream.BATCH_POISON, round_index, client)
        result = train_locally(
            self.model, global_flat, self.x[part], self.poisoned_y[part], self.spec.attacker_recipe.for_round(round_index),
            generator,
            transform_batch=lambda xb, yb: attack.poison_batch(xb, yb, attacker, self.num_attackers, batch_generator),
        )
        result.update *= attack.update_scale(round_index)
        return result

    def train(self, global_params: np.ndarray, round_index: int, client_ids: list[int]) -> tuple[np.ndarray, dict]:
        """Train ``client_ids`` from the global model; return their updates (k x d) and metadata."""
        started = time.perf_counter()
        global_flat = torch.tensor(global_params, device=self.device)
        updates = np.empty((len(client_ids), global_flat.numel()), dtype=np.float32)
        num_samples, loss_before, loss_after = [], [], []
        for row, client in enumerate(client_ids):
            result = self._train_client(client, round_index, global_flat)
            updates[row] = result.update.cpu().numpy()
            part = self.slices[client]
            num_samples.append(part.stop - part.start)
            loss_before.append(result.loss_before)
            loss_after.append(result.loss_after)
        meta = {
            "client_ids": list(client_ids),
            "num_samples": num_samples,
            "loss_before": loss_before,
            "loss_after": loss_after,
            "train_seconds": time.perf_counter() - started,
        }
        return updates, meta


ClientActor = ray.remote(ClientWorker)
