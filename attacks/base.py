"""The attack contracts (docs/architecture.md, section "Attack contract").

- A :class:`ModelAttack` runs in the server-side adversary: it rewrites the malicious rows of the round's
  update matrix, seeing the attackers' own honestly trained updates and a *reference* set whose statistics
  it may use (the benign updates when the attacker is omniscient, its own updates when agnostic).
- A :class:`DataAttack` runs in the ClientActor: it poisons a malicious client's labels once, may poison
  each minibatch (backdoors), may change the attacker's local recipe, and may scale its update.
- A :class:`QuantityAttack` rewrites the sample counts the attackers claim.

Attacks are pure tensor code, usable without Ray. Randomness comes only from the generator they are
given, so runs are reproducible.

Every attack is generic in its parameter schema: ``class LieAttack(ModelAttack[LieParams])`` with
``Params = LieParams`` (which the registry validates with), so ``self.params`` is typed as that schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

from byzlab.orchestrator.core.layout import Layer

AttackKind = Literal["model", "data", "quantity"]


class AttackParams(BaseModel):
    """Base of every attack's parameter schema: unknown parameters are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no NaN or infinite values


@dataclass
class AttackContext:
    """What the adversary knows in a round, besides the updates."""

    round: int
    num_clients: int  # n: updates in this round, benign and malicious
    num_malicious: int  # f: malicious among them
    generator: torch.Generator  # CPU generator keyed by (seed, round); move draws to the updates' device
    global_params: torch.Tensor | None = None  # the current global model, flat [d]
    initial_params: torch.Tensor | None = None  # the round-0 global model, flat [d]
    layers: tuple[Layer, ...] = ()


P = TypeVar("P", bound=AttackParams)


class Attack(Generic[P]):
    """Base class, generic in the parameter schema ``P``; subclasses set ``name``, ``kind`` and ``Params``."""

    name: ClassVar[str]
    kind: ClassVar[AttackKind]
    Params: ClassVar[type[AttackParams]] = AttackParams

    def __init__(self, params: P) -> None:
        self.params: P = params


class ModelAttack(Attack[P]):
    kind = "model"

    def craft(self, own: torch.Tensor, reference: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """Return the f malicious rows [f, d].

        own: the attackers' honestly trained updates [f, d]; reference: the updates whose statistics the
        attacker may use [m, d] (benign updates if omniscient, ``own`` if agnostic).
        """
        raise NotImplementedError


class DataAttack(Attack[P]):
    """Client-side poisoning. Every hook defaults to "no change", so an attack overrides only what it does.

    ``attacker`` is the index of this malicious client among all malicious clients (0..num_attackers-1),
    e.g. to give each DBA attacker its own part of the trigger.
    """

    kind = "data"
    needs_images: ClassVar[bool] = False  # True for pixel-trigger attacks: refused on tabular data
    needs_features: ClassVar[bool] = False  # True for feature-value triggers: bound to named tabular features
    needs_vocabulary: ClassVar[bool] = False  # True for token triggers: bound to a text vocabulary

    def check_data(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse (one-line ValueError naming the parameter) settings that do not fit the loaded data: class
        ids beyond ``num_classes``, a trigger outside the ``input_shape`` images. Called once on the driver,
        after the data is loaded and before anything is written, so a misfit never reaches an actor."""

    def poison_labels(self, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        """Labels the attacker trains on, redrawn once per run (label-flipping attacks)."""
        return y

    def poison_batch(
        self, x: torch.Tensor, y: torch.Tensor, attacker: int, num_attackers: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training minibatch as the attacker uses it (backdoor attacks); must not modify x, y in place."""
        return x, y

    def local_recipe_overrides(self) -> dict[str, Any]:
        """Changes to the attacker's local training recipe (e.g. {"local_epochs": 5, "lr": 0.02})."""
        return {}

    def update_scale(self, round_index: int) -> float:
        """Factor the attacker multiplies its update by in ``round_index`` (model replacement)."""
        return 1.0

    def triggered_test_set(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For backdoors: test images whose true class is not the target, with the full trigger applied,
        and the target labels; ``backdoor_asr`` is the accuracy on them. None for other attacks."""
        return None


class QuantityAttack(Attack[P]):
    kind = "quantity"

    def claims(self, benign_counts: torch.Tensor, num_malicious: int) -> torch.Tensor:
        """The sample counts [f] the attackers claim, given the benign clients' claims of the round."""
        raise NotImplementedError
