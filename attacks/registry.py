"""Attacks by name: ``build("lie", z=1.0)``."""

from __future__ import annotations

from byzlab.attacks.base import Attack, AttackKind
from byzlab.orchestrator.core.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")

register = ATTACKS.register
validate_params = ATTACKS.validate_params
build = ATTACKS.build


def names(kind: AttackKind | None = None) -> list[str]:
    return ATTACKS.names(lambda cls: kind is None or cls.kind == kind)


def attack_class(name: str, kind: AttackKind | None = None) -> type[Attack]:
    return ATTACKS.get(
        name, lambda cls: kind is None or cls.kind == kind, f"{kind} attack" if kind else "attack"
    )
