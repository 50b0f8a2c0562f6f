"""Rounds per second on one GPU: byzlab with 1, 2, 4 and 8 client actors vs a pure PyTorch loop.

Two rounds of the papers' Fashion-MNIST settings, each taken from its sweep file (first grid point, seed 0):

- ``lasa``: "Achieving Byzantine-Resilient Federated Learning via Layer-Adaptive Sparsified Model
  Aggregation" (Xu, Zhang & Hu), Table 1, FMNIST row (``sweeps/lasa_table1_paper.yaml``): 6,000 clients of
  10 images, 100 sampled per round, the 1.66M-parameter CNN, 2 local epochs of batch 32 (byzlab's recipe
  where the paper is silent; the authors' code twin trains 5 of batch 10), 25% attackers, LASA aggregation
  (sparsity 0.3, λ_d 1, λ_m 2);
- ``sdea``: "Self-Driven Entropy Aggregation for Byzantine-Robust Heterogeneous Federated Learning"
  (Huang et al., ICML 2024), Table 8 (``sweeps/sdea_table8_fashion_mnist.yaml``, β = 0.5, Φ = 0.2): 10
  clients (issue 13's round; the sweep has 20 clients of half the data each, the same samples per round),
  all in every round, 10 local epochs of batch 64 with FedProx, SDEA aggregation (20 epochs on 2,000 public
  images).

Both run the attack ``--attack`` (default ``lie``, a column of both tables), omniscient as in the sweeps.

Each workload runs as

- ``pure``: one process, no Ray, the same data, partition, model, seeds and ``train_locally`` per client,
  the same attack, aggregator and server optimizer, the updates written straight into one matrix on the
  device (the single-worker loop that fast simulators build on; pfl-research, "pfl-research: simulation
  framework for accelerating research in Private Federated Learning" (Granqvist et al., 2024), keeps a
  few long-lived workers per GPU that train many clients each);
- ``byzlab k``: ``execute`` of the same config with k client actors and the server sharing the GPU equally
  (``run.client_actor_gpus`` = ``run.server_gpus`` = 1 / (k + 1)); the server reserves 1 CPU (2 from 8
  CPUs on), the client actors share the rest; MLflow tracking on, as a user runs it.

Reported per case, medians over rounds 2..R (round 1 warms up: CUDA context, cuDNN plans): rounds per
second, the steady round and its ratio to the pure loop's (measured in the same run), the first round,
start-up (to the start of round 1: data, actors), end to end, the last round's test accuracy, GPU
utilisation (mean of ``nvidia-smi`` samples during rounds 2..R) and GPU memory: the GPU's peak use over the
case's baseline, and per process (client actors, server; the pure loop's process) from
``nvidia-smi --query-compute-apps``. On CPU the GPU columns are empty: the smoke test runs this way.

Cases run in the order pure, byzlab 1, 2, 4, 8 (every workload at each step), so a run cut short by
``--budget-seconds`` has measured every workload at the smaller counts: a case that would not finish in
what is left of the budget (judged by the workload's longest case so far) is skipped, and a case stops
after any round when another like it would end past the budget (its row says how many rounds it
measured). The results file is rewritten after every case.

Offline: Fashion-MNIST is read from Debian's /usr/share/datasets/fashion-mnist (or ``--data-root``); when
it is absent the run says so and uses scikit-learn's digits (at most one client per 10 images). SDEA's
Tiny-ImageNet public data falls back to patches of scikit-learn's sample photos when no copy is saved.

    python benchmarks/gpu.py [--workloads lasa,sdea] [--actors 1,2,4,8] [--rounds 4] [--attack lie]
        [--clients-scale 1] [--dataset fashion-mnist] [--data-root DIR] [--set [WORKLOAD:]KEY=VALUE ...]
        [--cpus N] [--budget-seconds 480] [--output benchmarks/results/gpu.md]

The CPU smoke test shrinks it: ``--dataset digits --clients-scale 0.05 --rounds 2 --actors 1,2`` and
``--set sdea:clients.local_epochs=1`` and the like (tests/unit/benchmarks/test_gpu_benchmark.py).

Results: ``benchmarks/results/gpu.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from byzlab import aggregators
from byzlab.actors.adversary import Adversary
from byzlab.actors.server import round_context, sample_clients
from byzlab.orchestrator.config import ExperimentConfig, build_config
from byzlab.orchestrator.config.loading import read_yaml
from byzlab.orchestrator.core.errors import ConfigError, DatasetNotFoundError
from byzlab.orchestrator.core.layout import flatten_state, functional_forward, load_flat_state, model_layout
from byzlab.orchestrator.core.seeding import Stream, derive_seed, torch_generator
from byzlab.orchestrator.learning.training import train_locally
from byzlab.orchestrator.run.experiment import execute, prepare
from byzlab.orchestrator.specs.inputs import RunInputs, load_configured_dataset, resolve_inputs
from byzlab.sweeps.spec import drop_stale_excludes, expand, parse_spec

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "gpu.md"
MIN_IMAGES_PER_CLIENT = 10  # a smaller dataset gets fewer clients, never clients of fewer images
COLUMNS = ("case", "rounds", "rounds/s", "steady round s", "x pure", "first round s", "startup s",
           "end to end s", "test accuracy", "GPU util %", "GPU MiB peak", "MiB per client actor", "server MiB")


@dataclass(frozen=True)
class Workload:
    """One paper's round: its sweep file, the defense and grid point it takes, what issue 13 changes."""

    key: str
    title: str
    sweep: Path
    defense: str
    num_clients: int  # the paper's population and clients per round (before --clients-scale)
    clients_per_round: int


