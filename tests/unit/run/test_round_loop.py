"""The round loop (``experiment._loop``): the server computes the next round while the driver records the
last one, checkpoints hold the state after their own round, and a stopped run leaves no round in flight."""

from types import SimpleNamespace

import pytest
import ray

from byzlab.orchestrator.run import experiment
from byzlab.orchestrator.run.experiment import StopRun


@ray.remote(num_cpus=0)
class _LoggingServer:
    """Stands in for the server actor: its state is the last round it ran; it logs every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.last_round = 0

    def run_round(self, round_index: int) -> dict:
        self.calls.append(("run_round", round_index))
        self.last_round = round_index
        return {"metrics": {"round": round_index}}

    def state_dict(self) -> dict:
        self.calls.append(("state_dict", self.last_round))
        return {"after_round": self.last_round}

    def load_state_dict(self, state: dict) -> None:
        self.calls.append(("load_state_dict", state["after_round"]))
        self.last_round = state["after_round"]

    def describe(self) -> dict:
        return {"device": "cpu"}

    def logged_calls(self) -> list[tuple]:
        return list(self.calls)


class _Run:
    """The part of ``ActiveRun`` the loop uses: what it recorded and persisted, in order."""

    def __init__(self, rounds: int, checkpoint_every: int, start_round: int = 0, checkpoint: dict | None = None):
        self.prepared = SimpleNamespace(cfg=SimpleNamespace(run=SimpleNamespace(
            rounds=rounds, checkpoint_every=checkpoint_every)))
        self.start_round, self.checkpoint = start_round, checkpoint
        self.recorded: list[int] = []
        self.persisted: list[tuple[int, dict]] = []

    def record(self, report: dict) -> None:
        self.recorded.append(report["metrics"]["round"])

    def persist(self, round_index: int, state: dict) -> None:
        self.persisted.append((round_index, state))


@pytest.fixture
def server(ray_cluster):
    actor = _LoggingServer.remote()
    yield actor
    ray.kill(actor)


def test_the_next_round_is_sent_before_a_round_is_recorded_and_reported(server):
    run = _Run(rounds=5, checkpoint_every=2)
    sent_when_reported = {}

    def on_round(metrics):
        # a call sent now runs after every call sent before it: the log shows what the loop had sent
        calls = ray.get(server.logged_calls.remote())
        sent_when_reported[metrics["round"]] = max(r for name, r in calls if name == "run_round")

    assert experiment._loop(run, server, on_round) == "cpu"
    assert sent_when_reported == {1: 2, 2: 3, 3: 4, 4: 5, 5: 5}  # never beyond the last round
    assert run.recorded == [1, 2, 3, 4, 5]


def test_a_checkpoint_holds_the_state_after_its_own_round(server):
    run = _Run(rounds=5, checkpoint_every=2)
    experiment._loop(run, server, None)
    assert run.persisted == [(2, {"after_round": 2}), (4, {"after_round": 4}), (5, {"after_round": 5})]
    calls = ray.get(server.logged_calls.remote())
    assert calls.index(("state_dict", 2)) < calls.index(("run_round", 3))


def test_a_resumed_loop_loads_the_checkpoint_before_its_first_round(server):
    run = _Run(rounds=4, checkpoint_every=2, start_round=2, checkpoint={"server": {"after_round": 2}})
    experiment._loop(run, server, None)
    assert ray.get(server.logged_calls.remote())[:2] == [("load_state_dict", 2), ("run_round", 3)]
    assert run.recorded == [3, 4]
    assert run.persisted == [(4, {"after_round": 4})]


def test_a_finished_loop_sends_nothing(server):
    run = _Run(rounds=3, checkpoint_every=1, start_round=3, checkpoint={"server": {"after_round": 3}})
    experiment._loop(run, server, None)
    assert ray.get(server.logged_calls.remote()) == [("load_state_dict", 3)]
    assert run.recorded == []


def test_a_stopped_run_waits_for_the_round_in_flight_and_sends_no_other(server, monkeypatch):
    run = _Run(rounds=5, checkpoint_every=5)
    awaited = []
    real_wait = ray.wait

    def recording_wait(refs, **kwargs):
        awaited.extend(refs)
        return real_wait(refs, **kwargs)

    monkeypatch.setattr(experiment.ray, "wait", recording_wait)

    def on_round(metrics):
        if metrics["round"] == 2:
            raise StopRun

    with pytest.raises(StopRun):
        experiment._loop(run, server, on_round)
    monkeypatch.undo()
    assert [ray.get(ref)["metrics"]["round"] for ref in awaited] == [3]
    assert run.recorded == [1, 2]
    assert [c for c in ray.get(server.logged_calls.remote()) if c[0] == "run_round"] == [
        ("run_round", 1), ("run_round", 2), ("run_round", 3)]
