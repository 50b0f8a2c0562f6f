"""FoolsGold, DnC and SignGuard: hand-worked reference values, state, outliers, sybils, determinism."""

import io
import math

import pytest
import torch

from byzlab.aggregators import dnc as dnc
from byzlab.aggregators import foolsgold as foolsgold
from byzlab.aggregators import signguard as signguard
from byzlab.aggregators import RoundContext, build


def _ctx(n=None, f=0, seed=0, ids=None):
    return RoundContext(
        client_ids=ids if ids is not None else (None if n is None else torch.arange(n)),
        num_byzantine=f,
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------------------------------------ FoolsGold
def test_foolsgold_two_sybils_over_two_rounds_hand_worked():
    rule = build("foolsgold")
    ids = torch.tensor([0, 1, 2])
    # Round 1: honest u0 = (1, 1); sybils u1 = u2 = (0, 1). Histories = updates.
    #   cos(H0, H1) = 1/sqrt(2) = 0.7071, cos(H1, H2) = 1  ->  v = (0.7071, 1, 1)
    #   pardon row 0 (v_j = 1 > v_0): cs_01 = cs_02 = 0.7071 * 0.7071 / 1 = 0.5
    #   alpha = (1 - 0.5, 1 - 1, 1 - 1) = (0.5, 0, 0); rescaled by 0.5 -> (1, 0, 0)
    #   logit: alpha 1 -> 0.99 -> ln 99 + 0.5 = 5.10 -> clipped 1; alpha 0 -> ln 0 = -inf -> 0
    first = rule(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]), _ctx(ids=ids))
    assert torch.allclose(first.weights, torch.tensor([1.0, 0.0, 0.0]))
    assert first.accepted.tolist() == [True, False, False]
    assert torch.allclose(first.update, torch.tensor([1.0, 1.0]))
    # Round 2: honest (1, -1), sybils (0, 1) again. H0 = (2, 0), H1 = H2 = (0, 2).
    #   cos(H0, H1) = 0, cos(H1, H2) = 1 -> v = (0, 1, 1); pardon cs_0j *= 0 / 1 = 0
    #   alpha = (1, 0, 0) -> weights (1, 0, 0); the update is the honest client's (1, -1)
    second = rule(torch.tensor([[1.0, -1.0], [0.0, 1.0], [0.0, 1.0]]), _ctx(ids=ids))
    assert torch.allclose(second.weights, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(second.update, torch.tensor([1.0, -1.0]))
    state = rule.state_dict()
    assert state["ids"].tolist() == [0, 1, 2]
    assert torch.equal(state["history"], torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]))


@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_foolsgold_pardoning_and_logit_hand_worked(kappa):
    # a = (1,0,0), b = (0,1,0), c = (2,1,2) (|c| = 3), one round, no history:
    #   cos(a,b) = 0, cos(a,c) = 2/3, cos(b,c) = 1/3  ->  v = (2/3, 1/3, 2/3)
    #   pardon row b (v_c = 2/3 > v_b = 1/3): cs_bc = 1/3 * (1/3) / (2/3) = 1/6 (cs_ba = 0 stays 0)
    #   alpha = (1 - 2/3, 1 - 1/6, 1 - 2/3) = (1/3, 5/6, 1/3); rescaled by 5/6 -> (0.4, 1, 0.4)
    #   logit: 0.4 -> kappa * (ln(0.4/0.6) + 0.5) = kappa * 0.094535; 1 -> 0.99 -> kappa * 5.095 -> 1
    updates = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 1.0, 2.0]])
    side = kappa * (math.log(0.4 / 0.6) + 0.5)
    raw = torch.tensor([side, 1.0, side])
    expected = raw / raw.sum()  # kappa 1: (0.0795, 0.8410, 0.0795); kappa 2: (0.1372, 0.7256, 0.1372)
    result = build("foolsgold", kappa=kappa)(updates, RoundContext())
    assert torch.allclose(result.weights, expected, atol=1e-6)
    assert torch.allclose(result.update, expected @ updates, atol=1e-6)
    assert torch.allclose(foolsgold.foolsgold_weights(updates, kappa).float(), raw, atol=1e-6)


