"""Pre-aggregators (nnm, bucketing, clipping, arc) and the pipeline that chains them with a rule:
hand-worked values, invariants, context transforms, weight mapping, non-finite rows, config validation,
and the effect NNM is for (a robust rule under heterogeneity and a shift attack)."""

import io

import pytest
import torch

from byzlab import aggregators
from byzlab.aggregators import Pipeline, RoundContext, build_pipeline, build_pre_aggregator
from byzlab.aggregators.base import context_fields
from byzlab.aggregators.pipeline import check_pipeline_setting
from byzlab.aggregators.pre_aggregators import arc_clipped_count
from byzlab.orchestrator.config import ExperimentConfig, build_config, run_id
from byzlab.orchestrator.core.errors import ConfigError

# NNM example, n = 4, f = 1 (each row averages its n - f = 3 nearest, itself included).
# Squared distances: d01 = d02 = 9, d12 = 18, d03 = 1800, d13 = d23 = 27^2 + 30^2 = 1629.
#   N0 = {0, 1, 2}, N1 = {1, 0, 2}, N2 = {2, 0, 1}  -> (0+3+0, 0+0+3) / 3 = (1, 1)
#   N3 = {3, 1, 2}                                  -> (30+3+0, 30+0+3) / 3 = (11, 11)
SQUARE = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [30.0, 30.0]], dtype=torch.float64)


def _ctx(f=0, seed=0, **fields):
    return RoundContext(num_byzantine=f, generator=torch.Generator().manual_seed(seed), **fields)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ----------------------------------------------------------------------------------------------------- NNM


def test_nnm_hand_worked_example_and_its_context():
    ctx = _ctx(f=1, client_ids=torch.arange(4), num_samples=torch.tensor([10.0, 20.0, 30.0, 40.0]),
               loss_gaps=torch.tensor([0.3, 0.0, 0.6, 0.9], dtype=torch.float64))
    out = build_pre_aggregator("nnm")(SQUARE, ctx)
    expected = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [11.0, 11.0]], dtype=torch.float64)
    assert torch.equal(out.updates, expected)
    third = 1 / 3
    expected_mixing = torch.tensor([[third, third, third, 0], [third, third, third, 0], [third, third, third, 0],
                                    [0, third, third, third]], dtype=torch.float64)
    assert torch.allclose(out.mixing, expected_mixing)
    assert torch.allclose(out.mixing @ SQUARE, out.updates)
    # counts and loss gaps are averaged over the neighbourhood: rows 0-2 (10+20+30)/3, row 3 (20+30+40)/3
    assert torch.equal(out.ctx.num_samples, torch.tensor([20.0, 20.0, 20.0, 30.0]))
    assert torch.allclose(out.ctx.loss_gaps, torch.tensor([0.3, 0.3, 0.3, 0.5], dtype=torch.float64))
    assert out.ctx.client_ids is None and out.ctx.num_byzantine == 1  # rows are no longer clients; f unchanged


def test_nnm_with_f_zero_gives_every_row_the_global_mean():
    updates = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    out = build_pre_aggregator("nnm")(updates, _ctx(f=0))
    assert torch.allclose(out.updates, updates.mean(dim=0).expand(7, 5), atol=1e-6)
    assert torch.allclose(out.mixing, torch.full((7, 7), 1 / 7, dtype=torch.float64))


def test_nnm_keeps_each_row_in_its_own_neighbourhood_even_among_duplicates():
    updates = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    out = build_pre_aggregator("nnm")(updates, _ctx(f=3))  # n - f = 1: every row is only itself
    assert torch.equal(out.updates, updates)
    assert torch.equal(out.mixing, torch.eye(4, dtype=torch.float64))


def test_nnm_clamps_f_in_a_round_with_too_few_rows_and_refuses_the_setting():
    out = build_pre_aggregator("nnm")(SQUARE[:2], _ctx(f=5))
    assert out.info["f_clamped"] == 1.0 and torch.equal(out.updates, SQUARE[:2])
    with pytest.raises(ValueError, match="nnm .* needs n > f: n=3, f=3"):
        cls = aggregators.pre_aggregator_class("nnm")
        cls.check_setting(cls.Params(), 3, 3)


# ----------------------------------------------------------------------------------------------- bucketing


