"""Data-poisoning attacks (attacks/data.py): label noise, label flips, backdoors, model replacement, DBA."""

from __future__ import annotations

import math

import pytest
import torch

from byzlab import attacks
from byzlab.attacks.data import Trigger, apply_trigger, transition_matrix
from byzlab.attacks.registry import build, names

ALL = ["backdoor", "dba", "label_flip", "model_replacement", "pair_flip", "symmetric_flip"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mask(*rows: str) -> torch.Tensor:
    """A boolean mask drawn as text: '#' = trigger pixel, '.' = untouched."""
    return torch.tensor([[c == "#" for c in row] for row in rows])


def square_mask(size: int, rows: range, cols: range) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[rows.start:rows.stop, cols.start:cols.stop] = True
    return m


def test_all_data_attacks_are_registered():
    assert set(ALL) <= set(names("data"))
    for name in ALL:
        assert build(name).kind == "data"


# ---------------------------------------------------------------------------------------------------------
# Transition matrices (SDEA Appendix D.1, eqs. 8-9)


def test_transition_matrices_3_classes_hand_worked():
    expected_sym = torch.tensor([[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]], dtype=torch.float64)
    expected_pair = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.7, 0.3], [0.3, 0.0, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(transition_matrix("symmetric", 3, 0.3), expected_sym)
    torch.testing.assert_close(transition_matrix("pair", 3, 0.3), expected_pair)


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
@pytest.mark.parametrize("eps", [0.0, 0.2, 0.5, 1.0])
def test_transition_matrices_10_classes(kind, eps):
    t = transition_matrix(kind, 10, eps)
    assert t.shape == (10, 10)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(t.diagonal(), torch.full((10,), 1.0 - eps, dtype=torch.float64))
    for i in range(10):
        for j in range(10):
            if i == j:
                continue
            if kind == "symmetric":
                want = eps / 9
            else:
                want = eps if j == (i + 1) % 10 else 0.0
            assert t[i, j].item() == pytest.approx(want, abs=1e-12), (i, j)


def test_transition_matrix_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        transition_matrix("symmetric", 10, 1.5)
    with pytest.raises(ValueError, match="epsilon"):
        transition_matrix("pair", 10, -0.1)
    with pytest.raises(ValueError, match="2 classes"):
        transition_matrix("symmetric", 1, 0.5)
    with pytest.raises(ValueError, match="kind"):
        transition_matrix("uniform", 10, 0.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Symmetric and pair flips

N, C = 20_000, 10
PER_CLASS = N // C


def labels() -> torch.Tensor:
    return torch.arange(N) % C  # 2000 of each class


def tol(n: int, p: float, sigmas: float = 5.0) -> float:
    """Tolerance on a Binomial(n, p) count: `sigmas` standard deviations."""
    return sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("eps", [0.2, 0.5])
def test_symmetric_flip_rates_match_epsilon(eps):
    y = labels()
    new = build("symmetric_flip", epsilon=eps).poison_labels(y, C, gen(0))
    assert new.dtype == torch.int64 and new.shape == y.shape
    assert int(new.min()) >= 0 and int(new.max()) < C
    flipped = int((new != y).sum())
    assert abs(flipped - eps * N) < tol(N, eps)
    # every off-diagonal cell (i -> j) gets eps / (C - 1) of class i
    counts = torch.zeros(C, C, dtype=torch.long)
    counts.index_put_((y, new), torch.ones(N, dtype=torch.long), accumulate=True)
    p = eps / (C - 1)
    for i in range(C):
        assert abs(int(counts[i, i]) - (1 - eps) * PER_CLASS) < tol(PER_CLASS, eps)
        for j in range(C):
            if j != i:
                assert abs(int(counts[i, j]) - p * PER_CLASS) < tol(PER_CLASS, p), (i, j)


@pytest.mark.parametrize("eps", [0.2, 0.5])
def test_pair_flip_goes_only_to_the_next_class(eps):
    y = labels()
    new = build("pair_flip", epsilon=eps).poison_labels(y, C, gen(0))
    changed = new != y
    assert torch.equal(new[changed], (y[changed] + 1) % C)  # only where T allows
    assert abs(int(changed.sum()) - eps * N) < tol(N, eps)
    for i in range(C):
        assert abs(int(changed[y == i].sum()) - eps * PER_CLASS) < tol(PER_CLASS, eps), i


def test_flip_extremes():
    y = labels()
    assert torch.equal(build("symmetric_flip", epsilon=0.0).poison_labels(y, C, gen(0)), y)
    assert torch.equal(build("pair_flip", epsilon=1.0).poison_labels(y, C, gen(0)), (y + 1) % C)
    assert not (build("symmetric_flip", epsilon=1.0).poison_labels(y, C, gen(0)) == y).any()


@pytest.mark.parametrize("name", ["symmetric_flip", "pair_flip"])
def test_flips_are_seeded_by_the_generator_only(name):
    y = labels()
    attack = build(name)
    torch.manual_seed(123)
    a = attack.poison_labels(y, C, gen(7))
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the global RNG was not used
    assert torch.equal(attack.poison_labels(y, C, gen(7)), a)
    assert not torch.equal(attack.poison_labels(y, C, gen(8)), a)
    assert torch.equal(y, labels())  # input untouched


def test_flips_reject_labels_out_of_range():
    with pytest.raises(ValueError, match="labels"):
        build("symmetric_flip").poison_labels(torch.tensor([0, 10]), 10, gen(0))


# ---------------------------------------------------------------------------------------------------------
# label_flip


def test_label_flip_source_to_target_only():
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 1, 7])
    new = build("label_flip", source=1, target=7).poison_labels(y, 10, gen(0))
    assert new.tolist() == [0, 7, 2, 3, 4, 5, 6, 7, 8, 9, 7, 7, 7]
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 1, 7]


