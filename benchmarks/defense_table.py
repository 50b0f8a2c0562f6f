"""Accuracy of aggregation rules under attacks, end to end on digits: the evidence behind the tables in
the README and the issue notes.

Every (rule, attack) pair is one experiment on the quickstart setting (digits, 10 clients, Dirichlet
beta = 0.5, 20 rounds) with Phi = 0.2 (2 malicious clients), seed 0; cells are the final test accuracy
(and acc_last5_mean in brackets). An attack is ``name`` or ``name:key=value,key=value``.

A rule is an aggregator name, or pre-aggregators and the aggregator joined by ``+`` (``nnm+median``: the
``server.pre_aggregators`` list ``[{name: nnm}]`` with default parameters, then ``median``); give parameters
with ``--extra``, keyed by the same label (``--extra 'clipping+median:server.pre_aggregators=[{name:
clipping, threshold: 2.0}]'``).

    python benchmarks/defense_table.py --rules fedavg,krum --attacks none,sign_flip:scale=4
    python benchmarks/defense_table.py --rules median,nnm+median --attacks lie
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import ray

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import run_experiment

RESULTS = Path(__file__).parent / "results" / "defense_table.md"


def attack_overrides(attack: str) -> list[str]:
    name, _, params = attack.partition(":")
    overrides = [f"threat.attack={name}"]
    overrides += [f"threat.attack_params.{item}" for item in params.split(",") if item]
    return overrides


def rule_overrides(rule: str) -> list[str]:
    """``"nnm+bucketing+median"`` -> the aggregator and its pre-aggregators (default parameters)."""
    *pre, aggregator = rule.split("+")
    overrides = [f"server.aggregator={aggregator}"]
    if pre:
        overrides.append("server.pre_aggregators=[" + ", ".join(f"{{name: {name}}}" for name in pre) + "]")
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", required=True,
                        help="comma-separated aggregator names, each optionally behind pre-aggregators: nnm+median")
    parser.add_argument("--attacks", default="none,sign_flip:scale=4")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--extra", action="append", default=[], metavar="RULE:KEY=VALUE",
                        help="an override for one rule's runs, e.g. bulyan:threat.declared_byzantine=1")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    extra: dict[str, list[str]] = {}
    for item in args.extra:
        rule, _, override = item.partition(":")
        extra.setdefault(rule, []).append(override)

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    attacks = args.attacks.split(",")
    lines = [
        f"# Final test accuracy on digits (beta = 0.5, Phi = {args.fraction:g}, {args.rounds} rounds, seed 0)",
        "",
        f"`python benchmarks/defense_table.py {shlex.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}. "
        "Cells: final accuracy (acc_last5_mean).",
        "",
        "| rule | " + " | ".join(attacks) + " |",
        "| --- | " + " | ".join("---:" for _ in attacks) + " |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.rules.split(","):
            cells = []
            for attack in attacks:
                overrides = rule_overrides(rule) + [
                    f"threat.fraction={args.fraction}", f"run.rounds={args.rounds}", f"run.output_dir={tmp}",
                    "tracking.enabled=false", "run.checkpoint_every=1000",
                ]
                overrides += extra.get(rule, [])
                if attack != "none":
                    overrides += attack_overrides(attack)
                cfg = build_config({}, overrides)
                result = run_experiment(cfg)
                if cfg.server.pre_aggregators and "agg_pre_rows" not in result.metrics.column_names:
                    sys.exit(f"{rule}: the server ran without its pre-aggregators (no agg_pre_rows metric)")
                summary = result.summary
                cells.append(f"{summary['acc_final']:.3f} ({summary['acc_last5_mean']:.3f})")
                print(rule, attack, cells[-1], flush=True)
            lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