def test_bucketing_hand_worked_example_with_a_short_last_bucket():
    # n = 5, s = 2: buckets {p0, p1}, {p2, p3}, {p4} of the generator's permutation p; the short last bucket
    # is its member itself (an average over 1, not a division by s)
    updates = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [6.0, 6.0], [8.0, 2.0]])
    counts = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ctx = _ctx(f=4, seed=3, num_samples=counts, client_ids=torch.arange(5))
    out = build_pre_aggregator("bucketing", s=2)(updates, ctx)
    p = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    expected = torch.stack([(updates[p[0]] + updates[p[1]]) / 2, (updates[p[2]] + updates[p[3]]) / 2, updates[p[4]]])
    assert torch.equal(out.updates, expected)
    bucket_counts = torch.stack([counts[p[0]] + counts[p[1]], counts[p[2]] + counts[p[3]], counts[p[4]]])
    assert torch.equal(out.ctx.num_samples, bucket_counts)
    assert out.ctx.num_samples.sum() == 15.0  # a bucket holds its members' data
    assert out.ctx.num_byzantine == 3  # f = 4 attackers taint at most the 3 buckets
    assert out.ctx.client_ids is None
    assert torch.allclose(out.mixing @ updates.double(), out.updates.double())
    assert torch.allclose(out.mixing.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert out.info["buckets"] == 3.0


def test_bucketing_single_bucket_is_the_mean_and_s_one_is_a_permutation():
    updates = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0], [7.0, 1.0]])
    whole = build_pre_aggregator("bucketing", s=4)(updates, _ctx())
    assert torch.equal(whole.updates, torch.tensor([[4.0, 4.0]]))  # (16 / 4, 16 / 4)
    single = build_pre_aggregator("bucketing", s=1)(updates, _ctx(f=1, seed=7))
    order = single.mixing.argmax(dim=1)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert torch.equal(single.updates, updates[order])
    assert torch.equal(single.mixing, torch.eye(4, dtype=torch.float64)[order])
    assert single.ctx.num_byzantine == 1


def test_bucketing_is_reproducible_from_the_generator_and_refuses_a_single_bucket():
    updates = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
    bucketing = build_pre_aggregator("bucketing", s=2)
    first, again = bucketing(updates, _ctx(seed=11)), bucketing(updates, _ctx(seed=11))
    assert torch.equal(first.updates, again.updates)
    assert any(not torch.equal(first.mixing, bucketing(updates, _ctx(seed=s)).mixing) for s in range(12, 16))
    no_generator = RoundContext(round=4)
    assert torch.equal(bucketing(updates, no_generator).updates, bucketing(updates, no_generator).updates)
    cls = aggregators.pre_aggregator_class("bucketing")
    with pytest.raises(ValueError, match="s=10 leaves a single bucket .* n=10"):
        cls.check_setting(cls.Params(s=10), 10, 2)
    assert cls.output_setting(cls.Params(s=3), 10, 6) == (4, 4)


# ------------------------------------------------------------------------------------------------ clipping


def test_clipping_hand_worked_example_leaves_short_rows_alone():
    # norms 5, 1, 0, 10 with threshold 2.5: factors 1/2, 1, 1, 1/4
    updates = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0], [-6.0, 8.0]])
    ctx = _ctx(f=1, client_ids=torch.arange(4))
    out = build_pre_aggregator("clipping", threshold=2.5)(updates, ctx)
    assert torch.equal(out.updates, torch.tensor([[1.5, 2.0], [0.6, 0.8], [0.0, 0.0], [-1.5, 2.0]]))
    assert torch.equal(out.updates[1], updates[1])  # bit for bit
    assert torch.equal(out.mixing, torch.diag(torch.tensor([0.5, 1.0, 1.0, 0.25], dtype=torch.float64)))
    assert out.ctx is ctx and out.info["clipped"] == 2.0
    short = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)) * 0.1
    assert torch.equal(build_pre_aggregator("clipping", threshold=10.0)(short, ctx).updates, short)


# ----------------------------------------------------------------------------------------------------- ARC


# norms 5, 10, 1, 2, 50
ARC_ROWS = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0], [0.0, 2.0], [30.0, 40.0]])


