"""Network and processes of a local run (issue 12, item 5): listening sockets and leftover processes.

Runs the shortest local ``byzlab run`` (the quickstart for 2 rounds, no MLflow; the run of
``tests/unit/reliability/test_network.py``) twice, watching its process tree's listening sockets every
0.2 s: as byzlab starts Ray now, and with the local cluster started by a plain ``ray.init`` (what
``ensure_ray`` did before). Counts the distinct listening sockets, those on a non-loopback address, the status
an unauthenticated request to Ray's runtime-env agent gets, and the run's processes alive 15 s after it
ended; writes ``benchmarks/results/network.md``.

    python benchmarks/network.py
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import ray

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit" / "reliability"))

from test_network import CLI, _ray_environment, is_loopback, local_run_command, watch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "network.md"
PLAIN_RAY_INIT = "import byzlab.orchestrator.run.experiment as e; e._loopback_only = e._unchanged; "
MODES = {"byzlab (ensure_ray)": CLI,
         "plain ray.init (before)": [CLI[0], "-c", PLAIN_RAY_INIT + CLI[2]]}


def main() -> None:
    rows, details = [], []
    for mode, cli in MODES.items():
        with tempfile.TemporaryDirectory() as sandbox:
            began = time.monotonic()
            run = watch([*cli, *local_run_command(Path(sandbox))[len(CLI):]], Path(sandbox), _ray_environment())
            seconds = time.monotonic() - began
            left = run.left()
            run.kill_left()
        if run.returncode != 0:
            raise SystemExit(f"{mode}: the run failed\n{run.output}")
        exposed = run.exposed()
        rows.append(f"| {mode} | {len(run.listeners)} | {len(exposed)} | {run.auth_status} | {len(left)} | "
                    f"{seconds:.0f} |")
        details.append(f"\n{mode}:\n")
        for (address, port), name in sorted(run.listeners.items(), key=lambda item: item[1]):
            where = "loopback" if is_loopback(address) else "**non-loopback**"
            details.append(f"- `{name}` on `{address}` ({where})")
    RESULTS.write_text("\n".join([
        "# Network and processes of a local run",
        "",
        f"`python benchmarks/network.py` on {platform.machine()}, Python {platform.python_version()}, Ray "
        f"{ray.__version__}, {time.strftime('%Y-%m-%d')}: the shortest local `byzlab run` (quickstart, 2 rounds, "
        "no MLflow), its process tree's listening TCP sockets and unconnected UDP sockets sampled every 0.2 s "
        "from /proc. Auth: the HTTP status of a request without Ray's token to the runtime-env agent (401: "
        "refused). Left: the run's processes alive 15 s after it ended.",
        "",
        "| local cluster started by | listening sockets | non-loopback listeners | auth | left | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Listening sockets, by the title of the process holding them when last seen: `python` is the driver "
        "(byzlab), `raylet` holds two (node manager, object manager), `ray::...` workers are the run's actors "
        "(a worker's title changes as it takes up an actor). Ray's other processes (log monitor, dashboard "
        "agent, ...) listen on nothing here (Ray without `ray[default]`'s dashboard).",
        *details,
        "",
    ]))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