WORKLOADS = {
    "lasa": Workload("lasa", "LASA Table 1, FMNIST round (6,000 clients of 10 images, 100 per round, cnn, "
                     "25% attackers, LASA)", REPOSITORY / "sweeps" / "lasa_table1_paper.yaml", "lasa", 6000, 100),
    "sdea": Workload("sdea", "SDEA Table 8, FMNIST round (10 clients x 10 local epochs, FedProx, 20% attackers, "
                     "SDEA)", REPOSITORY / "sweeps" / "sdea_table8_fashion_mnist.yaml", "sdea", 10, 10),
}


class BudgetSpent(Exception):
    """Raised between rounds when the next round would end past the benchmark's budget."""


def paper_config(workload: Workload, attack: str, dataset: str) -> ExperimentConfig:
    """The sweep's trial for ``dataset`` (FMNIST rows are the papers'), first grid point, seed 0."""
    raw = read_yaml(workload.sweep)
    raw["attacks"] = {attack: (raw.get("attacks") or {}).get(attack, {})}
    raw["defenses"] = {workload.defense: raw["defenses"][workload.defense]}
    raw["seeds"] = [0]
    sweep = expand(parse_spec(drop_stale_excludes(raw), workload.key))
    trials = [t for t in sweep.trials if t.config.data.dataset == "fashion-mnist"]
    return build_config(trials[0].config.to_dict(), [f"data.dataset={dataset}", "data.download=false"])


@dataclass
class Plan:
    """A workload's resolved config (without placement) and what had to change to run it offline."""

    workload: Workload
    config: ExperimentConfig
    notes: list[str] = field(default_factory=list)