def test_arc_hand_worked_examples():
    arc = build_pre_aggregator("arc")
    # n = 5, f = 1: k = floor(2 * 1/5 * 4) = 1; the largest (50) is clipped to the 2nd largest norm, 10
    one = arc(ARC_ROWS, _ctx(f=1))
    assert torch.equal(one.updates, torch.cat([ARC_ROWS[:4], torch.tensor([[6.0, 8.0]])]))
    assert one.info == {"k": 1.0, "clipped": 1.0, "threshold": 10.0}
    # n = 5, f = 2: k = floor(2 * 2/5 * 3) = 2; 50 and 10 are clipped to the 3rd largest norm, 5
    two = arc(ARC_ROWS, _ctx(f=2))
    assert torch.equal(two.updates, torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(two.mixing.diagonal(), torch.tensor([1.0, 0.5, 1.0, 1.0, 0.1], dtype=torch.float64))
    assert torch.allclose(two.mixing @ ARC_ROWS.double(), two.updates.double())


def test_arc_with_f_zero_clips_nothing_and_k_is_exact_integer_arithmetic():
    out = build_pre_aggregator("arc")(ARC_ROWS, _ctx(f=0))
    assert torch.equal(out.updates, ARC_ROWS) and out.info["k"] == 0.0
    assert [arc_clipped_count(n, f) for n, f in [(10, 5), (10, 3), (3, 1), (10, 0), (4, 4), (7, 9)]] == [5, 4, 1, 0, 0, 0]


def test_arc_zero_threshold_and_ties():
    rows = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    out = build_pre_aggregator("arc")(rows, _ctx(f=1))  # k = floor(2 * 3 / 4) = 1, threshold 0
    assert torch.equal(out.updates, torch.zeros(4, 2)) and out.info["threshold"] == 0.0
    tied = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])  # k = 1: the 2nd largest ties the 1st
    assert torch.equal(build_pre_aggregator("arc")(tied, _ctx(f=1)).updates, tied)


# ------------------------------------------------------------------------------------------------ pipeline


def test_empty_pre_list_returns_the_plain_rule():
    rule = build_pipeline([], "trimmed_mean", {"beta": 0.2})
    assert type(rule) is aggregators.aggregator_class("trimmed_mean") and rule.params.beta == 0.2


