"""LASA, Layer-Adaptive Sparsified model Aggregation (Xu, Zhang & Hu, "Achieving Byzantine-Resilient Federated
Learning via Layer-Adaptive Sparsified Model Aggregation", 2024; authors' code: github.com/JiahaoXU/LASA).

"Reference code" below is the public implementation we could read, the LASA aggregator of the FLPoison
benchmark (the authors' repository itself was not available here); it is stated where it differs.

Algorithm 1 of the paper, per round, on the n updates Delta_i:

1. pre-aggregation sparsification (line 2): every update is sparsified on its own with the Top-k sparsifier of
   Definition 1, ``Delta^_i = Top_k(Delta_i)``: keep the k entries of largest magnitude, zero the others;
2. per layer l (lines 4-16): magnitude ``omega_i^l = ||Delta^_i^l||_2`` and direction ``rho_i^l = PDP(Delta^_i^l)``
   (Positive Direction Purity, Definition 2, eq. 1); their MZ-scores (Definition 3, eq. 2)
   ``lambda_i = (x_i - Med(X)) / sigma(X)``; client i is in the layer's benign set S^l iff
   ``|lambda_{i,m}^l| <= lambda_m`` and ``|lambda_{i,d}^l| <= lambda_d``;
3. the layer's update is the mean of the kept clients' sparsified layers, ``(1/|S^l|) sum_{i in S^l} Delta^_i^l``
   (line 15).

Choices and precisions (all stated in the parameter descriptions too):

* Median-norm clipping (``norm_clip``, default on): not in Algorithm 1, but the reference code clips every
  update to the median L2 norm of the round, ``Delta_i <- Delta_i min(1, M / ||Delta_i||)``. The clip factor
  is a positive per-client scalar, so it changes neither the Top-k mask nor the PDP; we compute the filter's
  statistics on the *unclipped* ``Top_k(Delta_i)`` exactly as Algorithm 1 lines 6-7 (and the reference code)
  do, and average the clipped sparsified layers ``s_i Top_k(Delta_i)^l`` (line 15 with the clip; the
  reference code averages the clipped *dense* layers, sparsification then only feeding the filter, which
  departs from line 15). Computing the magnitudes after clipping would hide the very norm outliers the
  magnitude filter is there to catch (the paper's "Ma" component, Table 3). M is the median of the n
  parameter norms (mean of the two middle ones for even n, numpy's median as in the reference code).
* Top-k (Definition 1) runs over all weight tensors of the update taken together (layout kind ``weight``:
  ndim >= 2, i.e. conv / linear / embedding / LSTM matrices), as the reference code does; it keeps exactly
  ``k = ceil((1 - SL) * D)`` entries per client, D = number of weight coordinates (the paper's
  SL = 1 - k/d, §5 / App. 7.2; the reference code rounds k down and keeps only the entries strictly above
  the k-th largest magnitude, i.e. at most k - 1).
  Ties at the k-th magnitude are broken by ``torch.topk``. 1-D parameters (biases, norm scales) stay dense.
* Buffers (BatchNorm running statistics, layout kind ``buffer``): dense like 1-D tensors, and filtered per
  layer like every other tensor (the reference code runs the same filter on running_mean / running_var). They
  are neither counted in the clipping norm nor scaled by the clip factor: they are not gradient steps,
  their scale is unrelated to the parameters' (an early running_var delta can dwarf the whole gradient and
  would then decide every client's clip factor), and a rescaled running-mean delta is a statistic no client
  computed. Filtering them matters: a poisoned running_var reaches the model unchanged by any
  parameter-space defense. Integer buffers (num_batches_tracked, which the reference code skips) are
  filtered the same way; honest clients that ran the same number of steps agree on them exactly (std 0).
  Without a layout (``ctx.layers`` empty) the whole vector is one weight layer.
* A layer is one tensor of the layout (the reference code's state_dict keys).
* PDP (eq. 1) counts signs only, ``rho = (1 + (P - N) / (P + N)) / 2`` with P / N the numbers of positive /
  negative entries; an all-zero layer (P + N = 0) has rho = 0.5, the neutral value (eq. 1 is 0/0 there).
  The reference code uses ``0.5 (P - N)/(P + N) (1 - SL)``, a positive affine map of rho: same MZ-scores.
* MZ-score (eq. 2): median (mean of the two middle values for even n) and the population standard deviation
  (numpy's default, as in the reference code); MZ = 0 when the standard deviation is 0 (all values equal:
  nobody is an outlier). Bounds are inclusive (``<=``, Algorithm 1 line 11; the reference code uses ``<``).
  Note that with n = 3 some client always has |MZ| >= sqrt(3/2) = 1.22 unless all three values are equal,
  so with the default radius 1 every layer drops at least one of three clients.
* An empty benign set (possible: the magnitude and direction filters can reject complementary clients) falls
  back to all clients, as in the reference code; ``info["fallback_layers"]`` counts such layers, and the
  clients then count as kept in that layer (they are what was averaged).

Outputs: ``accepted`` = kept in at least half of the layers; ``weights`` = each client's share of the kept
mass averaged over the layers, ``w_i = (1/L) sum_l [i in S^l] / |S^l|`` (sums to 1; the clip factor is not
included, so ``update != weights @ updates`` in general); ``info``: ``kept_share_min`` / ``_mean`` / ``_max``
(fraction of layers in which a client was kept), ``layers``, ``fallback_layers``, ``k``, ``clipped`` (clients
with clip factor < 1), ``median_norm``. Identical inputs u return ``Top_k(u)`` (not u) unless SL = 0.

Cost: each client's Top-k threshold is selected (numpy's introselect; ``torch.topk`` where magnitudes tie at
the threshold, and on GPUs), then passes over the layers with vectorised reductions, a few rows at a time
for the per-client statistics and a slice of coordinates at a time for the mean (no loop over clients or
coordinates in Python). Beyond the input it holds the boolean Top-k mask [n, D] (a quarter of the input's
bytes), one copy of a row per thread and one block of about 2**24 elements: about 1.3x the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field

from byzlab.aggregators.base import AggregationResult, Aggregator, AggregatorParams, RoundContext
from byzlab.aggregators.numerics import CHUNK_ELEMENTS, coordinate_chunks, weighted_rows
from byzlab.aggregators.registry import register
from byzlab.orchestrator.core.columns import on_threads
from byzlab.orchestrator.core.layout import Layer


class LASAParams(AggregatorParams):
    sparsity: float = Field(
        0.3,
        ge=0.0,
        lt=1.0,
        description="sparsification level SL = 1 - k/D of the per-client Top-k over the weight tensors "
        "(Definition 1); k = ceil((1 - SL) D). 0.3 for all datasets in the paper (§5, App. 7.2); App. 7.6 / "
        "Table 5 sweeps 0.1-0.99. 0 = no sparsification",
    )
    lambda_m: float = Field(
        1.0,
        ge=0.0,
        description="magnitude radius: client kept in a layer only if |MZ-score of its layer L2 norm| <= "
        "lambda_m (Alg. 1 line 11). 1.0 is the paper's value for CIFAR-10/100; it uses 2.0 for the other "
        "datasets (MNIST, FMNIST, FEMNIST, Shakespeare; §5, App. 7.2; Table 6 / App. 7.7)",
    )
    lambda_d: float = Field(
        1.0,
        ge=0.0,
        description="direction radius: client kept in a layer only if |MZ-score of its layer PDP| <= "
        "lambda_d (Alg. 1 line 11). 1.0 by default in the paper (§5, App. 7.2); App. 7.4 uses 1.5 for "
        "FEMNIST and Shakespeare; Table 6 / App. 7.7",
    )
    norm_clip: bool = Field(
        True,
        description="clip every update to the round's median parameter norm before averaging (public "
        "LASA implementations do; not in Alg. 1). Filter statistics use the unclipped sparsified "
        "update either way; buffers are never clipped",
    )


def top_k_count(sparsity: float, size: int) -> int:
    """k = ceil((1 - SL) * size), clamped to [1, size] (Definition 1 needs k >= 1); 0 for size 0. A product
    within 1e-9 (relative) of an integer is that integer, so float noise (1 - 0.7 = 0.30000000000000004)
    does not add an entry."""
    if size <= 0:
        return 0
    x = (1.0 - sparsity) * size
    nearest = round(x)
    k = nearest if abs(x - nearest) <= 1e-9 * max(1.0, x) else math.ceil(x)
    return min(size, max(1, k))


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [n, D]: True on the k entries of largest magnitude of each row (Definition 1); ties at the k-th
    magnitude are broken by ``torch.topk``. Exactly k True per row."""
    n, size = values.shape
    mask = torch.empty(n, size, dtype=torch.bool, device=values.device)
    _fill_top_k(mask, lambda i: values[i].abs(), k)
    return mask


