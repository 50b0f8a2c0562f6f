"""The threat model resolved once on the driver: who is malicious, the built attacks and their schedule.

Actors receive a :class:`ThreatSpec` and never look at attack names or parameters again (see
docs/architecture.md, "Attack contract").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from byzlab import attacks
from byzlab.orchestrator.config import ThreatConfig, malicious_count
from byzlab.orchestrator.core.seeding import Stream, numpy_rng

AttackKind = Literal["none", "data", "model"]


def draw_malicious(seed: int, num_clients: int, fraction: float) -> np.ndarray:
    """The sorted ids of the floor(fraction * N) malicious clients, drawn once per run from the seed."""
    count = malicious_count(fraction, num_clients)
    return np.sort(numpy_rng(seed, Stream.MALICIOUS_SET).choice(num_clients, size=count, replace=False))


@dataclass(frozen=True)
class AttackSchedule:
    """Attacked rounds: ``start_round``, then every ``every``-th round (rounds are 1-based)."""

    start_round: int = 1
    every: int = 1

    def active(self, round_index: int) -> bool:
        return round_index >= self.start_round and (round_index - self.start_round) % self.every == 0


@dataclass(frozen=True)
class ThreatSpec:
    """``kind`` says where ``attack`` acts: ``data`` on the malicious clients' actors (labels, batches,
    recipe, update scale), ``model`` on the server, rewriting the malicious rows of the update matrix. The
    quantity attack (lying about sample counts) composes with either."""

    malicious: np.ndarray  # sorted population ids
    kind: AttackKind = "none"
    attack: attacks.Attack | None = None
    quantity_attack: attacks.Attack | None = None
    schedule: AttackSchedule = AttackSchedule()
    knowledge: Literal["omniscient", "agnostic"] = "omniscient"
    declared_byzantine: int | None = None  # the count the defense is told; None = the true count

    @property
    def data_attack(self) -> attacks.Attack | None:
        return self.attack if self.kind == "data" else None

    @property
    def model_attack(self) -> attacks.Attack | None:
        return self.attack if self.kind == "model" else None

    def population_byzantine(self) -> int:
        """The Byzantine count of the whole population the defense is told (FedRA's M)."""
        return len(self.malicious) if self.declared_byzantine is None else self.declared_byzantine


def resolve_threat(threat: ThreatConfig, seed: int, num_clients: int) -> ThreatSpec:
    """Draw the malicious set and build the configured attacks, once."""
    kind: AttackKind = "none" if threat.attack == "none" else attacks.attack_class(threat.attack).kind
    return ThreatSpec(
        malicious=draw_malicious(seed, num_clients, threat.fraction),
        kind=kind,
        attack=None if kind == "none" else attacks.build(threat.attack, **threat.attack_params),
        quantity_attack=(
            None if threat.quantity_attack == "none" else attacks.build(threat.quantity_attack, **threat.quantity_params)
        ),
        schedule=AttackSchedule(threat.start_round, threat.every),
        knowledge=threat.knowledge,
        declared_byzantine=threat.declared_byzantine,
    )