def test_foolsgold_history_is_keyed_by_client_id_and_absent_clients_keep_theirs():
    rule = build("foolsgold")
    rule(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), _ctx(ids=torch.tensor([10, 11, 12])))
    # Round 2: 11 and 12 absent, 13 new (starts at 0), order of rows differs from ids' order
    rule(torch.tensor([[0.0, 3.0], [2.0, 2.0]]), _ctx(ids=torch.tensor([13, 10])))
    state = rule.state_dict()
    history = dict(zip(state["ids"].tolist(), state["history"]))
    assert sorted(history) == [10, 11, 12, 13]
    assert torch.equal(history[10], torch.tensor([3.0, 2.0]))
    assert torch.equal(history[11], torch.tensor([0.0, 1.0]))
    assert torch.equal(history[12], torch.tensor([1.0, 1.0]))
    assert torch.equal(history[13], torch.tensor([0.0, 3.0]))


def test_foolsgold_state_round_trips_through_weights_only_checkpoint():
    g = torch.Generator().manual_seed(0)
    rounds = [(torch.randn(4, 6, generator=g), torch.tensor(ids)) for ids in ([0, 1, 2, 3], [2, 5, 1, 7], [7, 0, 5, 2])]
    original = build("foolsgold")
    for updates, ids in rounds[:2]:
        original(updates, _ctx(ids=ids))
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = build("foolsgold")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    updates, ids = rounds[2]
    a, b = original(updates, _ctx(ids=ids)), restored(updates, _ctx(ids=ids))
    assert torch.equal(a.weights, b.weights) and torch.equal(a.update, b.update)
    assert torch.equal(original.state_dict()["history"], restored.state_dict()["history"])
    with pytest.raises(ValueError, match="state keys"):
        build("foolsgold").load_state_dict({"history": torch.zeros(1, 2)})


def test_foolsgold_down_weights_sybils_among_non_iid_honest_clients():
    g = torch.Generator().manual_seed(1)
    d, honest, sybils = 60, 8, 3
    rule = build("foolsgold")
    ids = torch.arange(honest + sybils)
    goal = torch.randn(d, generator=g)
    for _ in range(3):
        good = torch.randn(honest, d, generator=g)  # every honest client its own direction
        bad = goal + 0.01 * torch.randn(sybils, d, generator=g)  # the sybils share one goal
        result = rule(torch.cat([good, bad]), _ctx(ids=ids))
    assert result.weights[honest:].sum() < 0.05
    assert result.weights[:honest].sum() > 0.95
    assert not result.accepted[honest:].any()


def test_foolsgold_all_identical_falls_back_to_the_mean():
    u = torch.tensor([0.5, -1.0, 2.0])
    result = build("foolsgold")(u.repeat(5, 1), _ctx(5))
    assert result.info["fallback_uniform"] == 1.0
    assert torch.allclose(result.update, u)
    with pytest.raises(ValueError, match="kappa"):
        build("foolsgold", kappa=0.0)


# ------------------------------------------------------------------------------------------------ DnC
ONE_D = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 1.0], [10.0, 1.0]])


def test_dnc_scores_on_a_one_dimensional_example():
    # mu = (2.5, 1); centred rows (-2.5, 0), (-1.5, 0), (-3.5, 0), (7.5, 0): the top singular vector is e1,
    # so s_i = (x_i1 - 2.5)^2 = 6.25, 2.25, 12.25, 56.25
    assert torch.allclose(dnc.dnc_scores(ONE_D), torch.tensor([6.25, 2.25, 12.25, 56.25], dtype=torch.float64))


@pytest.mark.parametrize(
    "f, c, kept",
    [
        (1, 1.0, [0, 1, 2]),  # remove 1: the highest score 56.25 (client 3); mean (0, 1)
        (2, 1.0, [0, 1]),  # remove 2: also 12.25 (client 2); mean (0.5, 1)
        (2, 0.5, [0, 1, 2]),  # remove floor(0.5 * 2) = 1
        (0, 1.0, [0, 1, 2, 3]),  # f = 0: the plain mean
    ],
)
def test_dnc_keeps_the_lowest_scores(f, c, kept):
    result = build("dnc", filter_frac=c)(ONE_D, _ctx(4, f=f))
    assert torch.nonzero(result.accepted).flatten().tolist() == kept
    assert torch.allclose(result.update, ONE_D[kept].mean(dim=0))
    assert torch.allclose(result.weights[kept], torch.full((len(kept),), 1.0 / len(kept)))


