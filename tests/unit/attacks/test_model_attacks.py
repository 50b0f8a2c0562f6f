"""Model attacks (attacks/model.py) and the quantity attack (attacks/quantity.py): defining properties,
hand-worked values, reproducibility and parameter validation."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from byzlab.attacks import model as model_attacks
from byzlab import attacks
from byzlab.attacks.base import AttackContext
from byzlab.attacks.model import LieAttack
from byzlab.orchestrator.core.layout import Layer
from byzlab.attacks.registry import build
from sorting_search import craft_by_sorting

MODEL_ATTACKS = [
    "random", "noise", "gaussian_scale", "sign_flip", "lie", "min_max", "min_sum", "tailored_trmean", "byzmean", "ipm",
]


def ctx(n: int, f: int, seed: int = 0, **kw) -> AttackContext:
    return AttackContext(round=1, num_clients=n, num_malicious=f, generator=torch.Generator().manual_seed(seed), **kw)


def rows(m: int, d: int, seed: int, shift: float = 0.3) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed)) + shift


# ------------------------------------------------------------------------------------------------- common


@pytest.mark.parametrize("name", MODEL_ATTACKS)
def test_shapes_dtype_and_no_attackers(name):
    benign, own = rows(6, 10, 0), rows(3, 10, 1)
    models = {"initial_params": torch.ones(10), "global_params": torch.zeros(10)}
    out = build(name).craft(own, benign, ctx(9, 3, **models))
    assert out.shape == (3, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out64 = build(name).craft(own.double(), benign.double(), ctx(9, 3, **models))
    assert out64.dtype == torch.float64
    empty = build(name).craft(own[:0], benign, ctx(6, 0))
    assert empty.shape == (0, 10)


@pytest.mark.parametrize("name", ["lie", "min_max", "min_sum", "tailored_trmean", "ipm", "byzmean"])
def test_single_reference_row_is_handled(name):
    # m = 1: the std of one row is 0, so nothing is NaN
    ref = torch.tensor([[1.0, -2.0, 3.0]])
    out = build(name).craft(ref.clone(), ref, ctx(2, 1))
    assert torch.isfinite(out).all()


def test_single_reference_row_lie_and_min_max_return_that_row():
    ref = torch.tensor([[1.0, -2.0, 3.0]])
    own = torch.zeros(2, 3)
    assert torch.equal(build("lie", z=1.0).craft(own, ref, ctx(3, 2)), ref.repeat(2, 1))
    assert torch.equal(build("min_max").craft(own, ref, ctx(3, 2)), ref.repeat(2, 1))


# ---------------------------------------------------------------------------------------------------- LIE


def test_lie_hand_computed():
    ref = torch.tensor([[1.0, 0.0], [2.0, 4.0], [6.0, 2.0]])
    # column 0: mean 3, deviations -2, -1, 3 -> sample var (4 + 1 + 9) / 2 = 7 -> std sqrt(7) = 2.6457513
    # column 1: mean 2, deviations -2, 2, 0 -> sample var 8 / 2 = 4 -> std 2
    # z = 1.5: [3 - 1.5 * 2.6457513, 2 - 1.5 * 2] = [-0.9686270, -1.0]
    out = build("lie", z=1.5).craft(torch.zeros(2, 2), ref, ctx(5, 2))
    expected = torch.tensor([[-0.9686270, -1.0], [-0.9686270, -1.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_lie_derived_z():
    # n = 20, f = 4: s = floor(20/2 + 1) - 4 = 7; (n - s)/n = 13/20 = 0.65; Phi^-1(0.65) = 0.3853205
    assert model_attacks.LieAttack.derived_z(20, 4) == pytest.approx(0.3853205, abs=1e-6)
    # n = 50, f = 10: s = 26 - 10 = 16; 34/50 = 0.68; Phi^-1(0.68) = 0.4676988
    assert model_attacks.LieAttack.derived_z(50, 10) == pytest.approx(0.4676988, abs=1e-6)
    # n = 10, f = 1: s = 6 - 1 = 5; 5/10 = 0.5 -> z = 0
    assert model_attacks.LieAttack.derived_z(10, 1) == pytest.approx(0.0, abs=1e-12)
    # degenerate, attackers are a majority: n = 5, f = 3 -> s = 3 - 3 = 0, clamped to 1 -> Phi^-1(4/5) = 0.8416212
    assert model_attacks.LieAttack.derived_z(5, 3) == pytest.approx(0.8416212, abs=1e-6)
    # craft uses the derived z of ctx's n and f: mu - 0.3853205 * sigma
    ref = torch.tensor([[1.0, 0.0], [2.0, 4.0], [6.0, 2.0]])
    out = build("lie").craft(torch.zeros(4, 2), ref, ctx(20, 4))
    expected = torch.tensor([3.0 - 0.3853205 * math.sqrt(7.0), 2.0 - 0.3853205 * 2.0])
    torch.testing.assert_close(out, expected.repeat(4, 1), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- Min-Max / Min-Sum


def test_min_max_min_sum_hand_worked_1d():
    ref = torch.tensor([[0.0], [2.0], [4.0]])
    # mean 2, sample std 2 -> p = -2 (std perturbation); grad_m = 2 - 2 gamma
    # Min-Max: max_i |grad_m - x_i| = |2 - 2g - 4| = 2 + 2g <= max pairwise 4 -> gamma* = 1, vector 0
    vec, gamma = build("min_max").craft_with_gamma(torch.zeros(1, 1), ref)
    assert gamma == pytest.approx(1.0, abs=1e-4) and vec.item() == pytest.approx(0.0, abs=1e-3)
    # Min-Sum: sum_i (grad_m - x_i)^2 = (4 + 0 + 4) + 3 * 4 g^2; scores (0: 4+16, 2: 4+4, 4: 16+4) = 20, 8, 20
    # bound max 20: 8 + 12 g^2 <= 20 -> gamma* = 1; bound min 8: gamma* = 0
    _, gamma = build("min_sum").craft_with_gamma(torch.zeros(1, 1), ref)
    assert gamma == pytest.approx(1.0, abs=1e-4)
    _, gamma = build("min_sum", bound="min").craft_with_gamma(torch.zeros(1, 1), ref)
    assert gamma == 0.0
    # Min-Max bound min: per-row max distances 4, 2, 4 -> min 2; 2 + 2g <= 2 -> gamma* = 0
    _, gamma = build("min_max", bound="min").craft_with_gamma(torch.zeros(1, 1), ref)
    assert gamma == 0.0


@pytest.mark.parametrize(
    ("perturbation", "expected"),
    [
        # ref rows (1, 0), (3, -2): mean (2, -1), ||mean|| = sqrt(5); sample std (sqrt 2, sqrt 2)
        ("unit_vec", [-2 / math.sqrt(5), 1 / math.sqrt(5)]),  # -mean / ||mean||
        ("std", [-math.sqrt(2), -math.sqrt(2)]),  # -std
        ("sign", [-1.0, 1.0]),  # -sign(mean)
    ],
)
@pytest.mark.parametrize("name", ["min_max", "min_sum", "tailored_trmean"])
def test_perturbation_directions(name, perturbation, expected):
    ref = torch.tensor([[1.0, 0.0], [3.0, -2.0]])
    vec, gamma = build(name, perturbation=perturbation).craft_with_gamma(torch.zeros(1, 2), ref)
    assert gamma > 0
    torch.testing.assert_close((vec - torch.tensor([2.0, -1.0])) / gamma, torch.tensor(expected), rtol=1e-4, atol=1e-4)


def _min_max_lhs(vec: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.cdist(vec[None].double(), ref.double()).max())


def _min_sum_lhs(vec: torch.Tensor, ref: torch.Tensor) -> float:
    return float((torch.cdist(vec[None].double(), ref.double()) ** 2).sum())


def _bounds(ref: torch.Tensor, which: str) -> tuple[float, float]:
    d = torch.cdist(ref.double(), ref.double())
    minmax = d.max(dim=1).values
    minsum = (d**2).sum(dim=1)
    pick = torch.max if which == "max" else torch.min
    return float(pick(minmax)), float(pick(minsum))


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("bound", ["max", "min"])
def test_min_max_and_min_sum_bounds_are_tight(perturbation, bound):
    ref = rows(8, 40, seed=3)
    mean = ref.mean(dim=0)
    direction = model_attacks._perturbation(perturbation, mean, ref)
    minmax_bound, minsum_bound = _bounds(ref, bound)
    for name, lhs, limit in (("min_max", _min_max_lhs, minmax_bound), ("min_sum", _min_sum_lhs, minsum_bound)):
        attack = build(name, perturbation=perturbation, bound=bound)
        vec, gamma = attack.craft_with_gamma(torch.zeros(2, 40), ref)
        assert gamma > 0.05, (name, gamma)
        torch.testing.assert_close(vec, mean + gamma * direction)
        assert lhs(vec, ref) <= limit * (1 + 1e-5), name  # satisfies its bound
        assert lhs(mean + 1.01 * gamma * direction, ref) > limit, name  # 1% more gamma violates it
        out = attack.craft(torch.zeros(2, 40), ref, ctx(10, 2))
        assert torch.equal(out, vec.repeat(2, 1))  # all attackers send the same vector


def test_min_sum_matches_closed_form_and_min_bound_is_stealthier():
    ref = rows(7, 30, seed=4)
    x = (ref - ref.mean(0)).double()
    p = -ref.double().std(dim=0)
    _, minsum_max = _bounds(ref, "max")
    _, minsum_min = _bounds(ref, "min")
    # sum_i ||gamma p - x_i||^2 = sum ||x_i||^2 + m gamma^2 ||p||^2 (the x_i sum to 0)
    closed = math.sqrt((minsum_max - float((x**2).sum())) / (7 * float(p @ p)))
    _, gamma_max = build("min_sum").craft_with_gamma(ref[:2], ref)
    _, gamma_min = build("min_sum", bound="min").craft_with_gamma(ref[:2], ref)
    assert gamma_max == pytest.approx(closed, abs=1e-4)
    assert 0 < gamma_min < gamma_max


# ------------------------------------------------------------------------------------- tailored trimmed mean


def _trmean_by_hand(updates: torch.Tensor, k: int) -> torch.Tensor:
    ordered = torch.sort(updates, dim=0).values
    return ordered[k : updates.shape[0] - k].mean(dim=0)


def test_tailored_trmean_hand_worked_1d():
    ref = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    # mean 3, sample std sqrt(20/3); f = 1, trim 1 of each end of 5 values.
    # honest (attacker sends 3): sorted 0 2 3 4 6 -> middle 2 3 4 -> 3 = the mean: deviation 0
    # any vector <= 0: sorted v 0 2 4 6 -> middle 0 2 4 -> 2: deviation 1, the largest possible.
    # The search accepts gamma = 10 (first test, objective 1 > -inf); every later gamma gives 1 again (not an
    # increase), so gamma = 10 and the vector is 3 - 10 sqrt(20/3) = -22.8199.
    attack = build("tailored_trmean")
    vec, gamma = attack.craft_with_gamma(torch.zeros(1, 1), ref)
    assert gamma == 10.0
    assert vec.item() == pytest.approx(3.0 - 10.0 * math.sqrt(20.0 / 3.0), abs=1e-4)
    out = attack.craft(torch.tensor([[3.0]]), ref, ctx(5, 1))
    assert _trmean_by_hand(torch.cat([out, ref]), 1).item() == pytest.approx(2.0)


def test_tailored_trmean_moves_trimmed_mean_farther_than_honest_round():
    benign, own = rows(10, 50, seed=5), rows(3, 50, seed=6)
    attack = build("tailored_trmean")
    crafted = attack.craft(own, benign, ctx(13, 3))
    mean = benign.mean(dim=0)
    honest_dev = torch.linalg.vector_norm(_trmean_by_hand(torch.cat([own, benign]), 3) - mean)
    attacked_dev = torch.linalg.vector_norm(_trmean_by_hand(torch.cat([crafted, benign]), 3) - mean)
    assert attacked_dev > 2 * honest_dev
    # defining form: every attacker sends mean - gamma * std with gamma > 0 ...
    vec, gamma = attack.craft_with_gamma(own, benign)
    assert gamma > 0 and torch.equal(crafted, vec.repeat(3, 1))
    torch.testing.assert_close(vec, mean - gamma * benign.std(dim=0))
    # ... and its deviation is the largest along that line (objective over a gamma grid on [0, 2 gamma_init])
    grid = [attack.objective(mean - g * benign.std(dim=0), benign, 3) for g in torch.linspace(0, 20, 201).tolist()]
    assert float(attacked_dev) >= max(grid) - 1e-5


@pytest.mark.parametrize("case", range(40))
def test_tailored_trmean_crafts_bitwise_what_sorting_every_candidate_crafts(case):
    """Issue 13: the reference is sorted once and each candidate's trimmed mean gathered from it; on random
    cases (ties included: values rounded to a coarse grid), every objective and so the crafted vector and
    gamma are bitwise those of sorting all rows for every candidate."""
    g = torch.Generator().manual_seed(case)
    f, m, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 8), (1, 30), (1, 200)))
    dtype = (torch.float32, torch.float64)[case % 2]
    benign = torch.randn(m, d, generator=g, dtype=dtype) * float(torch.rand(1, generator=g) * 10)
    if case % 3 == 0:
        benign = benign.round()
    trim = None if case % 4 else int(torch.randint(0, f + m, (1,), generator=g))
    attack = build("tailored_trmean", perturbation=("std", "unit_vec", "sign")[case % 3], trim=trim)
    own = torch.randn(f, d, generator=g, dtype=dtype)
    vector, gamma = attack.craft_with_gamma(own, benign)
    expected_vector, expected_gamma = craft_by_sorting(attack, own, benign)
    assert gamma == expected_gamma and torch.equal(vector, expected_vector)
    simulated = model_attacks._TrimmedMeanOfCopies(benign, f, f if trim is None else trim)
    for candidate in (vector, benign[0], torch.full_like(vector, float(benign.max()) + 1)):
        rows = torch.cat([candidate.repeat(f, 1), benign])
        k = f if trim is None else trim
        assert torch.equal(simulated(candidate), model_attacks.trimmed_mean(rows, k))


def test_tailored_trmean_trim_parameter():
    benign = rows(10, 20, seed=7)
    crafted = build("tailored_trmean", trim=1).craft(rows(3, 20, seed=8), benign, ctx(13, 3))
    mean = benign.mean(dim=0)
    honest = torch.linalg.vector_norm(_trmean_by_hand(torch.cat([rows(3, 20, seed=8), benign]), 1) - mean)
    assert torch.linalg.vector_norm(_trmean_by_hand(torch.cat([crafted, benign]), 1) - mean) > honest


def test_lie_lasa_code_takes_the_attackers_own_statistics_and_z_one_half():
    """The LASA authors' lie_attack: own updates 0, 2, 4 (mean 2, Bessel-corrected std 2), z = 0.5 -> 1 for
    every attacker, even when the benign updates (here all 10) are known; a given z is used as given."""
    own, benign = torch.tensor([[0.0], [2.0], [4.0]]), torch.full((2, 1), 10.0)
    assert torch.equal(build("lie", variant="lasa_code").craft(own, benign, ctx(5, 3)), torch.ones(3, 1))
    assert torch.equal(build("lie", variant="lasa_code", z=1.0).craft(own, benign, ctx(5, 3)), torch.zeros(3, 1))
    assert torch.equal(build("lie", z=0.5).craft(own, benign, ctx(5, 3)), torch.full((3, 1), 10.0))  # the text
    # one attacker: std 0 (the authors' torch.std would be NaN), so it sends its own update
    assert torch.equal(build("lie", variant="lasa_code").craft(own[:1], benign, ctx(3, 1)), own[:1])


SPREAD_OWN = torch.tensor([[0.0], [2.0], [4.0]])  # attackers' own updates: mean 2, Bessel-corrected std 2
FAR_BENIGN = torch.full((2, 1), 10.0)  # benign updates the LASA authors' code never looks at


def test_min_sum_lasa_code_is_bounded_by_the_largest_sum_over_the_attackers_own_updates():
    """agrAgnosticMinSum: ∇m = 2 - 2γ; Σ_i (x_i - ∇m)² = 8 + 12γ² against the largest row sum of squared
    distances among 0, 2, 4 (20): γ -> 1, ∇m -> 0. The smallest row sum (8, the NDSS'21 code's) allows γ = 0."""
    crafted = build("min_sum", variant="lasa_code").craft(SPREAD_OWN, FAR_BENIGN, ctx(5, 3))
    torch.testing.assert_close(crafted, torch.zeros(3, 1), rtol=0, atol=1e-4)
    stealthy = build("min_sum", variant="lasa_code", bound="min").craft(SPREAD_OWN, FAR_BENIGN, ctx(5, 3))
    torch.testing.assert_close(stealthy, torch.full((3, 1), 2.0), rtol=0, atol=1e-4)
    assert torch.equal(build("min_sum").craft(SPREAD_OWN, FAR_BENIGN, ctx(5, 3)), torch.full((3, 1), 10.0))


def test_min_max_lasa_code_is_bounded_by_the_attackers_own_largest_distance():
    """agrAgnosticMinMax: the farthest own update from ∇m = 2 - 2γ is 4, (2 + 2γ)² <= 16 (0 to 4): γ -> 1."""
    crafted = build("min_max", variant="lasa_code").craft(SPREAD_OWN, FAR_BENIGN, ctx(5, 3))
    torch.testing.assert_close(crafted, torch.zeros(3, 1), rtol=0, atol=1e-4)


def test_tailored_trmean_lasa_code_simulates_f_squared_over_n_copies_among_the_attackers_own_updates():
    """agrTailoredTrmean, f = 3 of n = 5: max(1, 9 // 5) = 1 copy of ∇m = 2 - 2γ among 0, 2, 4, one value
    trimmed at each end. The objective |TrMean - 2| is γ for γ <= 1 and 1 beyond, so the first candidate,
    γ = 10, is accepted (1 > the initial -1) and no later one grows it: ∇m = 2 - 20 = -18."""
    attack = build("tailored_trmean", variant="lasa_code")
    assert attack.copies(3, ctx(5, 3)) == 1 and attack.copies(25, ctx(100, 25)) == 6
    assert torch.equal(attack.craft(SPREAD_OWN, FAR_BENIGN, ctx(5, 3)), torch.full((3, 1), -18.0))
    assert torch.equal(build("tailored_trmean").craft(SPREAD_OWN, FAR_BENIGN, ctx(5, 3)), torch.full((3, 1), 10.0))


def test_lie_sdea_code_z_is_the_marsfl_formula():
    """z = exp(-s²) / (2 / sqrt(2π)), s = n // 2 + 1 - f: s = 1 gives e^-1 · 1.2533141 = 0.4610685."""
    assert LieAttack.sdea_code_z(5, 2) == pytest.approx(0.4610685, abs=1e-7)
    assert LieAttack.sdea_code_z(10, 2) == pytest.approx(math.exp(-16) * math.sqrt(2 * math.pi) / 2, rel=1e-12)


def test_lie_sdea_code_adds_z_sigma_and_is_written_as_the_models_weights():
    """Benign [1, 2], [3, 2]: mean [2, 2], std [sqrt 2, 0]; n = 3, f = 1: s = 1, z = 0.4610685, vector
    [2 + 0.4610685 · 1.4142136, 2] = [2.6520394, 2]. Written as the weights over a global model [10, 20], the
    update is [-7.3479606, -18]; a buffer coordinate keeps the attacker's own update (5)."""
    benign, own = torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([[5.0, 5.0]])
    global_params = torch.tensor([10.0, 20.0])
    crafted = build("lie", variant="sdea_code").craft(own, benign, ctx(3, 1, global_params=global_params))
    torch.testing.assert_close(crafted, torch.tensor([[-7.3479606, -18.0]]), rtol=0, atol=1e-5)
    layers = (Layer("w", (1,), 0, "weight"), Layer("running_mean", (1,), 1, "buffer"))
    with_buffer = build("lie", variant="sdea_code").craft(own, benign, ctx(3, 1, global_params=global_params,
                                                                          layers=layers))
    torch.testing.assert_close(with_buffer, torch.tensor([[-7.3479606, 5.0]]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs the global model"):
        build("lie", variant="sdea_code").craft(own, benign, ctx(3, 1))


def test_min_max_and_min_sum_sdea_code_write_the_papers_vector_as_weights():
    benign, own = rows(6, 8, seed=21), rows(2, 8, seed=22)
    global_params = rows(1, 8, seed=23)[0]
    context = ctx(8, 2, global_params=global_params)
    for name, bound in (("min_max", "max"), ("min_sum", "min")):
        vector = build(name, bound=bound).craft(own, benign, context)[0]
        crafted = build(name, bound=bound, variant="sdea_code").craft(own, benign, context)
        assert torch.equal(crafted, torch.stack([vector - global_params] * 2))
    with pytest.raises(ValueError, match="variant 'sdea_code' is the MarsFL code's Min-Sum, bounded by the smallest"):
        build("min_sum", variant="sdea_code")


# ------------------------------------------------------------------------------------------------ ByzMean


@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_byzmean_mean_of_all_updates_is_g1(f):
    benign, own = rows(7, 12, seed=9), rows(f, 12, seed=10)
    n = 7 + f
    crafted = build("byzmean").craft(own, benign, ctx(n, f))
    lie = build("lie").craft(own, benign, ctx(n, f))  # the base attack with the same n, f
    m1 = f // 2
    assert crafted.shape == (f, 12)
    torch.testing.assert_close(crafted[:m1], lie[:m1])  # the first group sends the base attack's rows
    torch.testing.assert_close(torch.cat([benign, crafted]).mean(dim=0), lie[0], rtol=1e-5, atol=1e-5)


def test_byzmean_with_random_base_targets_first_group_mean():
    benign, own = rows(6, 8, seed=11), rows(4, 8, seed=12)
    crafted = build("byzmean", base="noise", base_params={"sigma": 1.0}).craft(own, benign, ctx(10, 4, seed=3))
    noise = build("noise", sigma=1.0).craft(own, benign, ctx(10, 4, seed=3))
    torch.testing.assert_close(crafted[:2], noise[:2])
    torch.testing.assert_close(torch.cat([benign, crafted]).mean(dim=0), noise[:2].mean(dim=0), rtol=1e-5, atol=1e-5)


TOY_UPDATES = torch.tensor([[1.0, 2, 3], [3, 2, 1], [2, 2, 2], [0, 1, 0], [1, 0, 1]])  # the first f are malicious


def test_byzmean_lasa_code_sends_the_second_groups_vector_from_every_attacker():
    """The LASA authors' byzmean_attack on five toy updates, two of them malicious (m1 = m2 = 1): mean 1.4 and
    Bessel-corrected std (1.140175, 0.894427, 1.140175) over all five give g1 = (0.829912, 0.952786,
    0.829912); g2 = ((5 - 2 - 1)·g1 - Σ all) / 1 = 2·g1 - 7, sent by both attackers (one shared dictionary)."""
    crafted = build("byzmean", variant="lasa_code").craft(TOY_UPDATES[:2], TOY_UPDATES[2:], ctx(5, 2))
    expected = torch.tensor([-5.340176, -5.094427, -5.340176])
    torch.testing.assert_close(crafted, torch.stack([expected, expected]), rtol=0, atol=2e-6)
    written = build("byzmean", base_params={"z": 0.5}).craft(TOY_UPDATES[:2], TOY_UPDATES[2:], ctx(5, 2))
    assert not torch.allclose(written, crafted)  # the definition: a mild LIE vector and its counterweight


def test_byzmean_lasa_code_with_one_attacker_sends_g1():
    crafted = build("byzmean", variant="lasa_code").craft(TOY_UPDATES[:1], TOY_UPDATES[1:], ctx(5, 1))
    torch.testing.assert_close(crafted, torch.tensor([[0.829912, 0.952786, 0.829912]]), rtol=0, atol=2e-6)


def test_byzmean_lasa_code_agnostic_uses_its_own_rows_for_all_n():
    """Own rows 0, 2, 4 (d = 1): g1 = 2 - 0.5·2 = 1, Σ all n ≈ 10·2, so g2 = ((10 - 3 - 1)·1 - 20) / 2 = -7."""
    own = torch.tensor([[0.0], [2.0], [4.0]])
    crafted = build("byzmean", variant="lasa_code").craft(own, own, ctx(10, 3))
    assert torch.equal(crafted, torch.full((3, 1), -7.0))


def test_byzmean_lasa_code_refuses_another_first_group():
    with pytest.raises(ValueError, match="variant 'lasa_code' fixes the first group"):
        build("byzmean", variant="lasa_code", base="noise")
    with pytest.raises(ValueError, match="Input should be 'paper' or 'lasa_code'"):
        build("byzmean", variant="lasa")


# ----------------------------------------------------------------------------------------- naive attacks


def test_sign_flip():
    own = rows(3, 5, seed=13)
    assert torch.equal(build("sign_flip").craft(own, own, ctx(6, 3)), -own)
    assert torch.equal(build("sign_flip", scale=2.5).craft(own, own, ctx(6, 3)), -2.5 * own)


def test_random_gaussian_rows_have_std_sigma():
    own = rows(2, 40_000, seed=14, shift=5.0)
    out = build("random").craft(own, own, ctx(10, 2))
    # each row is N(0, 0.5^2) regardless of own: std error of the estimates ~ 0.5 / sqrt(40000) = 0.0025
    assert out.mean().abs() < 0.01
    for row in out:
        assert row.std().item() == pytest.approx(0.5, abs=0.01)
    assert not torch.equal(out[0], out[1])
    assert build("random", sigma=2.0).craft(own, own, ctx(10, 2)).std().item() == pytest.approx(2.0, abs=0.03)


def test_random_initial_model_sends_update_back_to_round_zero():
    initial, current = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.5, -1.0])
    out = build("random", variant="initial_model").craft(
        torch.zeros(2, 3), torch.zeros(2, 3), ctx(5, 2, initial_params=initial, global_params=current)
    )
    assert torch.equal(out, torch.tensor([[0.5, -0.5, 4.0], [0.5, -0.5, 4.0]]))  # initial - global
    with pytest.raises(ValueError, match="initial_params"):
        build("random", variant="initial_model").craft(torch.zeros(2, 3), torch.zeros(2, 3), ctx(5, 2))


def test_noise_adds_gaussian_with_std_sigma():
    own = rows(2, 40_000, seed=15)
    out = build("noise").craft(own, own, ctx(10, 2))
    delta = out - own
    assert delta.mean().abs() < 0.01 and delta.std().item() == pytest.approx(0.5, abs=0.01)


def test_gaussian_scale_multiplies_by_n_1_s():
    own = torch.rand(2, 40_000, generator=torch.Generator().manual_seed(16)) + 1.0  # away from 0
    out = build("gaussian_scale", s=2.0).craft(own, own, ctx(10, 2, seed=4))
    eps = out / own
    # eps ~ N(1, 2^2): std error of the mean ~ 2 / sqrt(80000) = 0.007
    assert eps.mean().item() == pytest.approx(1.0, abs=0.03) and eps.std().item() == pytest.approx(2.0, abs=0.03)
    # apply_to="model": the same factors multiply theta + update instead
    theta = torch.full((40_000,), 3.0)
    model_variant = build("gaussian_scale", s=2.0, apply_to="model")
    out_model = model_variant.craft(own, own, ctx(10, 2, seed=4, global_params=theta))
    torch.testing.assert_close((out_model + theta) / (own + theta), eps, rtol=1e-4, atol=1e-4)


def test_ipm():
    benign = rows(5, 6, seed=17)
    out = build("ipm").craft(torch.zeros(2, 6), benign, ctx(7, 2))
    torch.testing.assert_close(out, (-0.1 * benign.mean(dim=0)).repeat(2, 1))
    out = build("ipm", epsilon=0.5).craft(torch.zeros(2, 6), benign, ctx(7, 2))
    torch.testing.assert_close(out[0], -0.5 * benign.mean(dim=0))
    assert float(out[0] @ benign.mean(dim=0)) < 0


# -------------------------------------------------------------------------------- knowledge, seeds, params


@pytest.mark.parametrize("name", ["lie", "min_max"])
def test_omniscient_and_agnostic_references_differ(name):
    benign, own = rows(8, 20, seed=18), rows(3, 20, seed=19, shift=-1.0)
    omniscient = build(name).craft(own, benign, ctx(11, 3))
    agnostic = build(name).craft(own, own, ctx(11, 3))
    assert not torch.allclose(omniscient, agnostic)
    # and each follows its own reference's mean (LIE: mu - z sigma over that reference)
    z = model_attacks.LieAttack.derived_z(11, 3)
    if name == "lie":
        torch.testing.assert_close(agnostic[0], own.mean(0) - z * own.std(0))


@pytest.mark.parametrize("name", ["random", "noise", "gaussian_scale"])
def test_seeded_reproducibility(name):
    own = rows(3, 100, seed=20)
    first = build(name).craft(own, own, ctx(6, 3, seed=42))
    again = build(name).craft(own, own, ctx(6, 3, seed=42))
    other = build(name).craft(own, own, ctx(6, 3, seed=43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_build_and_parameter_errors():
    assert build("lie", z=1.25).params.z == 1.25
    assert build("lie").params.z is None
    assert build("min_sum", bound="min", perturbation="sign").params.bound == "min"
    for name, params, field in [
        ("lie", {"z": "large"}, "z"),
        ("lie", {"zz": 1.0}, "zz"),
        ("min_max", {"perturbation": "gauss"}, "perturbation"),
        ("min_sum", {"tol": 0}, "tol"),
        ("random", {"sigma": -1.0}, "sigma"),
        ("random", {"variant": "uniform"}, "variant"),
        ("tailored_trmean", {"trim": -1}, "trim"),
        ("byzmean", {"base": "byzmean"}, "base"),
        ("byzmean", {"base": "no_such_attack"}, "base"),
        ("byzmean", {"base_params": {"z": "x"}}, "base_params"),
        ("enlarge_quantity", {"alpha_q": -1.0}, "alpha_q"),
    ]:
        with pytest.raises(ValueError, match=f"parameter '{field}'"):
            build(name, **params)


# ------------------------------------------------------------------------------------------- quantity


@pytest.mark.parametrize(
    ("alpha", "exact", "rounded"),
    [
        # counts 10, 20, 30, 40: mean 25; population var (225 + 25 + 25 + 225) / 4 = 125; std 11.1803399
        (0.0, 25.0, 25.0),
        (1.0, 36.1803399, 36.0),  # 25 + 11.1803399
        (10.0, 136.803399, 137.0),  # 25 + 111.803399
    ],
)
def test_enlarge_quantity(alpha, exact, rounded):
    counts = torch.tensor([10, 20, 30, 40])
    claims = build("enlarge_quantity", alpha_q=alpha, round_counts=False).claims(counts, 3)
    assert claims.shape == (3,) and claims.is_floating_point()
    torch.testing.assert_close(claims, torch.full((3,), exact), rtol=0, atol=1e-4)
    assert torch.equal(build("enlarge_quantity", alpha_q=alpha).claims(counts, 3), torch.full((3,), rounded))


def test_enlarge_quantity_edge_cases():
    attack = build("enlarge_quantity", alpha_q=5.0)
    assert attack.claims(torch.tensor([10, 20]), 0).shape == (0,)
    assert torch.equal(attack.claims(torch.tensor([17]), 2), torch.tensor([17.0, 17.0]))  # one claim: std 0
    assert torch.equal(attack.claims(torch.tensor([], dtype=torch.long), 2), torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("name", attacks.names())
def test_the_generic_parameter_is_the_params_schema(name):
    """``class LieAttack(ModelAttack[LieParams])`` with ``Params = LieParams`` (data and quantity attacks
    alike): the type ``self.params`` is declared with is the schema the registry validates with. A generic
    attack (``Backdoor``, extended by ``model_replacement``) binds a TypeVar whose bound is its schema."""
    from byzlab.attacks.base import Attack

    cls = attacks.attack_class(name)
    argument = None
    for klass in cls.__mro__:
        for orig in klass.__dict__.get("__orig_bases__", ()):
            origin = typing.get_origin(orig)
            if argument is None and origin is not None and issubclass(origin, Attack) and typing.get_args(orig):
                argument = typing.get_args(orig)[0]
    if isinstance(argument, typing.TypeVar):
        assert argument.__bound__ is cls.Params
    else:
        assert argument is cls.Params
    assert type(build(name).params) is cls.Params
