"""Issue 12, item 6: a lost node. A two-node Ray cluster on this one machine, both nodes on 127.0.0.1 with
their own temp dirs and 2 CPUs each, runs a two-trial sweep through ``byzlab sweep --address``; each trial
reserves 2 CPUs, so one runs on each node. Once both have checkpointed, the second node's raylet is killed:
Tune must restart the trial it held on the surviving node from its checkpoint, every trial must end with the
numbers of the same sweep run undisturbed, and MLflow must hold each trial once.

Ray 2.60 turns a loopback node address into the machine's routable one unless its single-machine mode is on
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, README "A multi-node cluster, securely"), and in that mode ``ray start``
refuses to add a node. So the head and the driver run in single-machine mode, and the second node is started
by ``ray start`` with Ray's loopback rewrite turned off in that one process (``WORKER_START``).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from byzlab.orchestrator import cli
from test_sweeps_e2e import computed_metrics, mlflow_runs, run_dirs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

ROUNDS = 30
CHECKPOINT_EVERY = 3
SINGLE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TOKEN = {"RAY_AUTH_MODE": "token"}  # the head made a token (~/.ray/auth_token); who joins must present it
NODE = ["start", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"]
WORKER_START = (
    "import sys\n"
    "from ray._private import services\n"
    "services.resolve_ip_for_localhost = lambda host: host  # keep this node and its head on 127.0.0.1\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv = ['ray', *sys.argv[1:]]\n"
    "main()\n"
)


def write_sweep(path: Path, output_dir: Path) -> Path:
    """Two trials (median and trimmed mean under a sign flip), each a 1-CPU client actor and a 1-CPU server."""
    spec = {
        "name": "lost-node",
        "base": {
            "threat": {"attack": "sign_flip", "attack_params": {"scale": 4}, "fraction": 0.2},
            "run": {"rounds": ROUNDS, "checkpoint_every": CHECKPOINT_EVERY, "client_actors": 1,
                    "client_actor_cpus": 1, "server_cpus": 1, "output_dir": str(output_dir)},
        },
        "defenses": {"median": {}, "trimmed_mean": {}},
        "seeds": [0],
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _processes_under(root: Path) -> dict[int, str]:
    """The Ray processes of the two nodes, pid -> name: each names its node's temp dir (under ``root``) on its
    command line (read from /proc: these tests run on Linux)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(root).encode() in (proc / "cmdline").read_bytes():
                found[int(proc.name)] = (proc / "comm").read_text().strip()
        except OSError:  # the process ended meanwhile
            continue
    return found


def _raylet_of(temp_dir: Path) -> int:
    raylets = [pid for pid, name in _processes_under(temp_dir).items() if name == "raylet"]
    assert len(raylets) == 1, raylets
    return raylets[0]


def _checkpointed_rounds(sweep_dir: Path) -> list[int]:
    rounds = []
    for run_dir in run_dirs(sweep_dir).values() if (sweep_dir / "runs").is_dir() else []:
        state = json.loads((run_dir / "run.json").read_text())
        rounds.append(-1 if state["status"] == "finished" else state.get("round", 0))
    return rounds


def _reported_rounds(trial_dir: Path) -> list[int]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line)["round"] for line in lines if line.strip()]


def _ray(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def two_nodes():
    """``(address, second node's temp dir)``; every process of both nodes is killed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="byzlab-nodes-", dir="/tmp"))  # short: Ray's socket paths have a limit
    port = _free_port()
    try:
        _ray([sys.executable, "-m", "ray.scripts.scripts", *NODE, "--head", f"--port={port}",
              "--include-dashboard=false", f"--temp-dir={root / 'head'}"], SINGLE_MACHINE)
        _ray([sys.executable, "-c", WORKER_START, *NODE, f"--address=127.0.0.1:{port}",
              f"--temp-dir={root / 'second'}"], TOKEN)
        yield f"127.0.0.1:{port}", root / "second"
    finally:
        for pid in _processes_under(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_a_lost_node_s_trials_continue_on_the_survivor_with_the_undisturbed_numbers(two_nodes, tmp_path):
    address, second_node = two_nodes
    undisturbed_dir, disturbed_dir = tmp_path / "undisturbed", tmp_path / "disturbed"
    undisturbed = CliRunner().invoke(cli.app, ["sweep", str(write_sweep(tmp_path / "a.yaml", undisturbed_dir))])
    assert undisturbed.exit_code == 0, undisturbed.output

    sweep = subprocess.Popen(
        [sys.executable, "-m", "byzlab.orchestrator", "sweep",
         str(write_sweep(tmp_path / "b.yaml", disturbed_dir)), "--address", address],
        env={**os.environ, **SINGLE_MACHINE, **TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = disturbed_dir / "sweeps" / "lost-node"
    deadline = time.monotonic() + 300
    while not (len(rounds := _checkpointed_rounds(sweep_dir)) == 2 and min(rounds) >= CHECKPOINT_EVERY):
        assert sweep.poll() is None and time.monotonic() < deadline, (rounds, sweep.poll())
        time.sleep(0.5)  # polling the run directories while the trials train
    assert -1 not in rounds, "a trial finished before the node was lost: lengthen the runs"
    os.kill(_raylet_of(second_node), signal.SIGKILL)
    output, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, output

    runs, expected = run_dirs(sweep_dir), run_dirs(undisturbed_dir / "sweeps" / "lost-node")
    assert runs.keys() == expected.keys() and len(runs) == 2
    for run_id, run_dir in runs.items():
        assert computed_metrics(run_dir) == computed_metrics(expected[run_id]), run_id

    trial_dirs = {p.name: p for p in (sweep_dir / "tune").iterdir() if (p / "result.json").is_file()}
    restarted = {name for name, path in trial_dirs.items() if (path / "error.txt").is_file()}
    assert len(restarted) == 1, f"one trial ran on the lost node; restarted: {restarted}"
    for name in restarted:  # continued from a checkpoint: round 1 is reported once, every round is reported
        reported = _reported_rounds(trial_dirs[name])
        assert reported.count(1) == 1 and set(reported) == set(range(1, ROUNDS + 1)), reported

    _, parents, children = mlflow_runs(disturbed_dir)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.data.tags["byzlab.run_id"] for c in children) == sorted(runs)
    assert {c.info.status for c in children} == {"FINISHED"}