def test_dnc_check_setting():
    params = dnc.DnCParams()
    dnc.DnC.check_setting(params, 4, 3)
    with pytest.raises(ValueError, match="n = 3"):
        dnc.DnC.check_setting(params, 3, 3)
    dnc.DnC.check_setting(dnc.DnCParams(filter_frac=0.5), 3, 3)  # removes floor(1.5) = 1


def test_dnc_excludes_a_far_outlier_with_subsampling():
    g = torch.Generator().manual_seed(2)
    updates = 0.1 * torch.randn(12, 3000, generator=g) + 1.0
    updates[5] = -20.0
    result = build("dnc", subsample_dim=200, niters=5)(updates, _ctx(12, f=2, seed=3))
    assert not result.accepted[5]
    assert result.accepted.sum() >= 12 - 2 * 5  # intersection of 5 sets of 10
    assert (result.update - 1).abs().mean() < 0.05  # honest mean; the outlier would pull it to ~ -1.75 / 12


def test_dnc_same_generator_seed_same_decision():
    g = torch.Generator().manual_seed(4)
    updates = torch.randn(10, 500, generator=g)
    rule = build("dnc", subsample_dim=50, niters=3)
    a, b = rule(updates, _ctx(10, f=3, seed=9)), rule(updates, _ctx(10, f=3, seed=9))
    assert torch.equal(a.accepted, b.accepted) and torch.equal(a.update, b.update)
    decisions = {tuple(rule(updates, _ctx(10, f=3, seed=s)).accepted.tolist()) for s in range(8)}
    assert len(decisions) > 1  # the generator does drive the subsampling


# ------------------------------------------------------------------------------------------------ SignGuard
def test_signguard_norm_filter_hand_worked():
    # median of (1, 2, 3, 4, 100) = 3 -> keep norms in [0.3, 9]
    mask, median = signguard.norm_filter(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]), 0.1, 3.0)
    assert median == 3.0 and mask.tolist() == [True, True, True, True, False]
    # median of (0.2, 2, 3, 4, 5) = 3 -> 0.2 < 0.3 is rejected
    mask, _ = signguard.norm_filter(torch.tensor([0.2, 2.0, 3.0, 4.0, 5.0]), 0.1, 3.0)
    assert mask.tolist() == [False, True, True, True, True]
    # even count: median of (1, 2, 4, 40) = (2 + 4) / 2 = 3 -> [0.3, 9]
    mask, median = signguard.norm_filter(torch.tensor([1.0, 2.0, 4.0, 40.0]), 0.1, 3.0)
    assert median == 3.0 and mask.tolist() == [True, True, True, False]


def test_signguard_sign_features_hand_worked():
    # (1, -2, 0, 3, 0): 2 positive, 2 zero, 1 negative out of 5
    features = signguard.sign_features(torch.tensor([[1.0, -2.0, 0.0, 3.0, 0.0], [-1.0, -1.0, -1.0, 0.0, 2.0]]))
    assert torch.allclose(features, torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]], dtype=torch.float64))


def test_signguard_aggregate_hand_worked():
    # norms 5, 10, 1, 50, 2 -> median 5 -> keep [0.5, 25]... i.e. [0.1*5, 3*5] = [0.5, 15]: row 3 (50) is out.
    # All signs (+, +): one sign cluster. Clip to norm 5: row 1 (6, 8) -> (3, 4); the others are <= 5.
    # mean of (3,4), (3,4), (0.6,0.8), (1.2,1.6) = (7.8, 10.4) / 4 = (1.95, 2.6)
    updates = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.6, 0.8], [30.0, 40.0], [1.2, 1.6]])
    result = build("signguard")(updates, _ctx(5))
    assert result.accepted.tolist() == [True, True, True, False, True]
    assert torch.allclose(result.update, torch.tensor([1.95, 2.6]))
    assert torch.allclose(result.weights, torch.tensor([0.25, 0.125, 0.25, 0.0, 0.25]))  # update = weights @ updates
    assert result.info["norm_median"] == 5.0