def _fill_top_k(mask: torch.Tensor, magnitudes_of_row: Callable[[int], torch.Tensor], k: int) -> None:
    """Write each row's Top-k mask (:func:`top_k_mask`) into ``mask`` [n, D], one row's magnitudes at a time.

    On the CPU the k-th largest magnitude T is selected (numpy's introselect, rows spread over torch's
    threads) and the row's Top-k is ``|x| >= T``, the same set ``torch.topk`` returns whenever exactly k
    magnitudes reach T. A row where more do (ties at T) goes through ``torch.topk``, whose choice among the
    tied entries is what this rule has always used. Other devices use ``torch.topk`` on every row."""
    n, size = mask.shape
    if k >= size:
        mask.fill_(True)
        return

    def by_topk(i: int, magnitudes: torch.Tensor) -> None:
        if k <= size - k:  # the smaller side: at most D/2 indices
            mask[i] = False
            mask[i, torch.topk(magnitudes, k, sorted=False).indices] = True
        else:
            mask[i] = True
            mask[i, torch.topk(magnitudes, size - k, largest=False, sorted=False).indices] = False

    def by_selection(i: int) -> None:
        magnitudes = magnitudes_of_row(i)
        selected = np.array(magnitudes.numpy())  # a copy, partitioned in place
        selected.partition(size - k)
        threshold = selected[size - k]
        torch.ge(magnitudes, float(threshold), out=mask[i])
        if int(mask[i].sum()) != k:
            by_topk(i, magnitudes)

    if mask.device.type != "cpu":
        for i in range(n):
            by_topk(i, magnitudes_of_row(i))
        return
    on_threads(lambda rows: [by_selection(i) for i in range(rows.start, rows.stop)],
               (slice(i, i + 1) for i in range(n)))