def test_label_flip_all_classes_by_default():
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert build("label_flip").poison_labels(y, 10, gen(0)).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert build("label_flip").poison_labels(torch.tensor([0, 1, 2, 2, 0]), 3, gen(0)).tolist() == [2, 1, 0, 0, 2]


def test_label_flip_classes_must_exist():
    with pytest.raises(ValueError, match="source=12"):
        build("label_flip", source=12, target=7).poison_labels(torch.tensor([0, 1]), 10, gen(0))
    with pytest.raises(ValueError, match="target=10"):
        build("label_flip", source=1, target=10).poison_labels(torch.tensor([0, 1]), 10, gen(0))


# ---------------------------------------------------------------------------------------------------------
# Backdoor

MASK_8_DEFAULT = mask(
    "###.....",
    "###.....",
    "###.....",
    "........",
    "........",
    "........",
    "........",
    "........",
)


def images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Values in (-1, 1): the trigger's maximum-valued pixels are set by the tests."""
    return torch.rand(n, c, size, size, generator=gen(seed)) * 2 - 1


def check_stamp(out, x, m, value, k):
    """Images :k carry `value` (per channel) on mask m and equal x elsewhere; images k: equal x."""
    value = torch.as_tensor(value, dtype=x.dtype).reshape(1, -1, 1)
    assert torch.equal(out[:k][:, :, m], value.expand(k, x.shape[1], int(m.sum())))
    assert torch.equal(out[:k][:, :, ~m], x[:k][:, :, ~m])
    assert torch.equal(out[k:], x[k:])


def test_backdoor_default_trigger_on_8x8_digits():
    x = images(6, 1, 8)
    x[4, 0, 6, 6] = 4.0  # the batch maximum: the default trigger value
    y = torch.full((6,), 5)
    x0, y0 = x.clone(), y.clone()
    out_x, out_y = build("backdoor").poison_batch(x, y, 0, 1, gen(0))
    check_stamp(out_x, x, MASK_8_DEFAULT, 4.0, k=6)  # 20 per batch > 6: every sample
    assert out_y.tolist() == [2] * 6
    assert torch.equal(x, x0) and torch.equal(y, y0)  # not in place


def test_backdoor_bottom_right_trigger_on_28x28():
    x = images(10, 1, 28)
    x[9, 0, 0, 0] = 3.0
    out, _ = build("backdoor", row=-4, col=-4, size=3, poisoned_per_batch=4).poison_batch(
        x, torch.zeros(10, dtype=torch.long), 0, 1, gen(0)
    )
    check_stamp(out, x, square_mask(28, range(24, 27), range(24, 27)), 3.0, k=4)
    out, _ = build("backdoor", row=-3, col=-3, size=3).poison_batch(x, torch.zeros(10, dtype=torch.long), 0, 1, gen(0))
    check_stamp(out, x, square_mask(28, range(25, 28), range(25, 28)), 3.0, k=10)


