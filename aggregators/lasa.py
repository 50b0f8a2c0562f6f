"""LASA, Layer-Adaptive Sparsified model Aggregation (Xu, Zhang & Hu, "Achieving Byzantine-Resilient Federated
Learning via Layer-Adaptive Sparsified Model Aggregation", 2024).

Two public implementations are named below where they differ from the paper or from each other: FLPoison's
LASA aggregator (vio1etus/FLPoison, ``aggregators/lasa.py``; "FLPoison") and the authors' code
(JiiahaoXU/LASA, ``algorithms/defense/lasa.py`` with ``utils/mask_help.py``; "the authors' code").

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

* Median-norm clipping (``norm_clip``, default on): not in Algorithm 1, but both codes clip every update to
  the median L2 norm of the round, ``Delta_i <- Delta_i min(1, M / ||Delta_i||)``. The clip factor is a
  positive per-client scalar, so it changes neither the Top-k mask nor the PDP. We compute the filter's
  statistics on the *unclipped* ``Top_k(Delta_i)`` exactly as Algorithm 1 lines 6-7 (and FLPoison) do, and
  average the clipped sparsified layers ``s_i Top_k(Delta_i)^l`` (line 15 with the clip, as the authors'
  code does; FLPoison averages the clipped *dense* layers, sparsification then only feeding the filter,
  which departs from line 15). The authors' code writes the clipped vectors into the very dictionaries it
  then sparsifies and filters, so its magnitudes are those of the *clipped* updates: every norm above the
  median reads as the median, which hides the norm outliers the magnitude filter is there to catch (the
  paper's "Ma" component, Table 3). M is the median of the n parameter norms: the mean of the two middle
  ones for even n (numpy's median, as FLPoison); the authors' code takes torch's median, the lower one.
* Top-k (Definition 1) runs over all weight tensors of the update taken together (layout kind ``weight``:
  ndim >= 2, i.e. conv / linear / embedding / LSTM matrices), as both codes do (4-D and 2-D tensors); it keeps
  exactly ``k = ceil((1 - SL) * D)`` entries per client, D = number of weight coordinates (the paper's
  SL = 1 - k/d, §5 / App. 7.2; both codes round k down and keep only the entries strictly above the k-th
  largest magnitude, i.e. at most k - 1).
  Ties at the k-th magnitude are broken by ``torch.topk``. 1-D parameters (biases, norm scales) stay dense.
* Buffers (BatchNorm running statistics, layout kind ``buffer``): dense like 1-D tensors, and filtered per
  layer like every other tensor (both codes run the same filter on running_mean / running_var). They
  are neither counted in the clipping norm nor scaled by the clip factor: they are not gradient steps,
  their scale is unrelated to the parameters' (an early running_var delta can dwarf the whole gradient and
  would then decide every client's clip factor), and a rescaled running-mean delta is a statistic no client
  computed. Filtering them matters: a poisoned running_var reaches the model unchanged by any
  parameter-space defense. Integer buffers (num_batches_tracked, which both codes skip) are
  filtered the same way; honest clients that ran the same number of steps agree on them exactly (std 0).
  Without a layout (``ctx.layers`` empty) the whole vector is one weight layer.
* A layer is one tensor of the layout (the codes' state_dict keys).
* PDP (eq. 1) counts signs only, ``rho = (1 + (P - N) / (P + N)) / 2`` with P / N the numbers of positive /
  negative entries; an all-zero layer (P + N = 0) has rho = 0.5, the neutral value (eq. 1 is 0/0 there).
  FLPoison uses ``0.5 (P - N)/(P + N) (1 - SL)`` and the authors' code ``0.5 (1 + (P - N)/(P + N) (1 - SL))``,
  positive affine maps of rho: the same MZ-scores.
* MZ-score (eq. 2): median (mean of the two middle values for even n) and the population standard deviation
  (numpy's, as in both codes); MZ = 0 when the standard deviation is 0 (all values equal: nobody is an
  outlier). Bounds are inclusive (``<=``, Algorithm 1 line 11; both codes use ``<``),
  up to a relative :data:`MZ_TOLERANCE`: a client exactly on the radius in exact arithmetic stays, whatever
  float64 rounding makes of it (two groups of three equal rows have MZ = ±1, computed as 0.9999999999999983
  and 1.0000000000000016, which a bare ``<= 1`` would split).
  Note that with n = 3 some client always has |MZ| >= sqrt(3/2) = 1.22 unless all three values are equal,
  so with the default radius 1 every layer drops at least one of three clients.
* An empty benign set (possible: the magnitude and direction filters can reject complementary clients) falls
  back to all clients, as in both codes; ``info["fallback_layers"]`` counts such layers, and the
  clients then count as kept in that layer (they are what was averaged).

Outputs: ``accepted`` = kept in at least half of the layers; ``weights`` = each client's share of the kept
mass averaged over the layers, ``w_i = (1/L) sum_l [i in S^l] / |S^l|`` (sums to 1; the clip factor is not
included, so ``update != weights @ updates`` in general); ``info``: ``kept_share_min`` / ``_mean`` / ``_max``
(fraction of layers in which a client was kept), ``layers``, ``fallback_layers``, ``k``, ``clipped`` (clients
with clip factor < 1), ``median_norm``. Identical inputs u return ``Top_k(u)`` (not u) unless SL = 0.

Cost: on the CPU one client at a time on torch's threads (numpy releases the GIL): its Top-k threshold
selected (:func:`select`; ``torch.topk`` where magnitudes tie at the threshold), then its large layers'
statistics, in work rows reused across clients; smaller layers' statistics vectorised over blocks of rows; the
mean a slice of coordinates at a time. On other devices ``torch.topk`` on every row and every layer's
statistics over blocks of rows. No loop over coordinates in Python.
Beyond the input it holds the boolean Top-k mask [n, D] (a quarter of the input's bytes), per thread a
work row in the updates' dtype, a float64 and a bool one, and one block of about 2**24 elements: a peak of
0.4x the input at n = 100, d = 1.1e7, 8.3 s on two cores (benchmarks/results/aggregators.md; the work rows
weigh more with fewer clients).
"""

