"""SDEA: Self-Driven Entropy Aggregation (Huang, Shi, Ye, Li, Du, "Self-Driven Entropy Aggregation for
Byzantine-Robust Heterogeneous Federated Learning", ICML 2024).

The server holds unlabeled "random" public images D_g (any dataset, no label-space requirement) and learns
the aggregation weights on them every round (§3.2, Algorithm 1 in Appendix B):

1. learnable logits M in R^n, re-initialised equal (zeros) every round; weights alpha = softmax(M) and the
   reweighted global model w = theta_g + sum_k alpha_k Delta_k (eq. 3; with Delta_k = theta_k - theta_g
   this is sum_k alpha_k theta_k because sum_k alpha_k = 1);
2. E epochs of Adam (lr eta_M) on the public batches B_g, minimising L_COL = L_IS + L_CD (eq. 6) through
   ``ctx.model_fn`` (autograd reaches M through the flat parameters):
     L_IS = 1/|B_g| sum_i H(P_i)                  (eq. 4, Instance Sharpness)
     L_CD = -H(P_B),  P_B = 1/|B_g| sum_i P_i     (eq. 5, Class Diversity)
   with P_i = softmax(z_i), z_i the logits of the reweighted model, H the Shannon entropy in nats;
3. Cooperative Cluster (eq. 7, §3.3 "Clustering in Cooperative Cluster", Appendix E): the final weights are
   clustered (FINCH by default, Euclidean distance on the 1-D weights); the cluster with the smallest mean
   weight is malicious and keeps its learned weights, every other client receives an equal share of what
   remains, 1 - sum(malicious weights). A single cluster gives uniform weights.

See :class:`SDEA` for the choices the paper leaves open.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext, require_server_inputs
from byzlab.aggregators.numerics import generator_or_seeded, update_norm_ratio, weighted_rows
from byzlab.aggregators.registry import register


# ----------------------------------------------------------------------------------------------------------
# Objective (eqs. 4-6)


def sdea_loss(probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_IS, L_CD) of a batch of predicted distributions ``probabilities`` [B, C] (rows sum to 1), in nats.

    L_IS = mean_i H(P_i) (eq. 4); L_CD = -H(mean_i P_i) (eq. 5); L_COL = L_IS + L_CD (eq. 6). 0 log 0 = 0.
    """
    entropy = torch.special.entr(probabilities).sum(dim=1)
    l_is = entropy.mean()
    l_cd = -torch.special.entr(probabilities.mean(dim=0)).sum()
    return l_is, l_cd


