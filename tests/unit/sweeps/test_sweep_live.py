from dataclasses import dataclass, field
import pickle

from rich.console import Console

from byzlab.sweeps.live import LiveTable, render


@dataclass
class FakeTrial:
    """What the live view reads from a Tune trial."""

    status: str
    defense: str
    last_result: dict = field(default_factory=dict)

    @property
    def config(self) -> dict:
        labels = {"β": "0.5", "attack": "lie", "defense": self.defense, "seed": "0"}
        return {"trial": {"labels": labels, "config": {"run": {"rounds": 20}}}}


def text(trials) -> str:
    console = Console(width=200, record=True)
    console.print(render(trials))
    return console.export_text()


def test_render_counts_running_done_failed_and_ranks_the_best():
    trials = [
        FakeTrial("RUNNING", "lasa", {"round": 7, "test_accuracy": 0.8123}),
        FakeTrial("TERMINATED", "fedavg", {"acc_last5_mean": 0.5, "acc_best": 0.6}),
        FakeTrial("TERMINATED", "median", {"acc_last5_mean": 0.9, "acc_best": 0.95}),
        FakeTrial("ERROR", "krum"),
        FakeTrial("PENDING", "fedra"),
    ]
    shown = text(trials)
    assert "5 trials: 1 running, 2 done, 1 failed, 1 waiting" in shown
    assert "lasa · lie · β=0.5, seed=0" in shown and "7/20" in shown and "0.8123" in shown
    best = shown.split("best so far")[1]
    assert best.index("median") < best.index("fedavg")  # sorted by acc_last5_mean
    assert "failed: krum · lie" in shown


def test_render_leaves_out_empty_tables():
    shown = text([FakeTrial("PENDING", "fedavg")])
    assert "running" not in shown.split("\n", 1)[1] and "best so far" not in shown


def test_the_callback_pickles_without_its_display():
    """Tune pickles its callbacks with the experiment (tuner.pkl): the live display must not go with it."""
    callback = LiveTable()
    callback.setup()
    try:
        restored = pickle.loads(pickle.dumps(callback))
    finally:
        callback.on_experiment_end([])
    assert restored._live is None