from __future__ import annotations

import math
import queue

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
    if values.device.type == "cpu":
        work = _RowWork(size, values.dtype)
        on_threads(lambda rows: [work.top_k(mask[i], [values[i]], k) for i in range(rows.start, rows.stop)],
                   (slice(i, i + 1) for i in range(n)))
    else:
        for i in range(n):
            _top_k_row(mask[i], values[i].abs(), k)
    return mask


def _top_k_row(mask: torch.Tensor, magnitudes: torch.Tensor, k: int) -> None:
    """``mask`` [D] = the Top-k of a row with ``magnitudes`` [D] by ``torch.topk`` (its choice among entries
    tied at the k-th magnitude is what this rule has always used); all True for k >= D."""
    size = magnitudes.numel()
    if k >= size:
        mask.fill_(True)
    elif k <= size - k:  # the smaller side: at most D/2 indices
        mask.fill_(False)
        mask[torch.topk(magnitudes, k, sorted=False).indices] = True
    else:
        mask.fill_(True)
        mask[torch.topk(magnitudes, size - k, largest=False, sorted=False).indices] = False


SAMPLE_STRIDE = 64
"""Every SAMPLE_STRIDE-th value is the sample that brackets the value :func:`select` looks for."""

SAMPLE_FROM = 1 << 20
"""Arrays from this size on are selected through a sample (:func:`select`); smaller ones by one partition."""