def test_weights_map_back_through_nnm():
    # rule: uniform mean over the 4 NNM rows (1/4 each); client j's weight = sum over rows containing j of
    # 1/4 * 1/3: client 0 in rows 0-2 -> 1/4, clients 1, 2 in all four -> 1/3, client 3 in row 3 -> 1/12
    pipeline = build_pipeline([{"name": "nnm"}], "fedavg", {"weighting": "uniform"})
    result = pipeline(SQUARE, _ctx(f=1))
    assert torch.allclose(result.weights, torch.tensor([1 / 4, 1 / 3, 1 / 3, 1 / 12], dtype=torch.float64))
    assert torch.isclose(result.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(result.update, torch.tensor([3.5, 3.5], dtype=torch.float64))  # (1 + 1 + 1 + 11) / 4
    assert torch.allclose(result.weights @ SQUARE, result.update)  # a linear pipeline: the weights are exact
    assert result.info["pre_rows"] == 4.0 and result.info["nnm_f_clamped"] == 0.0


def test_weights_after_clipping_are_shares_and_accepted_follows_the_rule():
    updates = torch.tensor([[3.0, 4.0], [0.6, 0.8], [-6.0, 8.0]])
    pipeline = build_pipeline([{"name": "clipping", "threshold": 2.5}], "fedavg", {"weighting": "uniform"})
    result = pipeline(updates, _ctx())
    factors = torch.tensor([0.5, 1.0, 0.25])
    assert torch.allclose(result.weights, factors / factors.sum())  # as norm_bound reports them
    assert torch.allclose(result.update, (updates * factors[:, None]).mean(dim=0))
    krum = build_pipeline([{"name": "clipping", "threshold": 2.5}], "krum", {})(SQUARE, _ctx(f=0))
    # one-hot on the client krum chose (the clipped outlier (30, 30) -> (1.77, 1.77) is now the central row)
    assert krum.accepted.tolist() == [False, False, False, True]
    assert torch.allclose(krum.weights, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert krum.accepted.tolist() == (krum.weights > 0).tolist()


def test_weights_map_back_through_bucketing_and_chained_pre_aggregators():
    updates = torch.randn(10, 3, generator=torch.Generator().manual_seed(5))
    ctx = _ctx(f=1, seed=2)
    result = build_pipeline([{"name": "bucketing", "s": 2}], "multi_krum", {})(updates, ctx)
    chosen = result.weights > 0  # multi_krum keeps 5 - 1 = 4 buckets: their 8 clients get 1/4 * 1/2 each
    assert int(chosen.sum()) == 8 and torch.allclose(result.weights[chosen], torch.full((8,), 1 / 8))
    assert result.accepted.tolist() == chosen.tolist()
    assert torch.allclose(result.weights @ updates, result.update, atol=1e-6)
    chained = build_pipeline([{"name": "clipping", "threshold": 0.5}, {"name": "nnm"}, {"name": "arc"}], "median", {})
    out = chained(updates, _ctx(f=2))
    assert out.weights is None and out.accepted is None and out.info["pre_rows"] == 10.0
    assert {"clipping_clipped", "nnm_f_clamped", "arc_k"} <= set(out.info)


def test_nonfinite_rows_are_dropped_before_nnm():
    rows = torch.cat([SQUARE[:3], torch.tensor([[float("nan"), 1.0]], dtype=torch.float64), SQUARE[3:]])
    pipeline = build_pipeline([{"name": "nnm"}], "fedavg", {"weighting": "uniform"})  # fedavg alone cannot drop
    result = pipeline(rows, _ctx(f=2))
    # the NaN row counts against f (2 -> 1): the same as the finite rows with f = 1
    expected = pipeline(SQUARE, _ctx(f=1))
    assert torch.equal(result.update, expected.update)
    assert result.weights[3] == 0 and torch.allclose(result.weights[[0, 1, 2, 4]], expected.weights)
    assert result.accepted.tolist() == [True, True, True, False, True]
    assert result.info["nonfinite_dropped"] == 1.0


def test_pipeline_runs_on_the_context_restricted_to_its_needs():
    def full():  # a fresh generator each time: the permutation consumes it
        return _ctx(f=1, num_samples=torch.tensor([1.0, 1.0, 1.0, 5.0]), client_ids=torch.arange(4),
                    loss_gaps=torch.zeros(4))

    pipeline = build_pipeline([{"name": "bucketing", "s": 2}, {"name": "nnm"}], "fedavg", {"weighting": "samples"})
    assert context_fields(pipeline) == {"generator", "num_samples", "num_byzantine", "round"}
    restricted = pipeline(SQUARE, full().restricted_to(context_fields(pipeline)))
    assert torch.equal(restricted.update, pipeline(SQUARE, full()).update)
    assert torch.allclose(restricted.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_state_is_the_rules():
    pipeline = build_pipeline([{"name": "arc"}], "centered_clipping", {"tau": 1.0})
    assert pipeline.state_dict() == {}
    pipeline(SQUARE.float(), _ctx(f=1))
    state = _roundtrip(pipeline.state_dict())
    assert set(state) == {"center"}
    fresh = build_pipeline([{"name": "arc"}], "centered_clipping", {"tau": 1.0})
    fresh.load_state_dict(state)
    assert torch.equal(fresh.rule.center, pipeline.rule.center)
    assert isinstance(fresh, Pipeline) and fresh.label == "arc+centered_clipping"


def test_per_client_state_rules_refuse_row_mixing_pre_aggregators():
    with pytest.raises(ValueError, match=r"pre_aggregators\[1\]: 'nnm' mixes clients' updates.*'foolsgold'"):
        build_pipeline([{"name": "arc"}, {"name": "nnm"}], "foolsgold", {})
    build_pipeline([{"name": "nnm"}], "foolsgold", {"memory": False})
    build_pipeline([{"name": "clipping", "threshold": 1.0}], "foolsgold", {})  # rows still are clients


def test_check_setting_chains_through_the_row_count():
    check_pipeline_setting([{"name": "nnm"}], "krum", {}, 10, 3)  # NNM keeps 10 rows: 10 > 2*3 + 2
    with pytest.raises(ValueError, match=r"krum needs n > 2f \+ 2 .* \(after pre-aggregation: 5 rows, f=2, from n=10\)"):
        check_pipeline_setting([{"name": "bucketing", "s": 2}], "krum", {}, 10, 2)
    with pytest.raises(ValueError, match="nnm .* needs n > f"):
        Pipeline.check_setting(Pipeline.Params(pre_aggregators=({"name": "nnm"},), rule="median"), 4, 4)


# -------------------------------------------------------------------------------------------------- config


def test_config_normalises_pre_aggregators_and_keeps_old_run_ids():
    cfg = build_config({}, ["server.aggregator=median", "server.pre_aggregators=[{name: nnm}, {name: bucketing}]"])
    assert cfg.server.pre_aggregators == [{"name": "nnm"}, {"name": "bucketing", "s": 2}]
    assert cfg.to_dict()["server"]["pre_aggregators"] == [{"name": "nnm"}, {"name": "bucketing", "s": 2}]
    assert "pre_aggregators" not in ExperimentConfig().to_dict()["server"]  # absent while empty
    plain = build_config({}, ["server.aggregator=median"])
    assert run_id(plain) == run_id(build_config({}, ["server.aggregator=median", "server.pre_aggregators=[]"]))
    assert run_id(plain) != run_id(cfg)


@pytest.mark.parametrize("value, message", [
    ("[{name: nnm}, {name: foo}]", "server: pre_aggregators[1]: unknown pre-aggregator 'foo'; known: arc, bucketing, clipping, nnm"),
    ("[{name: clipping}]", "server: pre_aggregators[0]: pre-aggregator 'clipping' parameter 'threshold': Field required"),
    ("[{name: bucketing, s: 0}]", "pre_aggregators[0]: pre-aggregator 'bucketing' parameter 's': Input should be greater"),
    ("[{name: nnm, f: 2}]", "pre_aggregators[0]: pre-aggregator 'nnm' parameter 'f': Extra inputs are not permitted"),
    ("[{s: 2}]", "pre_aggregators[0]: each entry must be a mapping with a 'name' (one of arc, bucketing, clipping, nnm)"),
])
def test_config_errors_are_one_line_naming_the_entry(value, message):
    with pytest.raises(ConfigError) as err:
        build_config({}, [f"server.pre_aggregators={value}"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_refuses_foolsgold_behind_bucketing():
    with pytest.raises(ConfigError, match=r"pre_aggregators\[0\]: 'bucketing' mixes clients' updates"):
        build_config({}, ["server.aggregator=foolsgold", "server.pre_aggregators=[{name: bucketing}]"])


# ------------------------------------------------------------------------------------------------- effect


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_nnm_removes_the_shift_that_heterogeneity_lets_a_robust_rule_keep(rule):
    """8 honest clients with very different updates (heterogeneity) and 2 attackers far away: every
    honest row's 8 nearest rows are exactly the 8 honest ones, so NNM turns each honest row into the honest
    mean and the rule returns it, while the plain rule's order statistics are dragged by the 2 shifted
    values in every coordinate."""
    g = torch.Generator().manual_seed(0)
    honest = 3.0 * torch.randn(8, 40, generator=g)
    honest_mean = honest.mean(dim=0)
    attackers = (honest_mean + 100.0).expand(2, 40)
    updates = torch.cat([honest, attackers])
    plain = aggregators.build(rule)(updates, _ctx(f=2)).update
    mixed = build_pipeline([{"name": "nnm"}], rule, {})(updates, _ctx(f=2)).update
    plain_error = torch.linalg.vector_norm(plain - honest_mean)
    mixed_error = torch.linalg.vector_norm(mixed - honest_mean)
    assert mixed_error < 1e-4 and plain_error > 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipelines_run_on_the_updates_device_and_match_cpu():
    updates = torch.randn(12, 1000, generator=torch.Generator().manual_seed(4))
    counts = torch.arange(1.0, 13.0)
    specs = [{"name": "clipping", "threshold": 20.0}, {"name": "nnm"}, {"name": "bucketing", "s": 2}, {"name": "arc"}]
    results = {}
    for device in ("cpu", "cuda"):
        ctx = _ctx(f=2, seed=9, num_samples=counts.to(device))
        results[device] = build_pipeline(specs, "multi_krum", {})(updates.to(device), ctx)
    assert results["cuda"].update.device.type == "cuda"
    assert torch.allclose(results["cuda"].update.cpu(), results["cpu"].update, atol=1e-5)
    assert torch.allclose(results["cuda"].weights.cpu(), results["cpu"].weights, atol=1e-6)
