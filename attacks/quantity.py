"""Quantity attacks: the attackers lie about how many training samples they hold.

Quantity-aware aggregation rules (FedAvg weighting, Norm-Bound, RFA, FedRA) weight each update by its
claimed sample count, so an attacker that inflates its count inflates its influence.
"""

from __future__ import annotations

import torch
from pydantic import Field

from byzlab.attacks.base import AttackParams, QuantityAttack
from byzlab.attacks.registry import register


class EnlargeQuantityParams(AttackParams):
    alpha_q: float = Field(
        2.0, ge=0, allow_inf_nan=False,
        description="quantity-enlarging factor: claim mean + alpha_q * std of the benign claims; FedRA §5.1 "
        "evaluates alpha_q in {0, 1, 2, 5, 10} (default 2 = the middle of that grid)",
    )
    round_counts: bool = Field(True, description="round the claim to a whole number of samples (counts are |D_i|)")


@register
class EnlargeQuantityAttack(QuantityAttack[EnlargeQuantityParams]):
    """FedRA's quantity-enhanced attack (Yi et al., "Robust Quantity-Aware Aggregation for Federated
    Learning", §5.1 "Attack Model"): the attacker computes the mean μ_q and standard deviation σ_q of the benign
    clients' claimed quantities and every malicious client claims q = μ_q + α_q·σ_q.

    Choices where the paper is loose: σ_q is the population standard deviation (``correction=0``; the paper
    says "mean and variance" and writes σ_q; the population form is also defined for a single benign claim,
    where it is 0). A quantity is a sample count (§3: q = |D_i|), so by default the claim is rounded to the
    nearest whole sample. With no benign claim to imitate the attackers claim 1 sample each.
    """

    name = "enlarge_quantity"
    Params = EnlargeQuantityParams

    def claims(self, benign_counts: torch.Tensor, num_malicious: int) -> torch.Tensor:
        device = benign_counts.device
        dtype = benign_counts.dtype if benign_counts.is_floating_point() else torch.float32
        if num_malicious <= 0:
            return torch.zeros(0, dtype=dtype, device=device)
        counts = benign_counts.reshape(-1).to(torch.float64)
        if counts.numel() == 0:
            return torch.ones(num_malicious, dtype=dtype, device=device)
        claim = counts.mean() + self.params.alpha_q * counts.std(correction=0)
        if self.params.round_counts:
            claim = torch.round(claim)
        return claim.expand(num_malicious).to(dtype).clone()