def select(values: np.ndarray, rank: int, above: np.ndarray, outside: np.ndarray) -> tuple[np.generic, bool]:
    """The value at position ``rank`` of ``values`` [m] sorted ascending, NaN last (``np.partition``'s), and
    whether ``values`` were reordered; ``above`` and ``outside`` are bool [m] work rows.

    A large array is not partitioned whole (60 ms for 1.1e7 float32 values; 20 ms this way): the value is
    bracketed by two order statistics of a systematic sample, ``lo <= v <= hi`` (ranks 4 sqrt(sample) apart
    on each side of the sample's own: far more than its spread), the values below lo and above hi are
    counted, and only the values in between (about 2% of them) are partitioned, as in Floyd & Rivest's
    selection (Communications of the ACM 18(3), 1975). Where the bracket misses (an unlucky sample, NaN) the
    whole array is partitioned: the value is the same either way."""
    size = values.size
    if size >= SAMPLE_FROM:
        sample = values[::SAMPLE_STRIDE].copy()
        position, margin = rank * sample.size / size, 4 * math.sqrt(sample.size)
        bounds = [max(0, int(position - margin)), min(sample.size - 1, int(position + margin))]
        sample.partition(bounds)
        lo, hi = sample[bounds[0]], sample[bounds[1]]
        count_above = np.count_nonzero(np.greater(values, hi, out=above))
        below = np.count_nonzero(np.less(values, lo, out=outside))
        np.logical_not(np.logical_or(above, outside, out=outside), out=outside)
        inside = np.compress(outside, values)  # NaN too: it compares false (compress: 2x boolean indexing)
        if below <= rank < size - count_above and not np.isnan(inside).any():
            inside.partition(rank - below)
            return inside[rank - below], False
    values.partition(rank)
    return values[rank], True


ROW_WISE_FROM = 1 << 16
"""Layers from this size on get their statistics a client at a time on the CPU (:class:`_RowWork`); smaller
ones, vectorised over blocks of rows, cost less than a Python call per client and layer would."""


