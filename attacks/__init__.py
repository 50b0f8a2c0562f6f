"""Attacks: data poisoning (client side), model poisoning (server-side adversary), quantity lies."""

from byzlab.attacks import data, model, quantity  # noqa: F401  (register their attacks)
from byzlab.attacks.base import AttackContext, DataAttack, ModelAttack, QuantityAttack
from byzlab.attacks.registry import ATTACKS, attack_class, build, names, validate_params

__all__ = [
    "ATTACKS",
    "AttackContext",
    "DataAttack",
    "ModelAttack",
    "QuantityAttack",
    "attack_class",
    "build",
    "names",
    "validate_params",
]
