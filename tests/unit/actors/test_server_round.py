"""The server's round steps on their own (no client actors): what the rule is told, the scatter of replies
into one matrix, the apply step, and the round record."""

import dataclasses

import numpy as np
import pytest
import torch

from byzlab import aggregators
from byzlab.actors.round_record import RoundUpdates, benign_mean, round_record
from byzlab.actors.server import ServerWorker
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.specs.inputs import resolve_inputs

pytestmark = pytest.mark.usefixtures("ray_cluster")  # actor_device asks Ray for the actor's GPUs


class _Recording(aggregators.Aggregator):
    """Averages and remembers the context it was given."""

    name = "recording"
    needs = frozenset({"num_clients_total", "num_byzantine_total"})

    def aggregate(self, updates, ctx):
        self.seen = ctx
        return aggregators.AggregationResult(updates.mean(dim=0))


def _server(*overrides, aggregator=None):
    inputs = resolve_inputs(build_config({}, ["threat.fraction=0.3", *overrides]))
    spec = inputs.server if aggregator is None else dataclasses.replace(inputs.server, aggregator=aggregator)
    return ServerWorker(spec, [], np.zeros(10, dtype=int), inputs.dataset.test_x, inputs.dataset.test_y,
                        inputs.server_data, num_threads=1), inputs


def _replies(server, ids, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, d = len(ids), server.global_params.numel()
    return RoundUpdates(np.asarray(ids), np.zeros(n, dtype=int), torch.randn(n, d, generator=g),
                        torch.full((n,), 50.0), np.ones(n), np.full(n, 0.5))


@pytest.mark.parametrize("declared, per_round, population", [(None, 3, 3), (1, 1, 1)])
def test_the_rule_is_told_the_declared_counts_in_the_round_and_in_the_population(declared, per_round, population):
    overrides = [] if declared is None else [f"threat.declared_byzantine={declared}"]
    recording = _Recording(aggregators.AggregatorParams())
    server, inputs = _server(*overrides, aggregator=recording)
    assert len(inputs.malicious) == 3  # floor(0.3 * 10)
    replies = _replies(server, range(10))
    malicious = torch.from_numpy(np.isin(replies.client_ids, inputs.malicious))
    server._aggregate(1, replies, int(malicious.sum()), aggregators.finite_rows(replies.updates))
    ctx = recording.seen
    assert (ctx.num_byzantine, ctx.num_byzantine_total, ctx.num_clients_total) == (per_round, population, 10)
    assert ctx.held_fields() == aggregators.context_fields(recording)  # exactly what the rule declares
    with pytest.raises(aggregators.UndeclaredContextField):
        ctx.num_samples


def test_apply_steps_with_momentum_and_refuses_a_non_finite_aggregate():
    server, _ = _server("server.momentum=0.5", "server.lr=2.0")
    start = server.global_params.clone()
    step = torch.ones_like(start)
    assert server._apply(step)
    assert torch.equal(server.global_params, start + 2.0 * step)  # v = 1, theta += 2 v
    assert server._apply(step)
    assert torch.equal(server.global_params, start + 2.0 * step + 2.0 * 1.5 * step)  # v = 0.5 + 1
    kept = server.global_params.clone()
    assert not server._apply(torch.full_like(start, float("nan")))
    assert torch.equal(server.global_params, kept)


def test_replies_are_scattered_into_their_client_rows():
    server, _ = _server()
    sampled = np.array([1, 4, 6, 9])
    target = torch.zeros(4, 3)
    server._scatter(target, np.searchsorted(sampled, [4, 9]), np.array([[1, 1, 1], [2, 2, 2]], dtype=np.float32))
    assert torch.equal(target, torch.tensor([[0.0] * 3, [1.0] * 3, [0.0] * 3, [2.0] * 3]))


@pytest.mark.parametrize("n, d", [(7, 5), (7, 65535), (3, 65536), (7, 2 * 65536 + 5), (10, 300007)])
def test_benign_mean_by_column_blocks_is_bitwise_the_plain_mean(n, d):
    g = torch.Generator().manual_seed(d)
    updates = torch.randn(n, d, generator=g)
    benign = torch.rand(n, generator=g) > 0.3
    benign[0] = True
    assert torch.equal(benign_mean(updates, benign), updates[benign].mean(dim=0))


def test_round_record_builds_the_metrics_row_and_the_client_rows_in_one_place():
    server, _ = _server()
    replies = _replies(server, [0, 3, 5])
    replies.updates[1] = float("nan")
    malicious = torch.tensor([False, True, False])
    finite = aggregators.finite_rows(replies.updates)
    result = aggregators.AggregationResult(
        torch.zeros(replies.updates.shape[1]), torch.tensor([0.5, 0.0, 0.5]), torch.tensor([True, False, True]))
    record = round_record(4, replies, malicious, finite, result, applied=True, evaluation={"test_accuracy": 0.9},
                          seconds={"train_seconds": 1.0, "agg_seconds": 0.5, "round_seconds": 2.0})
    metrics, clients = record["metrics"], record["clients"]
    assert metrics["round"] == 4 and metrics["nonfinite_updates"] == 1.0
    assert (metrics["detection_tpr"], metrics["detection_fpr"], metrics["malicious_weight"]) == (1.0, 0.0, 0.0)
    assert metrics["test_accuracy"] == 0.9 and list(metrics)[-1] == "round_seconds"
    assert clients["client"].tolist() == [0, 3, 5] and clients["malicious"].tolist() == [False, True, False]
    assert clients["loss_gap"].tolist() == [0.5, 0.5, 0.5]


def test_pre_aggregators_reach_the_server_as_one_pipeline_and_bad_settings_fail_at_config_time():
    server, _ = _server("server.aggregator=median", "server.pre_aggregators=[{name: nnm}, {name: bucketing, s: 2}]")
    assert isinstance(server.aggregator, aggregators.Pipeline)
    assert server.aggregator.label == "nnm+bucketing+median"
    replies = _replies(server, range(10))
    result = server._aggregate(1, replies, 3, aggregators.finite_rows(replies.updates))
    assert result.info["pre_rows"] == 5.0  # ten clients, buckets of two
    plain, _ = _server("server.aggregator=median")
    assert not isinstance(plain.aggregator, aggregators.Pipeline)