def positive_direction_purity(x: torch.Tensor) -> torch.Tensor:
    """PDP (Definition 2, eq. 1) of each row of ``x`` [n, m] -> float64 [n]:
    ``(1 + sum sgn(x) / sum |sgn(x)|) / 2``; 0.5 for an all-zero row."""
    pos = torch.count_nonzero(x > 0, dim=1).double()
    neg = torch.count_nonzero(x < 0, dim=1).double()
    signed = pos + neg
    ratio = (pos - neg) / signed.clamp(min=1.0)
    return torch.where(signed > 0, 0.5 * (1.0 + ratio), torch.full_like(ratio, 0.5))


def mz_scores(values: torch.Tensor) -> torch.Tensor:
    """MZ-scores (Definition 3, eq. 2) down dim 0 of ``values`` [n, L]: ``(x - median) / std`` with the
    population std and the mean of the two middle values as the median for even n; 0 where std is 0."""
    values = values.double()
    median = torch.quantile(values, 0.5, dim=0, keepdim=True)
    std = values.std(dim=0, correction=0, keepdim=True)
    return torch.where(std > 0, (values - median) / std.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def _row_blocks(n: int, width: int) -> list[slice]:
    """Slices of ``range(n)`` whose [rows, width] blocks hold about :data:`numerics.CHUNK_ELEMENTS` elements."""
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _layout(ctx: RoundContext, d: int) -> tuple[Layer, ...]:
    if not ctx.layers:
        return (Layer("update", (d,), 0, "weight"),)
    size = max(layer.offset + layer.numel for layer in ctx.layers)
    if size != d:
        raise ValueError(f"lasa: the layout covers {size} coordinates, the updates have {d}")
    return tuple(layer for layer in ctx.layers if layer.numel > 0)


@register
class LASA(Aggregator[LASAParams]):
    """LASA (Xu, Zhang & Hu 2024, Algorithm 1): per-client Top-k sparsification of the weight tensors
    (Definition 1), then per layer a magnitude (L2 norm) and direction (PDP, eq. 1) filter by MZ-score (eq. 2)
    with radii lambda_m / lambda_d, and the mean of the kept clients' sparsified layers; updates clipped to
    the round's median norm first (reference code). See the module docstring for every choice.

    Hostile rows (``tolerated_rows``: fewer than half). Norms and MZ-scores are float64, so rows up to
    float32's largest value neither overflow nor hide each other's statistics; with fewer than n/2 hostile
    rows the median norm is an honest one, and every kept parameter row is clipped to it, so the aggregate
    stays on the honest rows' scale even when an outlier passes the MZ filter (two hostile rows of very
    different sizes: the larger inflates the standard deviation, the smaller gets an MZ-score near 0).
    Buffers are not clipped (module docstring): there the MZ filter alone decides, and such a pair can pass
    a hostile buffer row. Past the breakdown point the median norm is a hostile one and the aggregate
    follows the hostile rows: finite (sums that overflow float32 are redone in float64).
    """

    name = "lasa"
    Params = LASAParams

    @classmethod
    def tolerated_rows(cls, params: LASAParams, num_clients: int, num_byzantine: int) -> int:
        """Fewer than half with median-norm clipping. Without it only the MZ filter bounds a hostile row: a
        lone outlier's |MZ-score| is n / sqrt(n - 1) (one far value among n), so one row is caught while
        that exceeds lambda_m; two of different sizes are not (see above)."""
        n = num_clients
        if params.norm_clip:
            return (n - 1) // 2
        return 1 if n > 1 and n / math.sqrt(n - 1) > params.lambda_m else 0
    needs = frozenset({"layers"})

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        """One round of Algorithm 1. Long because it is Algorithm 1 read top to bottom (Top-k, per-layer
        statistics, median-norm clipping, the layer-wise filter, layer-wise aggregation), one pass over
        intermediate tensors (the Top-k mask, the per-layer statistics) that helpers would pass around."""
        p = self.params
        n, d = updates.shape
        layers = _layout(ctx, d)
        weight_layers = [layer for layer in layers if layer.kind == "weight"]

        # Top-k over the weight tensors of each client taken together (Definition 1), all clients at once.
        size = sum(layer.numel for layer in weight_layers)
        k = top_k_count(p.sparsity, size)
        segments: dict[int, slice] = {}  # layout offset -> columns of the weight block
        mask = None
        if 0 < k < size:
            start = 0
            for layer in weight_layers:
                segments[layer.offset] = slice(start, start + layer.numel)
                start += layer.numel
            mask = torch.empty(n, size, dtype=torch.bool, device=updates.device)
            _fill_top_k(mask, lambda i: torch.cat([updates[i, layer.slice] for layer in weight_layers]).abs(), k)

        def sparsified(layer: Layer, rows: slice, columns: slice) -> torch.Tensor:
            """Rows ``rows`` and the layer's columns ``columns`` (relative to the layer) of Top_k(Delta)."""
            block = updates[rows, layer.offset + columns.start : layer.offset + columns.stop]
            if layer.offset not in segments:
                return block
            segment = segments[layer.offset].start
            return block * mask[rows, segment + columns.start : segment + columns.stop]

        # Per-layer statistics on the unclipped sparsified update (Alg. 1 lines 6-7), and the parameter norms;
        # a whole row at a time (each row's sums as over the whole layer), a few rows at once.
        num = len(layers)
        norms = torch.empty(n, num, dtype=torch.float64, device=updates.device)
        pdps = torch.empty(n, num, dtype=torch.float64, device=updates.device)
        param_sq = torch.zeros(n, dtype=torch.float64, device=updates.device)
        for j, layer in enumerate(layers):
            for rows in _row_blocks(n, layer.numel):  # float64 norms upcast their input: a block at a time
                if layer.kind != "buffer":
                    param_sq[rows] += torch.linalg.vector_norm(
                        updates[rows, layer.slice], dim=1, dtype=torch.float64).square()
                block = sparsified(layer, rows, slice(0, layer.numel))
                norms[rows, j] = torch.linalg.vector_norm(block, dim=1, dtype=torch.float64)
                pdps[rows, j] = positive_direction_purity(block)

        # Median-norm clipping (reference code): s_i = min(1, M / ||Delta_i||), parameters only.
        param_norms = param_sq.sqrt()
        median_norm = torch.quantile(param_norms, 0.5)
        scales = torch.ones_like(param_norms)
        if p.norm_clip:  # tensor / tensor: exactly 1 at the median (a python scalar would divide by reciprocal)
            over = param_norms > median_norm
            scales[over] = median_norm / param_norms[over]

        # Layer-wise filter (Alg. 1 lines 8-14), eq. 2; an empty set falls back to all clients.
        kept = (mz_scores(norms).abs() <= p.lambda_m) & (mz_scores(pdps).abs() <= p.lambda_d)
        fallback = ~kept.any(dim=0)
        kept[:, fallback] = True
        share = kept.double() / kept.sum(dim=0, keepdim=True)  # [n, L]: 1/|S^l| on S^l

        # Layer-wise aggregation (line 15): mean of the kept clients' (clipped) sparsified layers.
        out = torch.empty(d, dtype=updates.dtype, device=updates.device)
        if ctx.layers:
            out.zero_()  # coordinates outside the layout (none in a model layout) stay 0
        for j, layer in enumerate(layers):
            coef = (share[:, j] if layer.kind == "buffer" else share[:, j] * scales).to(updates.dtype)
            for columns in coordinate_chunks(layer.numel, n):  # each coordinate's sum over the clients as whole
                out[layer.offset + columns.start : layer.offset + columns.stop] = weighted_rows(
                    coef, sparsified(layer, slice(0, n), columns))

        kept_count = kept.sum(dim=1)
        kept_share = kept_count.double() / num
        accepted = 2 * kept_count >= num
        weights = share.mean(dim=1).to(updates.dtype)
        info = {
            "kept_share_min": float(kept_share.min()),
            "kept_share_mean": float(kept_share.mean()),
            "kept_share_max": float(kept_share.max()),
            "layers": float(num),
            "fallback_layers": float(fallback.sum()),
            "k": float(k),
            "clipped": float((scales < 1).sum()),
            "median_norm": float(median_norm),
        }
        return AggregationResult(update=out, weights=weights, accepted=accepted, info=info)
