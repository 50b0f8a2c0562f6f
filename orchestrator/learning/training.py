"""Local training of one client: SGD with momentum, weight decay and the FedProx proximal term, and the optional
clipping of the update it sends."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from byzlab.orchestrator.core.layout import flatten_state, load_flat_state


@dataclass(frozen=True)
class LocalRecipe:
    """How a client trains locally: plain values, resolved from the config once by the driver."""

    batch_size: int
    local_epochs: int
    local_steps: int | None  # a fixed number of SGD steps; None = ``local_epochs`` passes
    lr: float
    momentum: float
    weight_decay: float
    prox_mu: float  # FedProx proximal coefficient; 0 = plain local SGD
    lr_decay: float = 1.0  # the lr of round r is lr * lr_decay^(r - 1)
    update_clip: float | None = None  # the update is scaled to L2 norm <= this before it is sent

    def for_round(self, round_index: int) -> LocalRecipe:
        """The recipe of round ``round_index`` (1-based): the learning rate decayed per round."""
        return replace(self, lr=self.lr * self.lr_decay ** (round_index - 1))


@dataclass
class LocalResult:
    update: torch.Tensor  # theta_i - theta_global, flat float32 [d]
    loss_before: float  # loss on the first minibatch, at the global model
    loss_after: float  # loss on the last minibatch, just before the last step


def _minibatches(num_samples: int, recipe: LocalRecipe, generator: torch.Generator):
    """Index batches over seeded shuffles: ``local_epochs`` passes, or exactly ``local_steps`` batches."""
    steps = passes = 0
    while True:
        for batch in torch.randperm(num_samples, generator=generator).split(recipe.batch_size):
            if steps == recipe.local_steps:
                return
            yield batch
            steps += 1
        passes += 1
        if recipe.local_steps is None and passes == recipe.local_epochs:
            return


def train_locally(
    model: nn.Module,
    global_flat: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: LocalRecipe,
    generator: torch.Generator,
    transform_batch: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> LocalResult:
    """Start from ``global_flat``, train on (x, y), return the update and the first/last minibatch losses.

    With FedProx (mu > 0) the objective adds mu/2 * ||w - w_global||^2 over the trainable parameters; the
    reported losses are the plain cross-entropy, so loss gaps compare across mu. ``transform_batch`` lets a
    backdoor attacker rewrite each minibatch.
    """
    load_flat_state(model, global_flat)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    anchors = [p.detach().clone() for p in model.parameters()] if recipe.prox_mu > 0 else None
    first_loss = last_loss = None
    for batch in _minibatches(len(y), recipe, generator):
        batch = batch.to(x.device)
        xb, yb = x[batch], y[batch]
        if transform_batch is not None:
            xb, yb = transform_batch(xb, yb)
        loss = F.cross_entropy(model(xb), yb)
        last_loss = loss.detach()  # no .item() here: it would sync the GPU every step
        if first_loss is None:
            first_loss = last_loss
        objective = loss
        if anchors is not None:
            proximal = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchors))
            objective = loss + 0.5 * recipe.prox_mu * proximal
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
    update = flatten_state(model) - global_flat
    if recipe.update_clip is not None:
        update = clip_to_norm(update, recipe.update_clip)
    return LocalResult(update, first_loss.item(), last_loss.item())


def clip_to_norm(update: torch.Tensor, bound: float) -> torch.Tensor:
    """``update`` scaled by ``min(1, bound / ||update||)``: what the LASA authors' engine does to each client's
    update before the attack and the aggregation (``algorithms/engine/fedavg_all.py`` l.155-163, dividing by
    ``||update|| / clip`` when that exceeds 1)."""
    norm = float(torch.linalg.vector_norm(update.double()))
    return update / (norm / bound) if norm > bound else update
