"""The home of every per-round metric: one round's metrics row and per-client rows, built in one place
(the columns of ``metrics.parquet`` and ``clients.parquet``; README, "What a run writes")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from byzlab.aggregators import AggregationResult

# Columns of at most this many coordinates at a time: the benign mean never copies the n x d benign rows.
_CHUNK = 1 << 16


@dataclass
class RoundUpdates:
    """The round's replies, scattered into one matrix in client-id order on the server's device."""

    client_ids: np.ndarray  # sorted population ids [n]
    actors: np.ndarray  # the actor that trained each row [n]
    updates: torch.Tensor  # [n, d]
    num_samples: torch.Tensor  # claimed counts [n], float32 (a quantity attack rewrites them)
    loss_before: np.ndarray
    loss_after: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)  # actor<j>_train_seconds, actor<j>_clients


def benign_mean(updates: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """The mean of the benign rows, column block by column block, bitwise the mean of all of them at
    once. The last block absorbs the remainder: a block only a few columns wide is reduced by another
    kernel, in another order."""
    d = updates.shape[1]
    starts = list(range(0, max(d - _CHUNK, 0) + 1, _CHUNK))
    ends = starts[1:] + [d]
    return torch.cat([updates[:, start:end][benign].mean(dim=0) for start, end in zip(starts, ends)])


def decision_metrics(result: AggregationResult, updates: torch.Tensor, malicious: torch.Tensor) -> dict[str, float]:
    """What the rule decided, against the ground truth the rule never sees.

    detection_tpr / detection_fpr: share of the round's malicious / benign clients the rule rejected
    (rules that fill ``accepted``); malicious_weight: the malicious clients' share of the total weight
    (rules that fill ``weights``); dist_to_honest_mean: distance of the aggregate to the benign mean.
    """
    benign = ~malicious
    metrics: dict[str, float] = {}
    if result.accepted is not None:
        rejected = ~result.accepted
        if malicious.any():
            metrics["detection_tpr"] = float(rejected[malicious].float().mean())
        if benign.any():
            metrics["detection_fpr"] = float(rejected[benign].float().mean())
    if result.weights is not None and malicious.any() and bool(result.weights.sum() > 0):
        metrics["malicious_weight"] = float(result.weights[malicious].sum() / result.weights.sum())
    if benign.any():
        metrics["dist_to_honest_mean"] = float(torch.linalg.vector_norm(result.update - benign_mean(updates, benign)))
    return metrics


def round_record(
    round_index: int,
    replies: RoundUpdates,
    malicious: torch.Tensor,
    finite: torch.Tensor,
    result: AggregationResult,
    applied: bool,
    evaluation: dict[str, float],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """``{"metrics": one row, "clients": columns of one row per client}`` for the round.

    ``seconds``: train_seconds, agg_seconds (and round_seconds, last); ``evaluation``: test metrics of an
    evaluation round, empty otherwise.
    """
    metrics: dict[str, float] = {
        "round": round_index,
        "train_loss": float(np.mean(replies.loss_after)),
        "update_applied": float(applied),
        "nonfinite_updates": float((~finite).sum()),
        "train_seconds": seconds["train_seconds"],
        "agg_seconds": seconds["agg_seconds"],
        **decision_metrics(result, replies.updates, malicious),
        **replies.timings,
        **{f"agg_{key}": float(value) for key, value in result.info.items()},
        **evaluation,
        "round_seconds": seconds["round_seconds"],
    }
    n = len(replies.client_ids)
    clients = {
        "round": np.full(n, round_index),
        "client": replies.client_ids,
        "actor": replies.actors,
        "num_samples": replies.num_samples.cpu().numpy(),
        "loss_before": replies.loss_before,
        "loss_after": replies.loss_after,
        "loss_gap": replies.loss_before - replies.loss_after,
        "update_norm": torch.linalg.vector_norm(replies.updates, dim=1).cpu().numpy(),
        "weight": result.weights.cpu().numpy() if result.weights is not None else np.full(n, np.nan),
        "accepted": result.accepted.cpu().numpy() if result.accepted is not None else np.full(n, None),
        "malicious": malicious.cpu().numpy(),
    }
    return {"metrics": metrics, "clients": clients}