def test_backdoor_value_is_the_per_channel_maximum_on_32x32_rgb():
    x = images(5, 3, 32)
    for c in range(3):
        x[c, c, 20, 20] = 5.0 + c
    out, _ = build("backdoor", row=2, col=5, size=4).poison_batch(x, torch.zeros(5, dtype=torch.long), 0, 1, gen(0))
    check_stamp(out, x, square_mask(32, range(2, 6), range(5, 9)), [5.0, 6.0, 7.0], k=5)
    out, _ = build("backdoor", value=1.5).poison_batch(x, torch.zeros(5, dtype=torch.long), 0, 1, gen(0))
    check_stamp(out, x, square_mask(32, range(0, 3), range(0, 3)), [1.5, 1.5, 1.5], k=5)


def test_backdoor_poisons_exactly_poisoned_per_batch_samples():
    x, y = images(64, 1, 28), torch.arange(64) % 10
    y[y == 2] = 3  # no sample of the target class to begin with
    x0, y0 = x.clone(), y.clone()
    out_x, out_y = build("backdoor").poison_batch(x, y, 0, 1, gen(0))
    assert out_x.shape == x.shape and out_y.shape == y.shape
    assert int((out_y == 2).sum()) == 20
    assert out_y[:20].tolist() == [2] * 20 and torch.equal(out_y[20:], y[20:])
    changed = (out_x != x).flatten(1).any(dim=1)
    assert changed.tolist() == [True] * 20 + [False] * 44
    assert torch.equal(x, x0) and torch.equal(y, y0)
    out_x, out_y = build("backdoor", poisoned_per_batch=0).poison_batch(x, y, 0, 1, gen(0))
    assert torch.equal(out_x, x) and torch.equal(out_y, y)
    assert out_x is not x and out_y is not y


def test_trigger_must_fit():
    x, y = images(2, 1, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="does not fit"):
        build("backdoor", size=9).poison_batch(x, y, 0, 1, gen(0))
    with pytest.raises(ValueError, match="does not fit"):
        build("backdoor", row=-2).poison_batch(x, y, 0, 1, gen(0))
    with pytest.raises(ValueError, match="does not fit"):
        build("dba", bar_length=4, gap=2).triggered_test_set(x, y)  # DBA's 4x10 MNIST pattern


def test_backdoor_triggered_test_set():
    x = images(5, 1, 8)
    x[0, 0, 7, 7] = 9.0  # maximum in an image of the target class, which is dropped
    y = torch.tensor([2, 0, 2, 5, 1])
    x0, y0 = x.clone(), y.clone()
    tx, ty = build("backdoor").triggered_test_set(x, y)
    assert ty.tolist() == [2, 2, 2] and ty.dtype == torch.int64
    check_stamp(tx, x[[1, 3, 4]], MASK_8_DEFAULT, 9.0, k=3)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    tx, ty = build("backdoor", target=0).triggered_test_set(x, y)
    assert ty.tolist() == [0, 0, 0, 0] and tx.shape == (4, 1, 8, 8)


def test_backdoor_residual_code_stamps_the_authors_twelve_pixels():
    """Update.py's pattern: rows 0 and 2 by columns 0-2 and 4-6 of the anchor, at value 1.0."""
    x = images(3, 1, 28)
    out, _ = build("backdoor", variant="residual_code", value=1.0).poison_batch(
        x, torch.zeros(3, dtype=torch.long), 0, 1, gen(0))
    mask = _pixels(28, [0, 2], [0, 1, 2, 4, 5, 6])
    assert int(mask.sum()) == 12
    check_stamp(out, x, mask, 1.0, k=3)
    shifted, _ = build("backdoor", variant="residual_code", value=1.0, row=5, col=10).poison_batch(
        x, torch.zeros(3, dtype=torch.long), 0, 1, gen(0))
    check_stamp(shifted, x, _pixels(28, [5, 7], [10, 11, 12, 14, 15, 16]), 1.0, k=3)


def _pixels(size: int, rows: list[int], cols: list[int]) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    return m


def test_the_authors_success_rate_counts_the_target_class_too():
    """asr_images all (the residual and PAwBRoFL authors' code): every test image, the target's own 2 of 5
    included, so a model that ignores the trigger still scores their share."""
    x, y = images(5, 1, 8), torch.tensor([2, 0, 2, 5, 1])
    tx, ty = build("backdoor", asr_images="all").triggered_test_set(x, y)
    assert ty.tolist() == [2] * 5 and tx.shape == (5, 1, 8, 8)
    check_stamp(tx, x, MASK_8_DEFAULT, float(x.max()), k=5)
    assert build("dba", asr_images="all").triggered_test_set(x, y)[1].tolist() == [2] * 5


