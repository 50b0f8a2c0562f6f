"""The server-side adversary: it rewrites the malicious rows of the round's update matrix (model attack)
and their claimed sample counts (quantity attack) in attacked rounds."""

from __future__ import annotations

import torch

from byzlab import attacks
from byzlab.orchestrator.core.layout import Layer
from byzlab.orchestrator.core.seeding import Stream, torch_generator
from byzlab.orchestrator.specs.threat import ThreatSpec


class Adversary:
    """It sees the benign updates only when the threat model is omniscient; an agnostic attacker computes
    its statistics from its own honest updates."""

    def __init__(self, threat: ThreatSpec, seed: int, initial_params: torch.Tensor, layers: tuple[Layer, ...]):
        self.threat = threat
        self.seed = seed
        self.initial_params = initial_params
        self.layers = layers

    def attack(
        self,
        round_index: int,
        updates: torch.Tensor,
        num_samples: torch.Tensor,
        malicious: torch.Tensor,
        global_params: torch.Tensor,
    ) -> None:
        """Rewrite ``updates`` and ``num_samples`` in place; ``malicious`` is the round's bool row mask."""
        num_malicious = int(malicious.sum())
        if num_malicious == 0 or not self.threat.schedule.active(round_index):
            return
        benign = ~malicious
        model_attack = self.threat.model_attack
        if model_attack is not None:
            own = updates[malicious]
            omniscient = self.threat.knowledge == "omniscient" and bool(benign.any())
            reference = updates[benign] if omniscient else own
            ctx = attacks.AttackContext(
                round=round_index,
                num_clients=len(updates),
                num_malicious=num_malicious,
                generator=torch_generator(self.seed, Stream.MODEL_ATTACK, round_index),
                global_params=global_params,
                initial_params=self.initial_params,
                layers=self.layers,
            )
            updates[malicious] = model_attack.craft(own, reference, ctx)
        if self.threat.quantity_attack is not None:
            claims = self.threat.quantity_attack.claims(num_samples[benign], num_malicious)
            num_samples[malicious] = claims.to(num_samples)
