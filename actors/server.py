"""ServerActor: holds the global model and runs the round protocol (docs/architecture.md, "One round"):
sample → broadcast and train → attack → aggregate → apply → evaluate → record."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F

from byzlab import aggregators
from byzlab.actors.adversary import Adversary
from byzlab.actors.resources import actor_device
from byzlab.actors.reusable import Reusable
from byzlab.actors.round_record import RoundUpdates, round_record
from byzlab.orchestrator.core.layout import flatten_state, functional_forward, load_flat_state, model_layout
from byzlab.orchestrator.core.seeding import Stream, derive_seed, numpy_rng, torch_generator
from byzlab.orchestrator.specs.roles import ServerSpec
from byzlab.orchestrator.specs.server_data import ServerData


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """The sorted ids of the clients that train in ``round_index`` (keyed by seed and round only)."""
    if per_round == num_clients:
        return np.arange(num_clients)
    rng = numpy_rng(seed, Stream.CLIENT_SAMPLING, round_index)
    return np.sort(rng.choice(num_clients, size=per_round, replace=False))


def round_context(server: Any, round_index: int, client_ids: np.ndarray, num_samples: torch.Tensor,
                  loss_gaps: np.ndarray, num_malicious: int) -> aggregators.RoundContext:
    """Exactly the context fields the server's rule declares (``server.context_fields``), with the declared
    Byzantine counts (the true ones when none is declared), never who is malicious. ``server``: a
    ``ServerWorker``, or a loop holding the same fields (benchmarks/gpu.py's single-process one)."""
    spec, device, threat = server.spec, server.device, server.spec.threat
    provide = {
        "layers": lambda: server.layout,
        "client_ids": lambda: torch.from_numpy(client_ids).to(device),
        "num_samples": lambda: num_samples,
        "loss_gaps": lambda: torch.tensor(loss_gaps, dtype=torch.float32, device=device),
        "global_params": lambda: server.global_params,
        "num_byzantine": lambda: num_malicious if threat.declared_byzantine is None else threat.declared_byzantine,
        "num_clients_total": lambda: spec.num_clients,
        "num_byzantine_total": threat.population_byzantine,
        "round": lambda: round_index,
        "generator": lambda: torch_generator(spec.seed, Stream.AGGREGATION, round_index),
        "model_fn": lambda: server.model_fn,
        "proxy_data": lambda: server.proxy_data,
        "public_data": lambda: server.public_data,
    }
    context = aggregators.RoundContext(**{name: provide[name]() for name in server.context_fields})
    return context.restricted_to(server.context_fields)


class ServerWorker(Reusable):
    """Global model, server optimizer and aggregator of one run."""

    def __init__(
        self,
        spec: ServerSpec,
        client_actors: list[Any],
        actor_of_client: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray,
        server_data: ServerData,
        num_threads: int,
    ) -> None:
        torch.set_num_threads(num_threads)
        self.spec = spec
        self.device = actor_device(spec.device)
        self.client_actors = client_actors
        self.actor_of_client = actor_of_client
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(spec.seed, Stream.MODEL_INIT))
            self.model = spec.model.build()
        self.model.to(self.device).eval()  # the server only evaluates; functional_forward needs eval mode
        self.layout = model_layout(self.model)
        self.model_fn = functional_forward(self.model, self.layout)
        self.global_params = flatten_state(self.model)
        self.optimizer = copy.deepcopy(spec.optimizer)  # its state is this server's, not the shared spec's
        self.optimizer.start(self.global_params)
        self.aggregator = spec.aggregator
        self.context_fields = aggregators.context_fields(spec.aggregator)
        self.adversary = Adversary(spec.threat, spec.seed, self.global_params.clone(), self.layout)
        self.test_x = torch.tensor(test_x, device=self.device)
        self.test_y = torch.tensor(test_y, device=self.device)
        self.proxy_data = self.public_data = None
        if server_data.proxy is not None:
            self.proxy_data = tuple(torch.tensor(a, device=self.device) for a in server_data.proxy)
        if server_data.public is not None:
            self.public_data = torch.tensor(server_data.public, device=self.device)
        data_attack = spec.threat.data_attack
        self.backdoor_test = None if data_attack is None else data_attack.triggered_test_set(self.test_x, self.test_y)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "num_params": self.global_params.numel()}

    def run_round(self, round_index: int) -> dict[str, Any]:
        """One round (1-based); returns its metrics row and per-client rows."""
        started = time.perf_counter()
        seconds: dict[str, float] = {}
        sampled = sample_clients(self.spec.seed, round_index, self.spec.num_clients, self.spec.clients_per_round)
        replies = self._broadcast_and_train(round_index, sampled)
        seconds["train_seconds"] = time.perf_counter() - started
        malicious = self._attack(round_index, replies)
        finite = aggregators.finite_rows(replies.updates)
        agg_started = time.perf_counter()
        result = self._aggregate(round_index, replies, int(malicious.sum()), finite)
        seconds["agg_seconds"] = time.perf_counter() - agg_started
        applied = self._apply(result.update)
        evaluation = self._evaluate_round(round_index)
        seconds["round_seconds"] = time.perf_counter() - started
        return round_record(round_index, replies, malicious, finite, result, applied, evaluation, seconds)

    def _broadcast_and_train(self, round_index: int, sampled: np.ndarray) -> RoundUpdates:
        """Broadcast the global model once; each actor trains its sampled clients; every reply is scattered
        into its rows of one preallocated matrix on the server's device as it arrives."""
        params_ref = ray.put(self.global_params.cpu().numpy())
        actor_of_row = self.actor_of_client[sampled]
        actors = np.unique(actor_of_row)
        pending = {
            self.client_actors[a].train.remote(params_ref, round_index, sampled[actor_of_row == a].tolist()): int(a)
            for a in actors
        }
        n = len(sampled)
        replies = RoundUpdates(
            client_ids=sampled, actors=actor_of_row,
            updates=torch.empty((n, self.global_params.numel()), dtype=torch.float32, device=self.device),
            num_samples=torch.empty(n, dtype=torch.float32, device=self.device),
            loss_before=np.empty(n), loss_after=np.empty(n),
        )
        timings: dict[int, dict[str, float]] = {}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ref)
            block, meta = ray.get(ref)
            rows = np.searchsorted(sampled, meta["client_ids"])
            self._scatter(replies.updates, rows, block)
            self._scatter(replies.num_samples, rows, np.asarray(meta["num_samples"], dtype=np.float32))
            replies.loss_before[rows], replies.loss_after[rows] = meta["loss_before"], meta["loss_after"]
            timings[actor] = {f"actor{actor}_train_seconds": meta["train_seconds"],
                              f"actor{actor}_clients": float(len(rows))}
        replies.timings = {key: value for actor in sorted(timings) for key, value in timings[actor].items()}
        return replies

    def _scatter(self, target: torch.Tensor, rows: np.ndarray, block: np.ndarray) -> None:
        """``target[rows] = block`` with one copy (``block`` lives read-only in Ray's object store)."""
        if self.device.type == "cpu":
            target.numpy()[rows] = block
        else:
            target[torch.from_numpy(rows).to(self.device)] = torch.tensor(block, device=self.device)

    def _attack(self, round_index: int, replies: RoundUpdates) -> torch.Tensor:
        """The adversary rewrites the malicious rows; returns the round's malicious row mask."""
        malicious = torch.from_numpy(np.isin(replies.client_ids, self.spec.threat.malicious)).to(self.device)
        self.adversary.attack(round_index, replies.updates, replies.num_samples, malicious, self.global_params)
        return malicious

    def _aggregate(
        self, round_index: int, replies: RoundUpdates, num_malicious: int, finite: torch.Tensor
    ) -> aggregators.AggregationResult:
        """The rule gets exactly the context fields it declares (``needs``): ``round_context``."""
        ctx = round_context(self, round_index, replies.client_ids, replies.num_samples,
                            replies.loss_before - replies.loss_after, num_malicious)
        result = self.aggregator(replies.updates, ctx, finite)
        if self.device.type == "cuda":  # agg_seconds measures the rule, not the launch of its kernels
            torch.cuda.synchronize(self.device)
        return result

    def _apply(self, update: torch.Tensor) -> bool:
        """The server optimizer's step. A non-finite aggregate (e.g. FedAvg over a NaN update) is never
        applied: the global model and the optimizer's state stay."""
        if not bool(aggregators.finite_rows(update.unsqueeze(0))):
            return False
        self.optimizer.step(self.global_params, update)
        return True

    def _evaluate_round(self, round_index: int) -> dict[str, float]:
        """Test accuracy and loss (and the backdoor's success rate) every ``eval_every`` rounds and the last."""
        if round_index % self.spec.eval_every != 0 and round_index != self.spec.rounds:
            return {}
        started = time.perf_counter()
        metrics = dict(zip(("test_accuracy", "test_loss"), self.evaluate(self.test_x, self.test_y)))
        if self.backdoor_test is not None:
            metrics["backdoor_asr"], _ = self.evaluate(*self.backdoor_test)
        metrics["eval_seconds"] = time.perf_counter() - started
        return metrics

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Accuracy and mean cross-entropy of the global model on (x, y)."""
        load_flat_state(self.model, self.global_params)
        correct = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        batch = self.spec.eval_batch_size
        for xb, yb in zip(x.split(batch), y.split(batch)):
            logits = self.model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
        return correct.item() / len(y), loss_sum.item() / len(y)

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_params": self.global_params.cpu(),
            "optimizer": self.optimizer.state_dict(),
            "aggregator": self.aggregator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_params = state["global_params"].to(self.device)
        # A checkpoint written before server optimizers holds FedAvgM's velocity at the top level.
        self.optimizer.load_state_dict(state["optimizer"] if "optimizer" in state else {"velocity": state["velocity"]})
        self.aggregator.load_state_dict(state["aggregator"])


ServerActor = ray.remote(ServerWorker)