def test_backdoor_local_recipe_overrides():
    assert build("backdoor").local_recipe_overrides() == {}
    assert build("backdoor", local_epochs=10).local_recipe_overrides() == {"local_epochs": 10}
    assert build("backdoor", lr=0.1).local_recipe_overrides() == {"lr": 0.1}
    assert build("dba", local_epochs=10, lr=0.05).local_recipe_overrides() == {"local_epochs": 10, "lr": 0.05}
    assert build("model_replacement", lr=0.1).local_recipe_overrides() == {"lr": 0.1}
    assert build("label_flip").local_recipe_overrides() == {}


def test_backdoor_other_hooks_are_neutral():
    attack = build("backdoor")
    y = torch.tensor([0, 1, 2])
    assert torch.equal(attack.poison_labels(y, 10, gen(0)), y)
    assert [attack.update_scale(r) for r in range(1, 10)] == [1.0] * 9
    assert build("symmetric_flip").triggered_test_set(images(2, 1, 8), torch.tensor([0, 1])) is None


def test_apply_trigger_helper():
    x = torch.zeros(3, 2, 4, 4)
    trigger = Trigger(1, -2, ((0, 0, 2, 1), (0, 1, 1, 1)))  # anchor (1, 2): an L of 3 pixels
    out = apply_trigger(x, trigger, value=2.0, count=2)
    expected = mask("....", "..##", "..#.", "....")
    assert torch.equal(trigger.mask(4, 4), expected)
    check_stamp(out, x, expected, [2.0, 2.0], k=2)
    assert torch.equal(x, torch.zeros(3, 2, 4, 4))


# ---------------------------------------------------------------------------------------------------------
# Model replacement


def test_model_replacement_boosts_only_in_boost_round():
    assert [build("model_replacement").update_scale(r) for r in range(1, 9)] == [1, 1, 1, 1, 1, 100, 1, 1]
    attack = build("model_replacement", boost=10, boost_round=3)
    assert [attack.update_scale(r) for r in range(0, 6)] == [1.0, 1.0, 1.0, 10.0, 1.0, 1.0]


def test_model_replacement_poisons_like_the_backdoor():
    x, y = images(30, 1, 28), torch.full((30,), 7)
    a = build("model_replacement", row=-4, col=-4).poison_batch(x, y, 0, 1, gen(0))
    b = build("backdoor", row=-4, col=-4).poison_batch(x, y, 0, 1, gen(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], torch.tensor([2] * 20 + [7] * 10))


# ---------------------------------------------------------------------------------------------------------
# DBA

DBA_PARTS_8 = [
    mask("###.....", "........", "........", *["........"] * 5),
    mask("....###.", "........", "........", *["........"] * 5),
    mask("........", "........", "###.....", *["........"] * 5),
    mask("........", "........", "....###.", *["........"] * 5),
]


def stamped_mask(attack, attacker: int, num_attackers: int, size: int = 8) -> torch.Tensor:
    x = torch.zeros(4, 1, size, size)
    x[:, 0, size - 1, size - 1] = 1.0  # the maximum, outside every trigger tested here
    out, out_y = attack.poison_batch(x, torch.zeros(4, dtype=torch.long), attacker, num_attackers, gen(0))
    assert out_y.tolist() == [2] * 4
    assert torch.equal(out[1:], out[:1].expand(3, -1, -1, -1))
    return out[0, 0] != x[0, 0]


def test_dba_attacker_i_uses_part_i_mod_num_parts():
    attack = build("dba")
    for attacker in range(6):
        assert torch.equal(stamped_mask(attack, attacker, 6), DBA_PARTS_8[attacker % 4]), attacker