def test_signguard_excludes_a_far_outlier_by_norm():
    g = torch.Generator().manual_seed(5)
    centre = torch.randn(400, generator=g)
    updates = centre + 0.1 * torch.randn(10, 400, generator=g)
    updates[6] = -100 * centre
    result = build("signguard")(updates, _ctx(10, f=1))
    assert not result.accepted[6] and result.weights[6] == 0
    honest = torch.cat([updates[:6], updates[7:]]).mean(dim=0)
    assert torch.linalg.vector_norm(result.update - honest) < 0.1 * torch.linalg.vector_norm(centre)


def test_signguard_excludes_a_normal_norm_outlier_by_its_signs():
    g = torch.Generator().manual_seed(6)
    updates = torch.randn(10, 4000, generator=g)  # signs about half positive, half negative
    updates[3] = torch.randn(4000, generator=g).abs()  # same norm, every sign positive
    result = build("signguard")(updates, _ctx(10, f=1))
    assert result.info["num_norm_kept"] == 10  # the norm filter cannot see it ...
    assert not result.accepted[3]  # ... the sign statistics do
    assert result.accepted.sum() >= 8


def test_signguard_same_generator_seed_same_decision():
    g = torch.Generator().manual_seed(7)
    updates = torch.randn(12, 20_000, generator=g)
    updates[:3] += 0.02  # a slightly positive-leaning group makes the clustering depend on the coordinates drawn
    rule = build("signguard")
    a, b = rule(updates, _ctx(12, seed=11)), rule(updates, _ctx(12, seed=11))
    assert a.info["num_coordinates"] == 2000  # 10% of d
    assert torch.equal(a.accepted, b.accepted) and torch.equal(a.update, b.update)


def test_signguard_identical_and_zero_updates():
    u = torch.tensor([0.3, -0.1, 0.0, 2.0])
    result = build("signguard")(u.repeat(6, 1), _ctx(6))
    assert result.accepted.all() and torch.allclose(result.update, u)
    zeros = build("signguard")(torch.zeros(4, 3), _ctx(4))
    assert zeros.accepted.all() and torch.equal(zeros.update, torch.zeros(3))


def test_foolsgold_residual_code_compares_the_output_layer_and_divides_by_n_hand_worked():
    from byzlab.orchestrator.core.layout import Layer

    # Layout: a 2-coordinate weight, the output layer's 1-coordinate weight (index 2), a bias (index 3).
    layers = (Layer("conv.weight", (2, 1), 0), Layer("fc.weight", (1, 1), 2), Layer("fc.bias", (1,), 3, "bias"))
    updates = torch.tensor([[1.0, 0.0, 1.0, 5.0], [0.0, 1.0, 1.0, -5.0], [1.0, 1.0, -1.0, 0.0]])
    ctx = RoundContext(client_ids=torch.arange(3), layers=layers)
    # residual_code: on index 2 alone (1, 1, -1) clients 0 and 1 are twins (cos 1): α = 0, 0 and client 2 gets
    # α = 1 -> 0.99 -> logit 5.1 -> 1; the aggregate is (0·u0 + 0·u1 + 1·u2) / 3 (averaging.py l.652-658).
    code = build("foolsgold", variant="residual_code")(updates, ctx)
    assert torch.allclose(code.weights, torch.tensor([0.0, 0.0, 1 / 3]))
    assert torch.allclose(code.update, updates[2] / 3)
    # Algorithm 1 on whole updates: cos(u0, u1) = -24/27, the others 0, so nobody resembles anybody: every
    # α is 1 -> weight 1, and the weighted mean is the plain mean.
    paper = build("foolsgold")(updates, RoundContext(client_ids=torch.arange(3), layers=layers))
    assert torch.allclose(paper.weights, torch.full((3,), 1 / 3))
    assert torch.allclose(paper.update, updates.mean(dim=0))
