"""``tailored_trmean`` as first written, the oracle its faster search is checked against (issue 13), shared by
``test_model_attacks.py`` and ``benchmarks/attacks.py``: the γ search with every candidate's trimmed mean
computed by sorting all f + m rows (``TailoredTrMeanAttack.objective``)."""

from __future__ import annotations

import math

import torch

from byzlab.attacks import model as model_attacks


def craft_by_sorting(attack, own: torch.Tensor, benign: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The malicious vector and γ of ``attack`` (a ``TailoredTrMeanAttack``), sorting for every candidate."""
    f, mean = own.shape[0], benign.mean(dim=0)
    direction = model_attacks._perturbation(attack.params.perturbation, mean, benign)
    previous = [-math.inf]

    def increased(gamma: float) -> bool:
        loss = attack.objective(mean + gamma * direction, benign, f)
        ok, previous[0] = loss > previous[0], loss
        return ok

    gamma = model_attacks.gamma_search(increased, attack.params.gamma_init, attack.params.tol)
    return mean + gamma * direction, gamma