def sdea_loss_from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sdea_loss` of ``softmax(logits)``, computed in log space: finite values and gradients even
    when a probability underflows to 0 (an attacker's huge update), where d entr(p)/dp = -log p - 1 is not."""
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    l_is = -(p * log_p).sum(dim=1).mean()
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(logits.shape[0])  # log P_B, eq. 5
    l_cd = (log_mean.exp() * log_mean).sum()  # -H(P_B)
    return l_is, l_cd


# ----------------------------------------------------------------------------------------------------------
# Cooperative Cluster (eq. 7, Appendix E)

ClusteringMethod = Literal["finch", "kmeans", "dbscan"]


def cluster_weights(
    weights: torch.Tensor,
    method: ClusteringMethod = "finch",
    *,
    dbscan_eps: float = 0.25,
    dbscan_min_samples: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Cluster labels [n] (int, 0..k-1) of the 1-D aggregation weights.

    * ``finch``: the first partition of FINCH (Sarfraz et al., CVPR 2019; ``finch-clust``) with Euclidean
      distance (SDEA §3.3): the connected components of the first-neighbour graph (eq. 14). Every point is
      linked to its nearest neighbour, so no cluster has fewer than 2 points: n < 3 is one cluster, and a
      lone outlier joins the cluster of its nearest neighbour.
    * ``kmeans``: scikit-learn KMeans with 2 clusters (eq. 12; §3.2 "divide the aggregation weights into
      two groups"), k-means++ with 10 restarts seeded by ``seed``; one cluster if fewer than 2 distinct
      weights.
    * ``dbscan``: scikit-learn DBSCAN (eq. 13) with radius ``dbscan_eps / n`` (``dbscan_eps`` is in units
      of the uniform weight 1/n; the paper gives no value) and ``dbscan_min_samples`` (minPts, counting
      the point itself). Points DBSCAN calls noise form one group of their own.
    """
    n = weights.numel()
    values = weights.detach().double().cpu().numpy().reshape(n, 1)
    if method == "finch":
        if n < 3:
            return np.zeros(n, dtype=np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pynndescent is not installed": only used above 20,000 points
            from finch import FINCH
        partitions, _, _ = FINCH(values, distance="euclidean", verbose=False)
        labels = partitions[:, 0]
    elif method == "kmeans":
        if n < 2 or len(np.unique(values)) < 2:
            return np.zeros(n, dtype=np.int64)
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(values)
    elif method == "dbscan":
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(eps=dbscan_eps / n, min_samples=dbscan_min_samples).fit_predict(values)
    else:
        raise ValueError(f"unknown clustering method '{method}' (finch, kmeans or dbscan)")
    return np.unique(labels, return_inverse=True)[1].reshape(n).astype(np.int64)


def cooperative_cluster(weights: torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (7): (final weights [n], malicious [n] bool) from the learned weights and their cluster labels.

    The cluster with the smallest mean weight is malicious and keeps its learned weights; every other
    client gets (1 - sum of the malicious weights) / (number of other clients). With a single cluster no
    client is malicious and the weights are uniform, 1/n.
    """
    n = weights.numel()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=weights.device)
    num_clusters = int(labels.max()) + 1 if n else 0
    if num_clusters <= 1:
        return torch.full_like(weights, 1.0 / n), torch.zeros(n, dtype=torch.bool, device=weights.device)
    sums = torch.zeros(num_clusters, dtype=torch.float64, device=weights.device).index_add_(0, labels, weights.double())
    counts = torch.bincount(labels, minlength=num_clusters).double()
    malicious = labels == int(torch.argmin(sums / counts))
    share = (1.0 - weights.double()[malicious].sum()) / (~malicious).sum()
    final = torch.where(malicious, weights.double(), share).to(weights.dtype)
    return final, malicious


# ----------------------------------------------------------------------------------------------------------
# Augmentation of the public images (Table 3b)

Augmentation = Literal["none", "weak", "strong"]


def augment(
    x: torch.Tensor,
    mode: Augmentation,
    generator: torch.Generator,
    *,
    shift_fraction: float = 0.125,
    noise_std: float = 0.1,
    erase_prob: float = 0.5,
) -> torch.Tensor:
    """Batch ``x`` [B, ..., H, W] augmented per image; every random draw comes from ``generator`` (CPU).

    * ``weak``: horizontal flip with probability 1/2, then a translation by up to
      ``round(shift_fraction * min(H, W))`` pixels in each direction (4 pixels for 32 x 32, as the usual
      RandomCrop(32, padding=4)), the uncovered border filled with 0.
    * ``strong``: ``weak``, then additive Gaussian noise of std ``noise_std`` times the batch's std, then
      random erasing (with probability ``erase_prob`` a rectangle of 2%-33% of the image, aspect ratio
      0.3-3.3, as torchvision's RandomErasing defaults, clipped to the image, set to 0).
    * ``none`` (or inputs with fewer than 3 dimensions, not images): ``x`` unchanged.
    """
    if mode == "none" or x.ndim < 3:
        return x
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    device = x.device
    flip = (torch.rand(b, generator=generator) < 0.5).to(device)
    x = torch.where(flip.view(b, *([1] * (x.ndim - 1))), x.flip(-1), x)
    pad = int(round(shift_fraction * min(h, w)))
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(device)
        lead = x.shape[1:-2]
        padded = F.pad(x.reshape(b, -1, h, w), (pad, pad, pad, pad))
        rows = dy[:, None] + torch.arange(h, device=device)  # [B, H]
        cols = dx[:, None] + torch.arange(w, device=device)  # [B, W]
        batch = torch.arange(b, device=device)[:, None, None]
        x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).reshape(b, *lead, h, w)
    if mode == "weak":
        return x
    noise = torch.randn(x.shape, generator=generator).to(device=device, dtype=x.dtype)
    x = x + noise_std * x.detach().std(correction=0) * noise
    erase = (torch.rand(b, generator=generator) < erase_prob).to(device)
    area = (0.02 + 0.31 * torch.rand(b, generator=generator, dtype=torch.float64)) * h * w
    log_ratio = math.log(0.3) + math.log(11.0) * torch.rand(b, generator=generator, dtype=torch.float64)  # 0.3..3.3
    eh = torch.sqrt(area * log_ratio.exp()).round().clamp(1, h).long()
    ew = torch.sqrt(area / log_ratio.exp()).round().clamp(1, w).long()
    top = (torch.rand(b, generator=generator, dtype=torch.float64) * (h - eh + 1)).floor().long()
    left = (torch.rand(b, generator=generator, dtype=torch.float64) * (w - ew + 1)).floor().long()
    eh, ew, top, left = eh.to(device), ew.to(device), top.to(device), left.to(device)
    r, c = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (r[None, :] >= top[:, None]) & (r[None, :] < (top + eh)[:, None])  # [B, H]
    in_cols = (c[None, :] >= left[:, None]) & (c[None, :] < (left + ew)[:, None])  # [B, W]
    mask = erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
    return x.masked_fill(mask.view(b, *([1] * (x.ndim - 3)), h, w), 0.0)


# ----------------------------------------------------------------------------------------------------------
# The rule


class SDEAParams(AggregatorParams):
    lr: float = Field(
        0.005, gt=0, description="eta_M: Adam learning rate of the weight logits M (SDEA §4.1, Implement Details)"
    )
    epochs: int = Field(
        20, ge=0, description="E: passes over the public subset per round (§4.1: E = 20; Algorithm 1)"
    )
    batch_size: int = Field(
        64, ge=1, description="|B_g|: public images per step (§4.1: 64; Table 3a compares 16, 64, 512, 1024)"
    )
    public_subset: int | None = Field(
        2000, ge=1,
        description="public images drawn (without replacement, from ctx.generator) each round and used for "
        "the E epochs; None or >= the public set = all of it. Not given in the paper; this project's default",
    )
    instance_sharpness: bool = Field(
        True, description="include L_IS (eq. 4, mean per-image prediction entropy) in the loss (Fig. 3 ablation)"
    )
    class_diversity: bool = Field(
        True, description="include L_CD (eq. 5, minus the entropy of the batch-mean prediction) in the loss "
        "(Fig. 3 ablation)",
    )
    cooperative_cluster: bool = Field(
        True, description="Cooperative Cluster (eq. 7): equalise the weights outside the malicious cluster; "
        "off = the learned softmax(M) is the final weighting and every client is accepted (Fig. 3 ablation)",
    )
    clustering: ClusteringMethod = Field(
        "finch", description="clustering of the learned weights for Cooperative Cluster: finch (the paper's, "
        "parameter-free), kmeans (2 clusters) or dbscan (Table 2, Appendix E)",
    )
    dbscan_eps: float = Field(
        0.25, gt=0, description="DBSCAN radius epsilon (eq. 13) in units of the uniform weight 1/n (0.25: weights "
        "closer than a quarter of a uniform share are neighbours); the paper gives no value",
    )
    dbscan_min_samples: int = Field(
        2, ge=1, description="DBSCAN minPts (eq. 13), counting the point itself; the paper gives no value",
    )
    augmentation: Augmentation = Field(
        "weak", description="augmentation of the public batches (Table 3b: weak, the paper's setting, or "
        "strong); weak = random flip + shift, strong = weak + Gaussian noise + random erasing; none = off",
    )
    shift_fraction: float = Field(
        0.125, ge=0, lt=0.5, description="largest translation of the weak augmentation, as a fraction of the "
        "image side (0.125 = 4 pixels at 32 x 32)",
    )
    noise_std: float = Field(
        0.1, ge=0, description="std of the strong augmentation's Gaussian noise, relative to the batch's std"
    )
    erase_prob: float = Field(
        0.5, ge=0, le=1, description="probability that the strong augmentation erases a rectangle of an image"
    )


@register
class SDEA(Aggregator[SDEAParams]):
    """Self-Driven Entropy Aggregation (SDEA, ICML 2024): weights learned on unlabeled public data.

    Per round (Algorithm 1): M = 0 in R^n; ``public_subset`` public images are drawn from ``ctx.generator``
    (a generator seeded 0 when the context has none; it also seeds KMeans);
    for each of ``epochs`` passes the subset is reshuffled and cut into batches of ``batch_size`` (the last
    one may be smaller); each batch is augmented (``augmentation``), the model
    theta_g + softmax(M) @ updates (eq. 3) evaluated with ``ctx.model_fn`` and M moved by one Adam step on
    L_IS + L_CD (eqs. 4-6; either term can be switched off, and with both off M stays 0). A step whose loss
    or gradient is not finite (an update so large that the logits overflow) is skipped and counted. The
    learned weights softmax(M) then go through Cooperative Cluster (eq. 7, :func:`cooperative_cluster`),
    unless it is off; the update is sum_k weight_k Delta_k.

    Choices where the paper is silent: entropies in nats (the base scales both terms alike); M starts at 0
    (equal weights) every round; the subset size (2,000 by default) and the augmentations' details (see
    :func:`augment`); FINCH on the scalar weights with Euclidean distance, first partition (a lone attacker
    cannot form a FINCH cluster of its own: see :func:`cluster_weights`); KMeans with 2 clusters and 10
    restarts; DBSCAN's radius and minPts (its noise points form one group). Buffers (BatchNorm running
    statistics) are mixed with the same weights; ``model_fn`` gives them no gradient.

    weights = the final aggregation weights; accepted = outside the malicious cluster (all True when
    Cooperative Cluster is off or finds one cluster); info: loss_final / l_is_final / l_cd_final (means over
    the last epoch's batches of the optimised loss and of both terms, nan when no step was taken),
    num_clusters, malicious_cluster_size, skipped_steps, num_accepted, update_norm_ratio.

    Hostile rows (``tolerated_rows`` = 0). SDEA judges a client by the entropy of the mixed model's
    predictions, not by the size of its update, and faithfully so. A huge update (a 1e30 row) dominates the
    mixed model whatever M is: its logits saturate (a confident model, zero gradient), overflow (every Adam
    step skipped) or shift every class alike, so the loss is flat in M, softmax(M) stays uniform,
    Cooperative Cluster finds one cluster and the update is the plain mean, ~1e30 / n; an outlier that
    makes the model more confident is favoured anyway (SDEA §3.3, limitation ii). The rule keeps this and
    reports it: ``info["update_norm_ratio"]`` = ``||update|| / median_i ||x_i||`` (about 1 or below in an
    ordinary round, ~1e29 then). The weighted mean of finite rows stays finite (a float32 sum that
    overflows is redone in float64), within the rows' coordinate range.
    """

    name = "sdea"
    Params = SDEAParams
    needs = frozenset({"global_params", "model_fn", "public_data", "generator"})

    @classmethod
    def tolerated_rows(cls, params: SDEAParams, num_clients: int, num_byzantine: int) -> int:
        return 0

    def learn_weights(
        self, updates: torch.Tensor, ctx: RoundContext, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """softmax(M) [n] after the E epochs of Adam on L_COL (eqs. 3-6), and the loss statistics."""
        p = self.params
        global_params = require_server_inputs(self.name, updates, ctx, "public_data")
        public = ctx.public_data.detach().to(updates.device)
        if len(public) == 0:
            raise ValueError("aggregator 'sdea': public_data is empty")
        n = updates.shape[0]
        total = len(public)
        size = total if p.public_subset is None else min(p.public_subset, total)
        subset = torch.randperm(total, generator=generator)[:size]
        rows = updates.detach()
        logits_m = torch.zeros(n, dtype=updates.dtype, device=updates.device, requires_grad=True)
        adam = torch.optim.Adam([logits_m], lr=p.lr)
        train = (p.instance_sharpness or p.class_diversity) and n > 1
        epoch_stats = torch.zeros(3, dtype=torch.float64, device=updates.device)
        skipped = 0
        with torch.enable_grad():
            for _ in range(p.epochs if train else 0):
                epoch_stats = torch.zeros(3, dtype=torch.float64, device=updates.device)
                order = subset[torch.randperm(size, generator=generator)]
                for batch in order.split(p.batch_size):
                    x = public[batch.to(public.device)]
                    x = augment(
                        x, p.augmentation, generator, shift_fraction=p.shift_fraction, noise_std=p.noise_std,
                        erase_prob=p.erase_prob,
                    )
                    weights = torch.softmax(logits_m, dim=0)  # eq. 3
                    theta = global_params + weights @ rows
                    logits = ctx.model_fn(theta, x)
                    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                    l_is, l_cd = sdea_loss_from_logits(logits)
                    loss = (l_is if p.instance_sharpness else 0.0) + (l_cd if p.class_diversity else 0.0)  # eq. 6
                    (grad,) = torch.autograd.grad(loss, logits_m)
                    epoch_stats += torch.stack([loss, l_is, l_cd]).detach().double()
                    if not bool(torch.isfinite(grad).all() & torch.isfinite(loss)):
                        skipped += 1
                        continue
                    logits_m.grad = grad
                    adam.step()
        batches = math.ceil(size / p.batch_size)
        stats = (epoch_stats / batches).tolist() if train and p.epochs > 0 else [float("nan")] * 3
        info = {"loss_final": stats[0], "l_is_final": stats[1], "l_cd_final": stats[2], "skipped_steps": float(skipped)}
        return torch.softmax(logits_m.detach(), dim=0), info

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        p = self.params
        n = updates.shape[0]
        generator = generator_or_seeded(ctx.generator, 0)
        learned, info = self.learn_weights(updates, ctx, generator)
        if p.cooperative_cluster:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if p.clustering == "kmeans" else 0
            labels = cluster_weights(
                learned, p.clustering, dbscan_eps=p.dbscan_eps, dbscan_min_samples=p.dbscan_min_samples, seed=seed
            )
            weights, malicious = cooperative_cluster(learned, labels)
            num_clusters = int(labels.max()) + 1
        else:
            weights, malicious, num_clusters = learned, torch.zeros(n, dtype=torch.bool, device=updates.device), 1
        accepted = ~malicious
        update = weighted_rows(weights, updates)
        info.update(
            num_clusters=float(num_clusters),
            malicious_cluster_size=float(malicious.sum()),
            num_accepted=float(accepted.sum()),
            update_norm_ratio=update_norm_ratio(update, updates),
        )
        return AggregationResult(update, weights, accepted, info)
