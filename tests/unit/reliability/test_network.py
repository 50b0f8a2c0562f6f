"""Network and processes (issue 12): a local cluster listens on loopback only with Ray's token authentication on
and leaves no process behind; `byzlab ui` runs MLflow through this interpreter and links to the runs table,
`byzlab sweep` to its parent run.

The listening sockets are read from /proc (Linux): /proc/net/{tcp,tcp6,udp,udp6} for the sockets, each
process's fd links for their owners."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest

from byzlab.orchestrator import cli
from byzlab.orchestrator.run import experiment

linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads sockets from Linux's /proc")
CLI = [sys.executable, "-m", "byzlab.orchestrator"]  # no PATH lookup
TCP_LISTEN, UDP_UNCONNECTED = "0A", "07"


def _address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening_sockets() -> dict[str, tuple[str, str, int]]:
    """inode -> (protocol, address, port) of every listening TCP socket and unconnected UDP socket."""
    sockets = {}
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{protocol}") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[3] == (TCP_LISTEN if protocol.startswith("tcp") else UDP_UNCONNECTED):
                    sockets[fields[9]] = (protocol, *_address(fields[1]))
    return sockets


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree(root: int) -> set[int]:
    """``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))):
            children.setdefault(int(stat[1]), []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def started(pid: int) -> str | None:
    """When a live process started (tells a reused pid apart); None once it is gone (a zombie holds nothing)."""
    stat = _stat(pid)
    return stat[19] if stat and stat[0] != "Z" else None


def command_line(pid: int) -> str:
    """The process's title: Ray's processes rename themselves (ray::RuntimeEnvAgent, ray::IDLE) once started."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listeners_of(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of each listening socket the processes hold."""
    sockets, found = listening_sockets(), []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or exiting
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in sockets:
                _, address, port = sockets[link[8:-1]]
                found.append((address, port, pid))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv4 socket bound through a dual-stack one
    return (mapped or ip).is_loopback


def _unauthenticated_status(address: str, port: int) -> int | None:
    """The HTTP status a request without Ray's token gets from the runtime-env agent (None: no answer yet)."""
    host = str(ipaddress.ip_address(address).ipv4_mapped or address) if ":" in address else address
    host = f"[{host}]" if ":" in host else host
    request = urllib.request.Request(f"http://{host}:{port}/get_runtime_envs_info", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # still starting: asked again at the next look
        return None


def _ray_environment() -> dict[str, str]:
    """This environment without what would join another cluster or switch Ray's token authentication."""
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}


@dataclass
class WatchedRun:
    """What a command's process tree did: its exit, output, listening sockets ((address, port) -> the process
    title), the status an unauthenticated request to Ray's runtime-env agent got, and its processes."""

    returncode: int
    output: str
    listeners: dict[tuple[str, int], str]
    auth_status: int | None
    processes: dict[int, str]  # pid -> start time
    sessions: set[str]  # Ray's session directories: every Ray process of the run names its own

    def exposed(self) -> list[tuple[str, int, str]]:
        return sorted((*where, name) for where, name in self.listeners.items() if not is_loopback(where[0]))

    def left(self, wait_s: float = 15) -> list[str]:
        """The run's processes still alive after up to ``wait_s`` seconds (and any other of its sessions)."""
        deadline, left = time.monotonic() + wait_s, None
        while left != [] and time.monotonic() < deadline:
            time.sleep(0.5)
            left = [command_line(pid)[:100] for pid, start in self.processes.items() if started(pid) == start]
            left += [title[:100] for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if started(pid)
                     and any(session in (title := command_line(pid)) for session in self.sessions)]
        return left

    def kill_left(self) -> None:
        for pid, start in self.processes.items():  # nothing of a failed run stays behind on a shared machine
            if started(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def watch(command: list[str], cwd: Path, env: dict[str, str]) -> WatchedRun:
    """Run ``command``, sampling its process tree's listening sockets every 0.2 s until it exits."""
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full one would stop the run
    run = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    watched = WatchedRun(0, "", {}, None, {}, set())
    try:
        while run.poll() is None:
            tree = process_tree(run.pid)
            watched.processes.update({pid: start for pid in tree - watched.processes.keys() if (start := started(pid))})
            for address, port, pid in listeners_of(tree):
                title = command_line(pid)
                watched.sessions.update(re.findall(r"/session_[^/ ]+/", title))
                if title:  # empty while the process exits
                    watched.listeners[address, port] = Path(title.split(" ")[0]).name
                if title.startswith("ray::RuntimeEnvAgent") and watched.auth_status is None:
                    watched.auth_status = _unauthenticated_status(address, port)
            time.sleep(0.2)
    except BaseException:
        run.kill()
        watched.kill_left()
        raise
    finally:
        log.seek(0)
        watched.output = log.read()
        log.close()
    watched.returncode = run.returncode
    return watched


def local_run_command(output_dir: Path) -> list[str]:
    """The shortest `byzlab run` on a local cluster: the quickstart for 2 rounds, no MLflow."""
    return [*CLI, "run", "-o", "run.rounds=2", "-o", f"run.output_dir={output_dir}", "-o", "tracking.enabled=false"]


@linux_only
def test_a_local_run_listens_on_loopback_only_with_token_auth_and_leaves_no_ray_process(tmp_path):
    run = watch(local_run_command(tmp_path), tmp_path, _ray_environment())
    try:
        assert run.returncode == 0, run.output
        names = set(run.listeners.values())
        assert {"gcs_server", "raylet", "ray::RuntimeEnvAgent"} <= names, (names, run.output)  # it saw the run
        assert run.exposed() == [], f"{len(run.exposed())} non-loopback listeners: {run.exposed()}"
        assert run.auth_status == 401  # Ray's token authentication is on: no token, no answer
        assert run.sessions
        left = run.left()
        assert left == [], f"Ray processes outlived the run: {left}"
    finally:
        run.kill_left()


def test_only_a_new_local_cluster_is_kept_on_loopback(monkeypatch, caplog):
    from ray._private import ray_constants

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert experiment._starts_local_cluster(None) and experiment._starts_local_cluster("local")
    assert not experiment._starts_local_cluster("auto") and not experiment._starts_local_cluster("10.0.0.5:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert not experiment._starts_local_cluster(None)

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = ray_constants.ENABLE_RAY_CLUSTER
    with caplog.at_level(logging.WARNING), experiment._loopback_only():
        assert ray_constants.ENABLE_RAY_CLUSTER is False and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert ray_constants.ENABLE_RAY_CLUSTER is before and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert "without token authentication" in caplog.text
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice stays; byzlab only says what it means


def test_a_cluster_that_cannot_be_joined_is_one_line_naming_the_token(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    message = experiment._join_failure("10.0.0.5:6379", ConnectionError("Failed to connect to Ray cluster"))
    assert "\n" not in message and "10.0.0.5:6379" in message and "RAY_AUTH_MODE=token" in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "RAY_AUTH_MODE" not in experiment._join_failure("10.0.0.5:6379", ConnectionError("refused"))


def _store_with_runs(output_dir: Path) -> tuple[str, str, dict[str, tuple[str, str, float]]]:
    """An MLflow store as byzlab leaves it: two single runs and a sweep with one trial (a child run).
    Returns the experiment id, the sweep's parent run id and run name -> (defense, attack, acc_last5_mean)."""
    from byzlab.orchestrator.run.tracking import default_tracking_uri, store_client

    client = store_client(default_tracking_uri(output_dir))
    experiment_id = client.create_experiment("byzlab")
    parent = client.create_run(experiment_id, run_name="sweep-demo", tags={"byzlab.sweep": "demo"}).info.run_id
    runs = {"fedavg-none-digits-0a1b2c3d": ("fedavg", "none", 0.7593),
            "median-sign_flip-digits-4e5f6a7b": ("median", "sign_flip", 0.3127),
            "lasa-byzmean-digits-8c9d0e1f": ("lasa", "byzmean", 0.6481)}
    for i, (name, (defense, attack, accuracy)) in enumerate(runs.items()):
        tags = {"byzlab.defense": defense, "byzlab.attack": attack, "byzlab.dataset": "digits"}
        if i == 2:
            tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.log_metric(run_id, "acc_last5_mean", accuracy)
        client.set_terminated(run_id)
    client.set_terminated(parent)
    return experiment_id, parent, runs


def test_ui_runs_mlflow_through_this_interpreter_and_links_to_the_runs_table(tmp_path, monkeypatch):
    experiment_id, _, _ = _store_with_runs(tmp_path)
    launched = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: launched.append((path, argv)))
    monkeypatch.setenv("PATH", "/nonexistent")  # the environment's bin/ (the mlflow script) not on PATH
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    result = cli_runner().invoke(cli.app, ["ui", "--output-dir", str(tmp_path), "--port", "5111"])
    assert result.exit_code == 0, result.output
    path, argv = launched[0]
    assert path == sys.executable and argv[1:4] == ["-m", "mlflow", "ui"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5111"
    link = f"http://127.0.0.1:5111/#/experiments/{experiment_id}/runs?viewStateShareKey={cli.RUNS_VIEW}"
    assert f"runs of byzlab: {link}" in result.stdout
    assert os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"

    from mlflow import MlflowClient

    tags = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment(experiment_id).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{cli.RUNS_VIEW}"])
    assert {"tags.`byzlab.defense`", "tags.`byzlab.attack`", "metrics.`acc_last5_mean`"} <= set(view["selectedColumns"])
    help_ = subprocess.run([sys.executable, "-m", "mlflow", "ui", "--help"], capture_output=True, text=True,
                           env={**os.environ, "PATH": "/nonexistent"})
    assert help_.returncode == 0 and "--backend-store-uri" in help_.stdout  # what the exec runs


def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()


def test_a_sweep_ends_with_the_link_to_its_parent_run(tmp_path, capsys):
    from byzlab.orchestrator.config import build_config
    from byzlab.sweeps import runner

    outcome = runner.SweepOutcome(tmp_path, total=2, finished=2, parent_run=("3", "0123abcd"),
                                  ui_options=f"--output-dir {tmp_path}")
    cli._finish_sweep(outcome)
    printed = " ".join(capsys.readouterr().out.split())
    assert f"byzlab ui --output-dir {tmp_path}" in printed
    assert "http://127.0.0.1:5000/#/experiments/3/runs/0123abcd" in printed
    assert runner._ui_options(build_config({"run": {"output_dir": str(tmp_path)}})) == f"--output-dir {tmp_path}"
    custom = build_config({"tracking": {"uri": "sqlite:////data/my store.db"}})
    assert runner._ui_options(custom) == "--uri 'sqlite:////data/my store.db'"


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _page_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", text)).split())


@pytest.mark.slow
@linux_only
@pytest.mark.skipif(_chromium() is None, reason="needs a headless browser: apt-get install -y chromium")
def test_the_runs_table_in_a_headless_browser(tmp_path):
    """`byzlab ui` without the environment's bin/ on PATH; its link, opened in a fresh browser, shows the runs
    table with each run's defense, attack and acc_last5_mean, the sweep's trial unfolded; MLflow listens on
    loopback only."""
    experiment_id, parent, runs = _store_with_runs(tmp_path / "results")
    port = _free_port()
    ui = subprocess.Popen([*CLI, "ui", "--output-dir", str(tmp_path / "results"), "--port", str(port)],
                          env={**os.environ, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        link = ui.stdout.readline() and ui.stdout.readline().split(": ", 1)[1].strip()
        assert link == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?viewStateShareKey=byzlab"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "the MLflow UI did not start"
                time.sleep(1)
        exposed = [s for s in listeners_of(process_tree(ui.pid)) if not is_loopback(s[0])]
        assert exposed == []
        dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,1000",
                              "--virtual-time-budget=30000", "--dump-dom", link],
                             capture_output=True, text=True, timeout=180).stdout
        text = _page_text(dom)
        assert "Training runs" in text and "Group: digits" in text, text[:2000]
        for name, (defense, attack, accuracy) in runs.items():
            assert name in text, text[:2000]
            assert re.search(rf"\b{accuracy}\b\S* {defense} {attack}\b", text), (name, text[:3000])
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
