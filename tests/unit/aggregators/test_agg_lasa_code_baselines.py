"""The LASA authors' baselines (``variant: lasa_code``): GeoMed, SignGuard and SparseFed as their code
(``JiiahaoXU/LASA``, ``algorithms/defense/``) computes them, on small hand-worked inputs; and the client-side
update clipping of their engine (``clients.update_clip``)."""

import numpy as np
import pytest
import torch

from byzlab.aggregators import RoundContext, build
from byzlab.orchestrator.learning.training import clip_to_norm


def _ctx(n, seed=0):
    return RoundContext(client_ids=torch.arange(n), num_byzantine=0, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- GeoMed
def _code_geomed(points: np.ndarray, reweights: int = 2) -> np.ndarray:
    """The LASA authors' ``geomed`` transcribed to numpy (byzantine_robust_aggregation.py l.201-224, with
    geom_median's ``geometric_median_array``: start at the weighted mean, Weiszfeld with denominators clamped
    at eps = 1e-6, stop when the weighted mean distance changes by <= 1e-20 of itself or after 100 steps)."""

    def median(weights):
        z = weights @ points / weights.sum()
        objective = np.average(np.linalg.norm(points - z, axis=1), weights=weights)
        for _ in range(100):
            beta = weights / np.maximum(np.linalg.norm(points - z, axis=1), 1e-6)
            z = beta @ points / beta.sum()
            previous, objective = objective, np.average(np.linalg.norm(points - z, axis=1), weights=weights)
            if abs(previous - objective) <= 1e-20 * objective:
                break
        return z

    weights = np.ones(len(points))
    z = median(weights)
    for _ in range(reweights):
        weights = weights * np.exp(-np.linalg.norm(points - z, axis=1))
        z = median(weights)
    return z


def test_geomed_lasa_code_reweights_twice_towards_the_dense_updates():
    # Three updates near the origin, two far to the right: the plain geometric median sits among the three;
    # each exp(-distance) pass divides the far pair's weight by ~e^3.5, so the code's median moves further in.
    points = np.array([[0.0, 0.0], [0.4, 0.1], [0.1, 0.5], [4.0, 0.0], [4.2, 0.3]])
    updates = torch.tensor(points, dtype=torch.float64)
    code = build("geomed", variant="lasa_code", tol=1e-12)(updates, _ctx(5))
    paper = build("geomed", weighting="uniform", tol=1e-12)(updates, _ctx(5))
    assert np.allclose(code.update.numpy(), _code_geomed(points), atol=1e-7)
    assert np.allclose(paper.update.numpy(), _code_geomed(points, reweights=0), atol=1e-7)
    # The passes pull the median towards the three: further from the far pair than the plain median.
    assert code.update[0] < paper.update[0]
    assert code.info["reweights"] == 2.0
    assert torch.allclose(code.weights @ updates, code.update)


def test_geomed_lasa_code_far_rows_do_not_underflow_every_weight():
    # exp(-1e3) is 0 in float64: the code's weights would all vanish at these distances; byzlab keeps the
    # weights as logarithms, so the ratios survive and the median stays among the close rows.
    updates = torch.tensor([[1000.0, 0.0], [1000.5, 0.0], [1000.2, 0.4], [-1000.0, 0.0]], dtype=torch.float64)
    result = build("geomed", variant="lasa_code", tol=1e-12)(updates, _ctx(4))
    assert bool(torch.isfinite(result.update).all())
    assert 1000.0 <= float(result.update[0]) <= 1000.5


def test_geomed_lasa_code_takes_equal_weights_only():
    assert build("geomed", variant="lasa_code").params.weighting == "uniform"
    with pytest.raises(ValueError, match="weighting must be uniform"):
        build("geomed", variant="lasa_code", weighting="samples")


# ----------------------------------------------------------------------------------------------- SignGuard
def test_signguard_lasa_code_plain_mean_and_strict_norm_bounds_by_hand():
    # Rows c_i·1 in d = 100: norms 10·|c_i| = [10, 20, 10, 30, 10], median M = 10, bounds 0.1·M and 3·M = 30.
    # Signs: rows 0-3 all positive, row 4 all negative -> features (1, 0, 0) x4 and (0, 0, 1): row 4 is alone.
    # Code (l.74-75 strict, l.136 unclipped mean): row 3 (norm exactly 30) fails 30 < 30; mean of c = 1, 2, 1
    # is 4/3. Paper: row 3 passes 30 <= 30, every selected row is clipped to M = 10 -> all four are 1·1.
    updates = torch.tensor([1.0, 2.0, 1.0, 3.0, -1.0])[:, None] * torch.ones(5, 100)
    code = build("signguard", variant="lasa_code")(updates, _ctx(5))
    paper = build("signguard")(updates, _ctx(5))
    assert code.accepted.tolist() == [True, True, True, False, False]
    assert torch.allclose(code.update, torch.full((100,), 4.0 / 3.0))
    assert paper.accepted.tolist() == [True, True, True, True, False]
    assert torch.allclose(paper.update, torch.ones(100))


@pytest.mark.parametrize("seed", range(8))
def test_signguard_lasa_code_counts_signs_on_one_contiguous_block(seed):
    # Row 4 is negative on coordinates [0, 50) and positive on [50, 100); the others are positive everywhere.
    # The code counts signs on int(0.1·100) = 10 coordinates from an offset drawn in [0, 90) (l.86-87): row 4
    # looks like the others, and is kept, exactly when the block starts at 50 or later.
    updates = torch.ones(5, 100)
    updates[4, :50] = -1.0
    start = int(torch.randint(0, 90, (1,), generator=torch.Generator().manual_seed(seed)))
    result = build("signguard", variant="lasa_code")(updates, _ctx(5, seed))
    assert result.accepted.tolist() == [True, True, True, True, start >= 50]


# ----------------------------------------------------------------------------------------------- SparseFed
def test_sparsefed_lasa_code_top_k_of_the_mean_without_clip_or_memory():
    # Mean of the two rows: (2, -1, 0, 1.5). k = int(0.7 · 4) = 2 (round() would give 3): the top two by
    # magnitude are 2 and 1.5. Nothing is clipped (norms ~3.7 and ~3.3 against clip 1.0) and nothing is
    # carried over: the second round returns the same. The paper variant (k = 2 at fraction 0.5) sends the
    # same first, keeps (0, -1, 0, 0) and adds it to the second round's mean: (2, -2, 0, 1.5) -> (2, -2, 0, 0).
    updates = torch.tensor([[1.0, -3.0, 0.5, 2.0], [3.0, 1.0, -0.5, 1.0]])
    code = build("sparsefed", variant="lasa_code", topk_fraction=0.7)
    expected = torch.tensor([2.0, 0.0, 0.0, 1.5])
    assert torch.equal(code(updates, RoundContext()).update, expected)
    assert torch.equal(code(updates, RoundContext()).update, expected)
    assert code.state_dict() == {}
    paper = build("sparsefed", clip=100.0, topk_fraction=0.5)
    assert torch.equal(paper(updates, RoundContext()).update, expected)
    assert paper(updates, RoundContext()).update.tolist() == [2.0, -2.0, 0.0, 0.0]


def test_sparsefed_lasa_code_keeps_no_momentum():
    with pytest.raises(ValueError, match="momentum"):
        build("sparsefed", variant="lasa_code", momentum=0.9)


# -------------------------------------------------------------------------------------- the engine's clip
def test_update_clip_scales_long_updates_to_the_bound_and_leaves_short_ones():
    long = torch.tensor([3.0, 4.0])  # norm 5 -> divided by 5 / 1
    assert torch.allclose(clip_to_norm(long, 1.0), torch.tensor([0.6, 0.8]))
    short = torch.tensor([0.3, 0.4])
    assert clip_to_norm(short, 1.0) is short


# ------------------------------------------------------------------------------------------------- Bulyan
def _code_bulyan(points: np.ndarray, f: int) -> np.ndarray:
    """The LASA authors' ``bulyan`` (byzantine_robust_aggregation.py l.54-107) in numpy; ties go to the first
    (np.argmin, a stable sort), where the code's torch.argsort leaves their order unspecified."""
    remaining, chosen = list(range(len(points))), []
    while len(chosen) < len(points) - 2 * f and len(remaining) - 2 - f > 0:
        rows = np.sort([[np.sum((points[i] - points[j]) ** 2) for j in remaining] for i in remaining], axis=1)
        best = int(np.argmin(rows[:, : len(remaining) - 2 - f].sum(axis=1)))
        chosen.append(remaining.pop(best))
    cluster = points[chosen]
    lower_median = np.sort(cluster, axis=0)[(len(chosen) - 1) // 2]
    order = np.argsort(np.abs(cluster - lower_median), axis=0, kind="stable")
    return np.take_along_axis(cluster, order, axis=0)[f: len(chosen) - f].mean(axis=0)


def test_bulyan_lasa_code_drops_the_values_closest_to_the_median_by_hand():
    # n = 9, f = 2 (n >= 4f + 1): five clustered values and four spread outliers. Their Krum (scores over the
    # r - 2 - f smallest squared distances, own 0 included) selects 2, 1, 3, 0, 4 in that order (scores at the
    # first step: 10 for 2, 15 for 1 and 3, 30 for 0 and 4). The lower median of the five is 2; sorted by
    # distance to it: 2, 1, 3, 0, 4; positions f..theta-f-1 = 2..2 keep only 3. The paper's step (the
    # theta - 2f values closest to the median) would keep 2.
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 50.0, 100.0, 150.0, 200.0])[:, None]
    result = build("bulyan", variant="lasa_code", f=2)(values, _ctx(9))
    assert result.update.tolist() == [3.0]
    assert result.accepted.tolist() == [True] * 5 + [False] * 4
    assert result.info["selected"] == 5.0


@pytest.mark.parametrize("seed", range(4))
def test_bulyan_lasa_code_matches_the_transcribed_code(seed):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(size=(17, 6)), rng.normal(5.0, 3.0, size=(5, 6))])
    result = build("bulyan", variant="lasa_code", f=5)(torch.tensor(points), _ctx(22))
    assert np.allclose(result.update.numpy(), _code_bulyan(points, 5), atol=1e-12)


def test_bulyan_lasa_code_setting_and_own_count():
    build("bulyan", variant="lasa_code", f=5).check_setting(build("bulyan", variant="lasa_code", f=5).params, 21, 25)
    with pytest.raises(ValueError, match=r"n >= 4f \+ 1"):
        rule = build("bulyan", variant="lasa_code", f=5)
        rule.check_setting(rule.params, 20, 0)
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3"):
        rule = build("bulyan")
        rule.check_setting(rule.params, 21, 5)