def test_dba_parts_are_disjoint_and_form_the_global_trigger():
    attack = build("dba")
    parts = [stamped_mask(attack, i, 4) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not (parts[i] & parts[j]).any(), (i, j)
    union = parts[0] | parts[1] | parts[2] | parts[3]
    x = torch.zeros(3, 1, 8, 8)
    x[:, 0, 7, 7] = 1.0
    tx, ty = attack.triggered_test_set(x, torch.tensor([0, 2, 1]))
    assert ty.tolist() == [2, 2]
    global_mask = tx[0, 0] != x[0, 0]
    assert torch.equal(global_mask, union)
    assert torch.equal(global_mask, mask("###.###.", "........", "###.###.", *["........"] * 5))
    assert torch.equal(tx[0, 0][global_mask], torch.ones(12))


def test_dba_with_the_original_mnist_geometry():
    # DBA's MNIST config: bars of 4 with gap 2 at (0, 0): pixels (0, 0-3), (0, 6-9), (3, 0-3), (3, 6-9)
    attack = build("dba", bar_length=4, gap=2)
    expected = torch.zeros(28, 28, dtype=torch.bool)
    for r in (0, 3):
        for c in (*range(0, 4), *range(6, 10)):
            expected[r, c] = True
    assert torch.equal(attack.global_trigger().mask(28, 28), expected)
    assert int(stamped_mask(attack, 1, 4, size=28).sum()) == 4
    assert torch.equal(stamped_mask(attack, 1, 4, size=28), square_mask(28, range(0, 1), range(6, 10)))


def test_dba_two_parts_and_anchor():
    attack = build("dba", num_parts=2, row=-2, col=1)
    assert torch.equal(stamped_mask(attack, 3, 4), mask(*["........"] * 6, ".....###", "........"))
    assert torch.equal(attack.global_trigger().mask(8, 8), mask(*["........"] * 6, ".###.###", "........"))


# ---------------------------------------------------------------------------------------------------------
# Devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attacks_keep_cuda_tensors_on_cuda():
    y = labels().cuda()
    for name in ("symmetric_flip", "pair_flip", "label_flip"):
        new = build(name).poison_labels(y, C, gen(0))
        assert new.is_cuda and new.dtype == torch.int64
    cpu = build("symmetric_flip").poison_labels(labels(), C, gen(0))
    assert torch.equal(build("symmetric_flip").poison_labels(y, C, gen(0)).cpu(), cpu)  # same draws
    x = images(8, 3, 32).cuda()
    for name in ("backdoor", "model_replacement", "dba"):
        out_x, out_y = build(name).poison_batch(x, torch.zeros(8, dtype=torch.long, device="cuda"), 1, 4, gen(0))
        assert out_x.is_cuda and out_y.is_cuda
        tx, ty = build(name).triggered_test_set(x, torch.arange(8, device="cuda"))
        assert tx.is_cuda and ty.is_cuda and tx.shape[0] == 7


# ---------------------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("symmetric_flip", {"epsilon": 1.5}, "epsilon"),
        ("symmetric_flip", {"epsilon": -0.1}, "epsilon"),
        ("pair_flip", {"epsilon": 2}, "epsilon"),
        ("label_flip", {"source": 1}, "target"),
        ("label_flip", {"target": 7}, "target"),
        ("label_flip", {"source": -1, "target": 7}, "source"),
        ("backdoor", {"size": 0}, "size"),
        ("backdoor", {"poisoned_per_batch": -1}, "poisoned_per_batch"),
        ("backdoor", {"local_epochs": 0}, "local_epochs"),
        ("backdoor", {"lr": 0.0}, "lr"),
        ("backdoor", {"trigger": "square"}, "trigger"),
        ("model_replacement", {"boost": 0}, "boost"),
        ("model_replacement", {"boost_round": 0}, "boost_round"),
        ("dba", {"num_parts": 0}, "num_parts"),
        ("dba", {"gap": -1}, "gap"),
        ("dba", {"size": 3}, "size"),  # dba has bars, not a square
    ],
)
def test_bad_params_raise_value_error(name, params, field):
    with pytest.raises(ValueError, match=f"parameter '{field}'"):
        build(name, **params)


def test_label_flip_error_names_both_fields():
    with pytest.raises(ValueError) as err:
        build("label_flip", source=1)
    assert "'source'" in str(err.value) and "'target'" in str(err.value)


def test_defaults_from_the_papers():
    assert build("symmetric_flip").params.epsilon == 0.5 and build("pair_flip").params.epsilon == 0.5
    lf = build("label_flip").params
    assert (lf.source, lf.target) == (None, None)
    bd = build("backdoor").params
    assert (bd.row, bd.col, bd.size, bd.value, bd.target, bd.poisoned_per_batch) == (0, 0, 3, None, 2, 20)
    mr = build("model_replacement").params
    assert (mr.boost, mr.boost_round) == (100.0, 6)
    dba = build("dba").params
    assert (dba.num_parts, dba.bar_length, dba.gap, dba.target, dba.poisoned_per_batch) == (4, 3, 1, 2, 20)
    for cls_name in ALL:
        for field in build(cls_name).Params.model_fields.values():
            assert field.description, cls_name


def test_label_flippers_may_train_on_a_recipe_of_their_own():
    """The residual authors' label flippers: 10 local epochs at 10x the lr (their README's --attacker_ep 10)."""
    assert build("label_flip", source=1, target=7).local_recipe_overrides() == {}
    assert build("label_flip", source=1, target=7, local_epochs=10, lr=0.1).local_recipe_overrides() == {
        "local_epochs": 10, "lr": 0.1}
