"""What `byzlab run` costs over a pure single-process PyTorch loop doing the same training (issue 13, item 4).

The pure loop runs byzlab's own pieces in one process, without Ray: the dataset through byzlab's loader and
partition (``resolve_inputs``), the model built and initialised as the server builds it, every client
trained by ``train_locally`` from the generators byzlab keys by (seed, round, client), FedAvg as the
sample-weighted mean of the updates, and the server's evaluation (batches of ``server.eval_batch_size``).
Beside it, in the same invocation, ``python -m byzlab.orchestrator run`` (the ``byzlab`` command) runs the
same config with each placement named in ``--placements``:

- ``default``: the defaults (two 1-CPU client actors, a server without CPUs of its own, one torch thread
  per actor; docs/architecture.md, "Placement and threads");
- ``old``: the placement of before issue 13 (one 1-CPU client actor, a 1-CPU server);
- ``threads``: one client actor with every CPU as torch threads (2 CPUs, a server without CPUs).

Each one is a fresh process started by this script, timed from its start to its exit (end to end: imports,
Ray's start, data loading, actors, rounds, Parquet and MLflow at the end). A round is timed from sampling to
the end of the evaluation (byzlab: ``round_seconds`` of ``metrics.parquet``, measured the same way on the
server); "steady round" is the median of rounds 2..R, the first round warms up, split into training (all
clients' local training; byzlab's ``train_seconds``: broadcast, training, gathering the updates) and the
test-set evaluation (``eval_seconds``), the rest being aggregation and its bookkeeping. Memory is the peak
over the run of the proportional set size (PSS: a page shared by k processes counts 1/k in each, so the
object store is counted once) summed over the process and all its descendants (byzlab: the driver, Ray's
daemons, the actors), sampled every 0.5 s. Ratios are byzlab / pure of the same repeat; with several repeats the table
gives medians. Run it alone on the machine (flock -x /tmp/byzlab-cpu.lock):

    python benchmarks/overhead.py [--dataset fashion-mnist] [--clients 10] [--rounds 3] [--epochs 1]
                                  [--batch-size 64] [--placements default,old,threads] [--repeats 1]
                                  [--pure-threads torch,1] [--output benchmarks/results/overhead.md] [--append]

``--pure-threads`` runs the pure loop once per entry: ``torch`` (torch's default, every core: the reference of
the ratios) or a thread count. With one thread it computes bitwise what byzlab's default placement computes
(one torch thread per actor); with two its rounding differs and, over thousands of SGD steps, so do the
accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

RESULTS = Path(__file__).parent / "results" / "overhead.md"
PLACEMENTS = {
    "default": [],
    "old": ["run.client_actors=1", "run.client_actor_cpus=1", "run.server_cpus=1"],
    "threads": ["run.client_actors=1", "run.client_actor_cpus=2", "run.server_cpus=0"],
}
TITLE = "# byzlab run vs a pure PyTorch loop (issue 13, item 4)\n\n"
ACCURACY_TOLERANCE = 3e-4  # the bound on pure vs byzlab accuracy; equal thread counts agree bitwise


def workload(args: argparse.Namespace) -> list[str]:
    """The config both sides run, as `-o` overrides: IID clients, FedAvg, every client in every round."""
    return [f"data.dataset={args.dataset}", "partition.scheme=iid", f"clients.num_clients={args.clients}",
            f"clients.local_epochs={args.epochs}", f"clients.batch_size={args.batch_size}", f"run.rounds={args.rounds}"]


# ------------------------------------------------------------------------------------------------ the pure loop


def pure_loop(overrides: list[str], threads: int | None) -> dict:
    """The pure PyTorch loop of the module docstring; its rounds' seconds and evaluations."""
    import torch
    import torch.nn.functional as F

    from byzlab.orchestrator.config import build_config
    from byzlab.orchestrator.core.layout import flatten_state, load_flat_state
    from byzlab.orchestrator.core.seeding import Stream, derive_seed, torch_generator
    from byzlab.orchestrator.learning.training import train_locally
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    if threads is not None:
        torch.set_num_threads(threads)
    cfg = build_config({}, overrides)
    inputs = resolve_inputs(cfg)
    seed, recipe = cfg.run.seed, inputs.client.recipe
    torch.manual_seed(derive_seed(seed, Stream.MODEL_INIT))
    model = inputs.client.model.build()
    global_flat = flatten_state(model)
    shards = [(torch.from_numpy(inputs.dataset.train_x[part]), torch.from_numpy(inputs.dataset.train_y[part]))
              for part in inputs.parts]
    weights = torch.tensor([len(part) for part in inputs.parts], dtype=torch.float32)
    weights /= weights.sum()
    test_x, test_y = torch.from_numpy(inputs.dataset.test_x), torch.from_numpy(inputs.dataset.test_y)
    rounds = []
    for round_index in range(1, cfg.run.rounds + 1):
        started = time.perf_counter()
        updates = torch.empty((len(shards), global_flat.numel()))
        for client, (x, y) in enumerate(shards):
            torch.manual_seed(derive_seed(seed, Stream.DROPOUT, round_index, client))
            generator = torch_generator(seed, Stream.LOCAL_TRAINING, round_index, client)
            updates[client] = train_locally(model, global_flat, x, y, recipe.for_round(round_index), generator).update
        trained = time.perf_counter()
        global_flat += weights @ updates
        evaluating = time.perf_counter()
        load_flat_state(model, global_flat)
        model.eval()
        correct, loss_sum = torch.zeros(()), torch.zeros(())
        with torch.no_grad():
            for xb, yb in zip(test_x.split(cfg.server.eval_batch_size), test_y.split(cfg.server.eval_batch_size)):
                logits = model(xb)
                loss_sum += F.cross_entropy(logits, yb, reduction="sum")
                correct += (logits.argmax(dim=1) == yb).sum()
        rounds.append({"seconds": time.perf_counter() - started, "train_seconds": trained - started,
                       "eval_seconds": time.perf_counter() - evaluating,
                       "test_accuracy": correct.item() / len(test_y), "test_loss": loss_sum.item() / len(test_y)})
    return {"rounds": rounds, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class Measured:
    """One side's run: end-to-end seconds, its rounds, its peak summed PSS and what made it up."""

    name: str
    wall: float
    rounds: list[dict[str, float]]
    peak_bytes: int = 0
    peak_parts: dict[str, int] = field(default_factory=dict)

    def steady(self, key: str = "seconds") -> float:
        """The median of ``key`` over rounds 2..R (the first warms up)."""
        later = [r[key] for r in self.rounds[1:]]
        return statistics.median(later) if later else float("nan")

    @property
    def first(self) -> float:
        return self.rounds[0]["seconds"]

    @property
    def outside_rounds(self) -> float:
        return self.wall - sum(r["seconds"] for r in self.rounds)


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
        children.setdefault(parent, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children, found, todo = _children_of(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _kind(pid: int, root: int) -> str:
    """What a process of the tree is, for the memory breakdown (Ray names its workers ``ray::<class>``)."""
    if pid == root:
        return "driver"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "ended"
    for prefix, kind in (("ray::ClientWorker", "client actors"), ("ray::ServerWorker", "server actor")):
        if command.startswith(prefix):
            return kind
    return "Ray workers (idle)" if command.startswith("ray::") else "Ray daemons"


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process tree until stopped; keeps the peak and its breakdown by kind."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak, self.parts = 0, {}
        self.cpu_seconds = 0.0  # what sampling cost this thread, reported beside the results
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.thread_time()
            parts: dict[str, int] = {}
            for pid in _tree(self.root):
                kind = _kind(pid, self.root)
                parts[kind] = parts.get(kind, 0) + _pss_bytes(pid)
            if sum(parts.values()) > self.peak:
                self.peak, self.parts = sum(parts.values()), parts
            self.cpu_seconds += time.thread_time() - started
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _timed(command: list[str], log: Path) -> tuple[float, TreeMemory]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, as on a laptop
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        memory = TreeMemory(process.pid)
        memory.start()
        code = process.wait()
    wall = time.perf_counter() - started
    memory.stop()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}; its output: {log}")
    return wall, memory


def pure_name(threads: str) -> str:
    return "pure" if threads == "torch" else f"pure, {threads} thread" + ("" if threads == "1" else "s")


def measure_pure(args: argparse.Namespace, threads: str, scratch: Path) -> Measured:
    out = scratch / f"pure-{threads}.json"
    command = [sys.executable, __file__, "--pure-child", str(out), *_child_arguments(args, threads)]
    wall, memory = _timed(command, scratch / f"pure-{threads}.log")
    result = json.loads(out.read_text())
    return Measured(pure_name(threads), wall, result["rounds"], memory.peak, memory.parts)


def measure_byzlab(args: argparse.Namespace, placement: str, scratch: Path) -> Measured:
    import pyarrow.parquet as pq

    output_dir = scratch / f"byzlab-{placement}"
    overrides = [*workload(args), f"run.output_dir={output_dir}", *PLACEMENTS[placement]]
    command = [sys.executable, "-m", "byzlab.orchestrator", "run", *[a for o in overrides for a in ("-o", o)]]
    wall, memory = _timed(command, scratch / f"byzlab-{placement}.log")
    [metrics_path] = output_dir.glob("*/metrics.parquet")
    metrics = pq.read_table(metrics_path).to_pylist()
    rounds = [{"seconds": m["round_seconds"], "train_seconds": m["train_seconds"], "eval_seconds": m["eval_seconds"],
               "test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"]} for m in metrics]
    return Measured(placement, wall, rounds, memory.peak, memory.parts)


def _child_arguments(args: argparse.Namespace, threads: str) -> list[str]:
    return ["--dataset", args.dataset, "--clients", str(args.clients), "--rounds", str(args.rounds),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--pure-threads", threads]


# ------------------------------------------------------------------------------------------------ the report


ROWS = {
    "steady round (s)": lambda m: m.steady(),
    "of which training (s)": lambda m: m.steady("train_seconds"),
    "of which evaluation (s)": lambda m: m.steady("eval_seconds"),
    "first round (s)": lambda m: m.first,
    "end to end (s)": lambda m: m.wall,
    "outside the rounds (s)": lambda m: m.outside_rounds,
    "peak memory, summed PSS (GiB)": lambda m: m.peak_bytes / 2**30,
}


def report(args: argparse.Namespace, repeats: list[dict[str, Measured]], command: str) -> str:
    """The results page: the table (medians over repeats; ratios to the first pure side, taken within each
    repeat), the numbers' agreement, the memory breakdown and every repeat's raw seconds."""
    import ray
    import torch

    sides = list(repeats[0])
    reference = sides[0]
    placements = [name for name in sides if not name.startswith("pure")]
    lines = [
        f"## {', '.join(sides)}",
        "",
        f"`{command}` on {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"ray {ray.__version__}, {time.strftime('%Y-%m-%d')}; {len(repeats)} repeat(s), medians shown. "
        f"Workload: {args.dataset}, {args.clients} IID clients, {args.epochs} local epoch(s) of batches of "
        f"{args.batch_size}, FedAvg, {args.rounds} rounds, every client every round, evaluation every round, "
        "MLflow tracking on (byzlab's defaults otherwise). Placements: "
        + "; ".join(f"`{p}` = {' '.join(PLACEMENTS[p]) or 'the defaults'}" for p in placements)
        + f". Ratios: byzlab (or another pure side) / `{reference}`, within each repeat.",
        "",
        "| | " + " | ".join(f"{name} | ratio" if name != reference else name for name in sides) + " |",
        "| --- | " + " | ".join("---: | ---:" if name != reference else "---:" for name in sides) + " |",
    ]
    for label, value in ROWS.items():
        cells = []
        for name in sides:
            cells.append(f"{statistics.median(value(r[name]) for r in repeats):.2f}")
            if name != reference:
                cells.append(f"{statistics.median(value(r[name]) / value(r[reference]) for r in repeats):.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    last = repeats[-1]
    lines += ["", *_agreement(last, reference, placements), "", *_memory_parts(last), "", *_per_repeat(repeats)]
    return "\n".join(lines) + "\n"


def _same_numbers(a: Measured, b: Measured) -> bool:
    return all(x["test_loss"] == y["test_loss"] and x["test_accuracy"] == y["test_accuracy"]
               for x, y in zip(a.rounds, b.rounds))


def _agreement(last: dict[str, Measured], reference: str, placements: list[str]) -> list[str]:
    """Each byzlab placement's accuracies against the reference, and which other sides compute its numbers
    bit for bit (test accuracy and loss of every round)."""
    lines = ["Numbers (last repeat):", ""]
    for p in placements:
        gap = max(abs(a["test_accuracy"] - b["test_accuracy"]) for a, b in zip(last[p].rounds, last[reference].rounds))
        same = [f"`{name}`" for name in last if name != p and _same_numbers(last[p], last[name])]
        lines.append(f"- `{p}`: test accuracy within {gap:.1e} of `{reference}` every round "
                     f"({'within' if gap <= ACCURACY_TOLERANCE else 'outside'} {ACCURACY_TOLERANCE:g}); "
                     f"bitwise the numbers of: {', '.join(same) or 'no other side'}")
    for name, measured in last.items():
        accuracies = ", ".join(f"{r['test_accuracy']:.4f}" for r in measured.rounds)
        lines.append(f"- test accuracy by round, `{name}`: {accuracies}")
    return lines


def _memory_parts(last: dict[str, Measured]) -> list[str]:
    lines = ["Peak memory by process kind (last repeat, GiB of PSS at the peak):", ""]
    for name, measured in last.items():
        parts = ", ".join(f"{kind} {size / 2**30:.2f}" for kind, size in sorted(measured.peak_parts.items()))
        lines.append(f"- `{name}`: {parts}")
    return lines


def _per_repeat(repeats: list[dict[str, Measured]]) -> list[str]:
    lines = ["Every repeat (seconds per round; end to end):", ""]
    for index, repeat in enumerate(repeats, 1):
        for name, measured in repeat.items():
            seconds = ", ".join(f"{r['seconds']:.2f}" for r in measured.rounds)
            lines.append(f"- repeat {index}, `{name}`: rounds {seconds}; end to end {measured.wall:.2f}")
    return lines


def _choices(parser: argparse.ArgumentParser, flag: str, given: str, allowed: list[str],
             numbers: bool = False) -> list[str]:
    """The comma-separated entries of ``flag``; one line naming it and what it allows otherwise."""
    entries = given.split(",")
    bad = [e for e in entries if e not in allowed and not (numbers and e.isdigit() and int(e) > 0)]
    if bad:
        parser.error(f"{flag}: {', '.join(bad)} not allowed; allowed: {', '.join(allowed)}"
                     + (" or a positive thread count" if numbers else ""))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--placements", default="default,old,threads", help=f"comma-separated: {', '.join(PLACEMENTS)}")
    parser.add_argument("--pure-threads", default="torch", help="comma-separated: torch (its default) or a count")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true", help="add this run's report to --output's end")
    parser.add_argument("--pure-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pure_child is not None:
        threads = None if args.pure_threads == "torch" else int(args.pure_threads)
        args.pure_child.write_text(json.dumps(pure_loop(workload(args), threads)))
        return
    placements = _choices(parser, "--placements", args.placements, list(PLACEMENTS))
    pure_threads = _choices(parser, "--pure-threads", args.pure_threads, ["torch"], numbers=True)
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeats):
            scratch = Path(tmp) / f"repeat{index}"
            scratch.mkdir()
            measured = {}
            for threads in pure_threads:
                side = measure_pure(args, threads, scratch)
                measured[side.name] = side
                print(f"repeat {index + 1}: {side.name} {side.wall:.1f} s", flush=True)
            for placement in placements:
                measured[placement] = measure_byzlab(args, placement, scratch)
                print(f"repeat {index + 1}: {placement} {measured[placement].wall:.1f} s", flush=True)
            repeats.append(measured)
    text = report(args, repeats, command.strip())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    earlier = args.output.read_text() + "\n" if args.append and args.output.is_file() else TITLE
    args.output.write_text(earlier + text)
    print(text)


if __name__ == "__main__":
    main()