class _RowWork:
    """One client row's CPU work in numpy (which releases the GIL, so rows run on torch's threads), in work
    rows of ``size`` entries (one in the updates' dtype, a float64 and a bool one) taken from a pool: one set
    per thread, allocated once (a fresh 88 MB row per call would be mapped and zeroed every time)."""

    def __init__(self, size: int, dtype: torch.dtype) -> None:
        self.size, self.dtype = size, torch.empty(0, dtype=dtype).numpy().dtype
        self._free: queue.SimpleQueue = queue.SimpleQueue()

    def _take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return np.empty(self.size, self.dtype), np.empty(self.size, np.float64), np.empty(self.size, bool)

    def top_k(self, mask: torch.Tensor, pieces: list[torch.Tensor], k: int) -> None:
        """``mask`` [D] = the Top-k (:func:`top_k_mask`) of the row made of ``pieces`` (CPU tensors, D entries
        in all). The k-th largest magnitude T is selected (:func:`select`) and the Top-k is ``|x| >= T``, the
        set ``torch.topk`` returns whenever exactly k magnitudes reach T; a row where more do (ties at T) goes
        through ``torch.topk`` (:func:`_top_k_row`)."""
        size = mask.numel()
        if k >= size:
            mask.fill_(True)
            return
        buffers = self._take()
        magnitudes, selected = buffers[0][:size], mask.numpy()

        def fill() -> None:
            start = 0
            for piece in pieces:
                np.abs(piece.numpy(), out=magnitudes[start : start + piece.numel()])
                start += piece.numel()

        fill()
        threshold, reordered = select(magnitudes, size - k, buffers[2][:size], selected)
        if reordered:
            fill()  # in order again
        np.greater_equal(magnitudes, threshold, out=selected)
        if np.count_nonzero(selected) != k:
            _top_k_row(mask, torch.from_numpy(magnitudes), k)
        self._free.put(buffers)

    def statistics(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """For a client's layer ``x`` [m] (a CPU tensor) and its Top-k ``mask`` [m] (None: dense): the float64
        L2 norms of x and of the sparsified layer, and the sparsified layer's numbers of positive and negative
        entries (PDP, eq. 1). The norms are ``torch.linalg.vector_norm`` of the row widened to float64, bit
        for bit the norms of the row blocks of the other devices' pass (a norm is reduced along its row alone,
        in the same order whichever block holds the row)."""
        buffers = self._take()
        size = x.numel()
        sparse, wide, signs = buffers[0][:size], buffers[1][:size], buffers[2][:size]
        values = x.numpy()
        np.copyto(wide, values)
        norm = torch.linalg.vector_norm(torch.from_numpy(wide))
        if mask is None:
            sparse_norm = norm
            sparse = values
        else:
            np.multiply(values, mask.numpy(), out=sparse)
            np.copyto(wide, sparse)
            sparse_norm = torch.linalg.vector_norm(torch.from_numpy(wide))
        positive = np.count_nonzero(np.greater(sparse, 0, out=signs))
        negative = np.count_nonzero(np.less(sparse, 0, out=signs))
        self._free.put(buffers)
        return norm, sparse_norm, positive, negative


def positive_direction_purity(x: torch.Tensor) -> torch.Tensor:
    """PDP (Definition 2, eq. 1) of each row of ``x`` [n, m] -> float64 [n]:
    ``(1 + sum sgn(x) / sum |sgn(x)|) / 2``; 0.5 for an all-zero row."""
    return _purity(torch.count_nonzero(x > 0, dim=1), torch.count_nonzero(x < 0, dim=1))


def _purity(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """PDP (eq. 1) from the numbers of positive and negative entries (integer tensors) -> float64."""
    pos, neg = positive.double(), negative.double()
    signed = pos + neg
    ratio = (pos - neg) / signed.clamp(min=1.0)
    return torch.where(signed > 0, 0.5 * (1.0 + ratio), torch.full_like(ratio, 0.5))


MZ_TOLERANCE = 1e-9
"""Relative slack of the MZ radii: far above float64 rounding (~1e-15), far below any score's meaning."""


def within(scores: torch.Tensor, radius: float) -> torch.Tensor:
    """``|scores| <= radius`` (Alg. 1 line 11), a score on the radius up to rounding counting as on it."""
    return scores.abs() <= radius * (1 + MZ_TOLERANCE)


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
    the round's median norm first (both public codes). See the module docstring for every choice.

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
        numpy_rows = updates.device.type == "cpu" and updates.dtype in (torch.float16, torch.float32, torch.float64)
        segments: dict[int, slice] = {}  # layout offset -> columns of the weight block
        mask = None
        if 0 < k < size:
            start = 0
            for layer in weight_layers:
                segments[layer.offset] = slice(start, start + layer.numel)
                start += layer.numel
            mask = torch.empty(n, size, dtype=torch.bool, device=updates.device)

        def sparsified(layer: Layer, rows: slice, columns: slice, out: torch.Tensor | None = None) -> torch.Tensor:
            """Rows ``rows`` and the layer's columns ``columns`` (relative to the layer) of Top_k(Delta), written
            into ``out`` (a flat buffer) when given."""
            block = updates[rows, layer.offset + columns.start : layer.offset + columns.stop]
            if layer.offset not in segments:
                return block
            segment = segments[layer.offset].start
            kept = mask[rows, segment + columns.start : segment + columns.stop]
            if out is None:
                return block * kept
            out = out[: block.numel()].view(block.shape)
            if not numpy_rows:
                return torch.mul(block, kept, out=out)
            values, flags, target = block.numpy(), kept.numpy(), out.numpy()  # numpy's is 3x faster here
            on_threads(lambda part: np.multiply(values[part], flags[part], out=target[part]),
                       (slice(start, start + 8) for start in range(0, block.shape[0], 8)))
            return out

        # Per-layer statistics on the unclipped sparsified update (Alg. 1 lines 6-7), and the parameter norms,
        # each over a whole row of the layer.
        num = len(layers)
        norms = torch.empty(n, num, dtype=torch.float64, device=updates.device)
        pdps = torch.empty(n, num, dtype=torch.float64, device=updates.device)
        layer_norms = torch.zeros(n, num, dtype=torch.float64, device=updates.device)  # parameters' (buffers: 0)
        row_wise = [j for j, layer in enumerate(layers) if numpy_rows and layer.numel >= ROW_WISE_FROM]
        if numpy_rows:
            # a client at a time on torch's threads: Top-k, then its large layers' statistics
            work = _RowWork(max([size, *(layers[j].numel for j in row_wise)]), updates.dtype)
            counts = torch.zeros(2, n, num, dtype=torch.long)

            def client(i: int) -> None:
                if mask is not None:
                    work.top_k(mask[i], [updates[i, layer.slice] for layer in weight_layers], k)
                for j in row_wise:
                    layer, segment = layers[j], segments.get(layers[j].offset)
                    norm, norms[i, j], counts[0, i, j], counts[1, i, j] = work.statistics(
                        updates[i, layer.slice], None if segment is None else mask[i, segment])
                    if layer.kind != "buffer":
                        layer_norms[i, j] = norm

            on_threads(lambda rows: [client(i) for i in range(rows.start, rows.stop)],
                       (slice(i, i + 1) for i in range(n)))
            pdps[:, row_wise] = _purity(counts[0, :, row_wise], counts[1, :, row_wise])
        elif mask is not None:
            for i in range(n):
                _top_k_row(mask[i], torch.cat([updates[i, layer.slice] for layer in weight_layers]).abs(), k)
        for j, layer in enumerate(layers):  # the other layers: vectorised over blocks of rows
            if j in row_wise:
                continue
            for rows in _row_blocks(n, layer.numel):  # float64 norms upcast their input: a block at a time
                if layer.kind != "buffer":
                    layer_norms[rows, j] = torch.linalg.vector_norm(
                        updates[rows, layer.slice], dim=1, dtype=torch.float64)
                block = sparsified(layer, rows, slice(0, layer.numel))
                norms[rows, j] = torch.linalg.vector_norm(block, dim=1, dtype=torch.float64)
                pdps[rows, j] = positive_direction_purity(block)
        param_sq = torch.zeros(n, dtype=torch.float64, device=updates.device)
        for j, layer in enumerate(layers):  # summed layer by layer
            if layer.kind != "buffer":
                param_sq += layer_norms[:, j].square()

        # Median-norm clipping (both public codes): s_i = min(1, M / ||Delta_i||), parameters only.
        param_norms = param_sq.sqrt()
        median_norm = torch.quantile(param_norms, 0.5)
        scales = torch.ones_like(param_norms)
        if p.norm_clip:  # tensor / tensor: exactly 1 at the median (a python scalar would divide by reciprocal)
            over = param_norms > median_norm
            scales[over] = median_norm / param_norms[over]

        # Layer-wise filter (Alg. 1 lines 8-14), eq. 2; an empty set falls back to all clients.
        kept = within(mz_scores(norms), p.lambda_m) & within(mz_scores(pdps), p.lambda_d)
        fallback = ~kept.any(dim=0)
        kept[:, fallback] = True
        share = kept.double() / kept.sum(dim=0, keepdim=True)  # [n, L]: 1/|S^l| on S^l

        # Layer-wise aggregation (line 15): mean of the kept clients' (clipped) sparsified layers.
        out = torch.empty(d, dtype=updates.dtype, device=updates.device)
        if ctx.layers:
            out.zero_()  # coordinates outside the layout (none in a model layout) stay 0
        chunks = [list(coordinate_chunks(layer.numel, n)) for layer in layers]
        scratch = torch.empty(n * max((c.stop - c.start for cs in chunks for c in cs), default=0),
                              dtype=updates.dtype, device=updates.device)  # a block's sparsified values
        for j, layer in enumerate(layers):
            coef = (share[:, j] if layer.kind == "buffer" else share[:, j] * scales).to(updates.dtype)
            for columns in chunks[j]:  # each coordinate's sum over the clients as whole
                out[layer.offset + columns.start : layer.offset + columns.stop] = weighted_rows(
                    coef, sparsified(layer, slice(0, n), columns, scratch))

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