def plan_workload(workload: Workload, args: argparse.Namespace) -> Plan:
    """The workload's config on the data this machine has; every fallback is noted."""
    own = [o.split(":", 1)[1] for o in args.set if o.split("=", 1)[0].startswith(f"{workload.key}:")]
    shared = [o for o in args.set if ":" not in o.split("=", 1)[0]]
    overrides = [f"run.rounds={args.rounds}", *([f"data.data_root={args.data_root}"] if args.data_root else []),
                 *shared, *own]
    notes = []
    cfg = build_config(paper_config(workload, args.attack, args.dataset).to_dict(), overrides)
    try:
        train_size = len(load_configured_dataset(cfg).train_y)
    except (ConfigError, DatasetNotFoundError) as err:
        if args.dataset != "fashion-mnist":
            raise
        notes.append(f"Fashion-MNIST is not on this machine ({_first_clause(err)}); scikit-learn's digits are "
                     "used instead, so the numbers are NOT the paper's round")
        cfg = build_config(cfg.to_dict(), ["data.dataset=digits"])
        train_size = len(load_configured_dataset(cfg).train_y)
    clients = max(2, min(round(workload.num_clients * args.clients_scale), train_size // MIN_IMAGES_PER_CLIENT))
    per_round = max(2, min(round(workload.clients_per_round * args.clients_scale), clients))
    cfg = build_config(cfg.to_dict(), [f"clients.num_clients={clients}", f"clients.clients_per_round={per_round}"])
    try:
        resolve_inputs(cfg)
    except (ConfigError, DatasetNotFoundError) as err:
        if cfg.server.public_data.source == "sample_patches":
            raise
        notes.append(f"{workload.key}: public data '{cfg.server.public_data.source}' is not available offline "
                     f"({_first_clause(err)}); patches of scikit-learn's sample photos are used")
        cfg = build_config(cfg.to_dict(), ["server.public_data.source=sample_patches"])
    return Plan(workload, cfg, notes)


def _first_clause(err: Exception) -> str:
    """An error's first line up to its first ';': what went wrong, without the remedy after it."""
    return str(err).splitlines()[0].split(";")[0] if str(err) else type(err).__name__


def placement(actors: int, cpus: float, gpus: float) -> list[str]:
    """The server keeps one CPU (two from 8 CPUs on, half the machine below 2); client actors share the
    rest. On a GPU, the k client actors and the server each get 1/(k + 1) of it (Ray's 1e-4 grid)."""
    server_cpus = 2.0 if cpus >= 8 else 1.0 if cpus >= 2 else cpus / 2
    client_cpus = math.floor((cpus - server_cpus) / actors * 1e4) / 1e4  # rounded down: the bundles must fit
    overrides = [f"run.client_actors={actors}", f"run.client_actor_cpus={client_cpus:g}",
                 f"run.server_cpus={server_cpus:g}"]
    if gpus > 0:
        share = math.floor(1e4 / (actors + 1)) / 1e4
        overrides += [f"run.client_actor_gpus={share:g}", f"run.server_gpus={share:g}"]
    return overrides


class GpuSampler:
    """Samples the GPU's utilisation and memory, and each process's memory, from ``nvidia-smi`` in a
    background thread (nothing on a machine without it)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.available = torch.cuda.is_available() and shutil.which("nvidia-smi") is not None
        self.interval = interval
        self.index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory used MiB)
        self.process_peak: dict[int, float] = {}  # pid -> peak MiB
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _query(self, *query: str) -> list[list[float]]:
        """The numeric rows nvidia-smi answers (none when it fails or hangs: a sample is lost, not the case)."""
        try:
            out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits", "-i", self.index],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
        return [[float(part) for part in row] for row in rows if all(p.replace(".", "").isdigit() for p in row)]

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for utilisation, memory in self._query("--query-gpu=utilization.gpu,memory.used"):
                self.samples.append((now, utilisation, memory))
            for pid, memory in self._query("--query-compute-apps=pid,used_memory"):
                self.process_peak[int(pid)] = max(memory, self.process_peak.get(int(pid), 0.0))
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self.available:
            self.samples, self.process_peak = [], {}
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def summary(self, stamps: list[float], baseline: float) -> dict[str, Any]:
        """Mean utilisation over rounds 2.. (between the first and the last round's end ``stamps``), peak
        memory over ``baseline``, peaks per process role."""
        if not self.available or not self.samples:
            return {}
        steady = [u for t, u, _ in self.samples if len(stamps) > 1 and stamps[0] <= t <= stamps[-1]]
        roles: dict[str, list[float]] = {}
        for pid, memory in self.process_peak.items():
            roles.setdefault(process_role(pid), []).append(memory)
        return {"gpu_util": statistics.fmean(steady) if steady else None,
                "gpu_mib_peak": max(m for _, _, m in self.samples) - baseline, "roles": roles}

    def memory_used(self) -> float:
        rows = self._query("--query-gpu=utilization.gpu,memory.used") if self.available else []
        return rows[0][1] if rows else 0.0


def process_role(pid: int) -> str:
    """'client' or 'server' for a Ray actor of byzlab (Ray titles its processes ``ray::<class>.<method>``),
    'driver' for this process, 'other' for the rest (or when the GPU's pids are another namespace's)."""
    if pid == os.getpid():
        return "driver"
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "other"
    return "client" if "ClientWorker" in title else "server" if "ServerWorker" in title else "other"


class PureLoop:
    """The run's rounds in this process without Ray, with byzlab's own pieces and keys: the server's model
    initialisation, client sampling, ``train_locally`` per client with its (seed, round, client) generators,
    the adversary, the aggregator with the context it declares, the server optimizer and the evaluation.
    The updates are written straight into one (n x d) matrix on the device. Data attacks (which act in the
    client actors) are not replayed."""

    def __init__(self, inputs: RunInputs, device: torch.device) -> None:
        if inputs.threat.data_attack is not None:
            raise ConfigError("--attack: the pure loop replays model attacks only; choose a model attack")
        self.inputs, self.spec, self.device = inputs, inputs.server, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.spec.seed, Stream.MODEL_INIT))
            self.evaluator = self.spec.model.build()
        self.evaluator.to(device).eval()
        self.layout = model_layout(self.evaluator)
        self.model_fn = functional_forward(self.evaluator, self.layout)
        self.global_params = flatten_state(self.evaluator)
        self.optimizer = copy.deepcopy(self.spec.optimizer)
        self.optimizer.start(self.global_params)
        self.adversary = Adversary(self.spec.threat, self.spec.seed, self.global_params.clone(), self.layout)
        self.learner = inputs.client.model.build().to(device)
        order = np.concatenate(inputs.parts)  # clients' samples back to back, as a client actor holds them
        self.x = torch.from_numpy(inputs.dataset.train_x[order]).to(device)
        self.y = torch.from_numpy(inputs.dataset.train_y[order]).to(device)
        bounds = np.cumsum([0, *(len(part) for part in inputs.parts)])
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds, bounds[1:])]
        self.test_x = torch.tensor(inputs.dataset.test_x, device=device)
        self.test_y = torch.tensor(inputs.dataset.test_y, device=device)
        server_data = inputs.server_data
        self.proxy_data = None if server_data.proxy is None else tuple(
            torch.tensor(a, device=device) for a in server_data.proxy)
        self.public_data = None if server_data.public is None else torch.tensor(server_data.public, device=device)
        self.context_fields = aggregators.context_fields(self.spec.aggregator)

    def run_round(self, round_index: int) -> dict[str, float]:
        """Train, attack, aggregate, apply, evaluate; returns the evaluation (as the server reports it)."""
        spec = self.spec
        sampled = sample_clients(spec.seed, round_index, spec.num_clients, spec.clients_per_round)
        updates = torch.empty((len(sampled), self.global_params.numel()), device=self.device)
        num_samples = torch.empty(len(sampled), device=self.device)
        losses = np.empty((2, len(sampled)))
        recipe = self.inputs.client.recipe.for_round(round_index)
        for row, client in enumerate(sampled.tolist()):
            generator = torch_generator(spec.seed, Stream.LOCAL_TRAINING, round_index, client)
            torch.manual_seed(derive_seed(spec.seed, Stream.DROPOUT, round_index, client))
            part = self.slices[client]
            result = train_locally(self.learner, self.global_params, self.x[part], self.y[part], recipe, generator)
            updates[row] = result.update
            num_samples[row] = part.stop - part.start
            losses[:, row] = result.loss_before, result.loss_after
        malicious = torch.from_numpy(np.isin(sampled, spec.threat.malicious)).to(self.device)
        self.adversary.attack(round_index, updates, num_samples, malicious, self.global_params)
        finite = aggregators.finite_rows(updates)
        context = round_context(self, round_index, sampled, num_samples, losses[0] - losses[1], int(malicious.sum()))
        aggregate = spec.aggregator(updates, context, finite).update
        if bool(torch.isfinite(aggregate).all()):
            self.optimizer.step(self.global_params, aggregate)
        if round_index % spec.eval_every != 0 and round_index != spec.rounds:
            return {}
        return dict(zip(("test_accuracy", "test_loss"), self.evaluate()))

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        load_flat_state(self.evaluator, self.global_params)
        correct = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        batch = self.spec.eval_batch_size
        for xb, yb in zip(self.test_x.split(batch), self.test_y.split(batch)):
            logits = self.evaluator(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
        return correct.item() / len(self.test_y), loss_sum.item() / len(self.test_y)


@dataclass
class CaseTimes:
    """What a case measured: wall-clock stamps at the end of each round, and the last evaluation."""

    started: float
    rounds_started: float | None = None  # start of round 1 (when known)
    first_round: float | None = None
    stamps: list[float] = field(default_factory=list)
    accuracy: float | None = None
    ended: float | None = None

    def end_of_round(self, metrics: dict[str, Any], deadline: float) -> None:
        """Record a round; stop the case when another round like the last would end past ``deadline``."""
        now = time.perf_counter()
        last = now - (self.stamps[-1] if self.stamps else self.rounds_started or self.started)
        self.stamps.append(now)
        if metrics.get("test_accuracy") is not None:
            self.accuracy = metrics["test_accuracy"]
        if now + last > deadline:
            raise BudgetSpent

    def row(self, planned_rounds: int) -> dict[str, Any]:
        steady = statistics.median(np.diff(self.stamps)) if len(self.stamps) > 1 else None
        rounds = f"{len(self.stamps)}" + ("" if len(self.stamps) == planned_rounds else f" of {planned_rounds}")
        return {"rounds": rounds, "steady": steady, "first_round": self.first_round,
                "startup": None if self.rounds_started is None else self.rounds_started - self.started,
                "end_to_end": None if self.ended is None else self.ended - self.started, "accuracy": self.accuracy}


def run_pure(plan: Plan, device: torch.device, cpus: float, deadline: float) -> CaseTimes:
    """The pure loop on ``device`` with every CPU as torch threads (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, math.floor(cpus)))
    times = CaseTimes(time.perf_counter())
    try:
        loop = PureLoop(resolve_inputs(plan.config), device)
        times.rounds_started = time.perf_counter()
        for round_index in range(1, plan.config.run.rounds + 1):
            metrics = loop.run_round(round_index)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index == 1:
                times.first_round = time.perf_counter() - times.rounds_started
            try:
                times.end_of_round(metrics, deadline)
            except BudgetSpent:
                break
        times.ended = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    return times


def run_byzlab(plan: Plan, actors: int, cpus: float, gpus: float, deadline: float) -> CaseTimes:
    """``execute`` of the workload's config with ``actors`` client actors, in a fresh output directory."""
    times = CaseTimes(time.perf_counter())
    with tempfile.TemporaryDirectory(prefix="byzlab-gpu-bench-") as output:
        # A dead actor fails the case (its row says so) instead of restarting the run inside the measurement.
        cfg = build_config(plan.config.to_dict(), [*placement(actors, cpus, gpus), f"run.output_dir={output}",
                                                   "run.actor_restarts=0"])
        prepared = prepare(cfg, force=True)

        def on_round(metrics: dict[str, Any]) -> None:
            if metrics["round"] == 1:
                times.first_round = metrics["round_seconds"]
                times.rounds_started = time.perf_counter() - metrics["round_seconds"]
            times.end_of_round(metrics, deadline)

        try:
            execute(prepared, on_round=on_round)
        except BudgetSpent:
            pass
        times.ended = time.perf_counter()
    return times


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _mib(values: list[float] | None) -> str:
    if not values:
        return ""
    return f"{max(values):.0f}" if len(values) == 1 else f"{max(values):.0f} (max of {len(values)})"


def table_row(case: str, result: dict[str, Any], pure_steady: float | None) -> str:
    """One results line; ``result`` holds a measured case, or ``status`` (skipped, failed, not run yet)."""
    if "status" in result:
        return "| " + " | ".join([case, result["status"], *("" for _ in COLUMNS[2:])]) + " |"
    steady, roles = result["steady"], result.get("roles", {})
    processes = roles.get("driver") if case == "pure" else roles.get("client")  # pure runs in this process
    per_process = _mib(processes) + (f" (torch {result['torch_peak_mib']:.0f})" if "torch_peak_mib" in result else "")
    if not processes and result.get("gpu_mib_peak") is not None and case != "pure":
        # nvidia-smi in a container may list no processes (or another PID namespace's): an even split
        sharers = int(case.split()[1]) + 1
        per_process = f"~{result['gpu_mib_peak'] / sharers:.0f} (peak / {sharers} processes)"
    cells = [case, result["rounds"], _number(1 / steady if steady else None, 3), _number(steady),
             _number(steady / pure_steady if steady and pure_steady else None, 2), _number(result["first_round"]),
             _number(result["startup"], 2), _number(result["end_to_end"], 2), _number(result["accuracy"], 4),
             _number(result.get("gpu_util"), 0), _number(result.get("gpu_mib_peak"), 0), per_process,
             _mib(roles.get("server"))]
    return "| " + " | ".join(cells) + " |"


def write_results(path: Path, header: list[str], plans: dict[str, Plan], cases: list[str],
                  results: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The whole results file as it stands (rewritten after every case, so a cut-off run leaves its rows)."""
    lines = list(header)
    for key, plan in plans.items():
        cfg = plan.config
        pure = results.get((key, "pure"), {})
        lines += [f"## {plan.workload.title}", "",
                  f"dataset {cfg.data.dataset}, {cfg.clients.num_clients} clients, {cfg.clients.clients_per_round} "
                  f"per round, model {cfg.model.name}, attack {cfg.threat.attack} (fraction {cfg.threat.fraction:g}), "
                  f"aggregator {cfg.server.aggregator} {cfg.server.aggregator_params}.", "",
                  "| " + " | ".join(COLUMNS) + " |", "| --- | " + " | ".join("---:" for _ in COLUMNS[1:]) + " |"]
        lines += [table_row(case, results.get((key, case), {"status": "not run yet"}), pure.get("steady"))
                  for case in cases]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="lasa,sdea", help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--actors", default="1,2,4,8", help="comma-separated client actor counts")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per case (at least 2: round 1 warms up)")
    parser.add_argument("--attack", default="lie", help="model attack of both workloads")
    parser.add_argument("--clients-scale", type=float, default=1.0, help="multiplies clients and clients per round")
    parser.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    parser.add_argument("--data-root", default=None, help="data.data_root (torchvision files, hub copies)")
    parser.add_argument("--set", action="append", default=[], metavar="[WORKLOAD:]KEY=VALUE",
                        help="a config override for every workload, or for one (sdea:clients.local_epochs=1); "
                        "repeatable; clients.num_clients and clients_per_round come from --clients-scale")
    parser.add_argument("--cpus", type=float, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--budget-seconds", type=float, default=480, help="wall time of the whole benchmark")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if unknown:
        parser.error(f"--workloads: unknown '{unknown[0]}'; allowed: {', '.join(WORKLOADS)}")
    keys = [o.split("=", 1)[0] for o in args.set]
    unknown = [key for key in keys if ":" in key and key.split(":", 1)[0] not in WORKLOADS]
    if unknown:
        parser.error(f"--set: unknown workload in '{unknown[0]}'; allowed prefixes: {', '.join(WORKLOADS)}")
    try:
        args.actors = [int(a) for a in args.actors.split(",")]
    except ValueError:
        parser.error(f"--actors: '{args.actors}' is not a comma-separated list of positive integers")
    if min(args.actors) < 1 or args.rounds < 2 or args.clients_scale <= 0 or args.budget_seconds <= 0:
        parser.error("--actors must be >= 1, --rounds >= 2, --clients-scale and --budget-seconds > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_seconds
    plans = {key: plan_workload(WORKLOADS[key], args) for key in args.workloads.split(",")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not ray.is_initialized():  # the GPUs torch sees, not only those Ray detects: both sides get the same device
        ray.init(num_cpus=args.cpus, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 logging_level="ERROR")
    cpus, gpus = ray.cluster_resources().get("CPU", 1.0), ray.cluster_resources().get("GPU", 0.0)
    cases = ["pure", *(f"byzlab {k}" for k in args.actors)]
    header = _header(argv, args, device, cpus, gpus, plans)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    sampler = GpuSampler()
    for case in cases:
        for key, plan in plans.items():
            estimate = max([r.get("end_to_end") or 0.0 for (k, _), r in results.items() if k == key], default=0.0)
            if time.perf_counter() + estimate > deadline:
                results[(key, case)] = {"status": "skipped (budget)"}
            else:
                print(f"{key}: {case}", flush=True)
                results[(key, case)] = _measure(plan, case, device, cpus, gpus, deadline, sampler)
            write_results(args.output, header, plans, cases, results)
    footer = f"Wall time of the whole benchmark: {time.perf_counter() - started:.0f} s of {args.budget_seconds:g} s."
    write_results(args.output, [*header, footer, ""], plans, cases, results)
    print(args.output.read_text())


def _measure(plan: Plan, case: str, device: torch.device, cpus: float, gpus: float, deadline: float,
             sampler: GpuSampler) -> dict[str, Any]:
    """One case's row: its times and the GPU's samples; a failure is a row saying what failed."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    baseline = sampler.memory_used()
    sampler.start()
    try:
        if case == "pure":
            times = run_pure(plan, device, cpus, deadline)
        else:
            times = run_byzlab(plan, int(case.split()[1]), cpus, gpus, deadline)
    except Exception as err:  # one case failing (out of memory, a dead actor) must not lose the others
        return {"status": f"failed: {type(err).__name__}: {_first_clause(err)[:200]}".replace("|", "/")}
    finally:
        sampler.stop()
    row = times.row(plan.config.run.rounds)
    row.update(sampler.summary(times.stamps, baseline))
    if case == "pure" and device.type == "cuda":
        row["torch_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def _header(argv: list[str] | None, args: argparse.Namespace, device: torch.device, cpus: float, gpus: float,
            plans: dict[str, Plan]) -> list[str]:
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    notes = [note for plan in plans.values() for note in plan.notes]
    return [
        "# Rounds per second on one GPU: byzlab vs a pure PyTorch loop", "",
        f"`{command.strip()}` on {device.type} ({name}), {cpus:g} Ray CPUs, {gpus:g} GPUs, torch {torch.__version__}, "
        f"Ray {ray.__version__}, {time.strftime('%Y-%m-%d')}. Budget {args.budget_seconds:g} s.", "",
        "Each case runs the workload's round R times; `steady round s` is the median of rounds 2..R (wall time "
        "between round ends as the driver sees them), `rounds/s` its inverse, `x pure` its ratio to the pure "
        "loop's in this run; `first round s` includes warm-up; `startup s` = data, actors and transfers before "
        "round 1; `end to end s` from the config to the finished run (byzlab: MLflow, Parquet, checkpoint). "
        "`test accuracy` after the last round measured. GPU columns (empty on CPU): mean utilisation over "
        "rounds 2..R, peak memory over the case's baseline, peak per process (pure: its one process).", "",
        *(f"**Note:** {note}" for note in notes), *([""] if notes else []),
    ]


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:  # a bad option value or a config that cannot run here: one line
        sys.exit(f"benchmarks/gpu.py: {err}")
