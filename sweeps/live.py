"""The sweep driver's live view: trials running / done / failed, and the best results so far."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from ray import tune

_REFRESH_SECONDS = 0.5
_BEST_SHOWN = 5
_LABEL_ORDER = ("defense", "attack")


def _label(trial: Any) -> str:
    labels = trial.config["trial"]["labels"]
    first = [labels[k] for k in _LABEL_ORDER]
    rest = [f"{k}={v}" for k, v in labels.items() if k not in _LABEL_ORDER]
    sampled = trial.config.get("search", {})  # a search's trial: the values it sampled
    rest += [f"{key.rsplit('.', 1)[-1]}={_short(sampled[name])}"
             for name, key in trial.config["trial"].get("searched", {}).items() if name in sampled]
    return " · ".join([*first, ", ".join(rest)])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _rounds(trial: Any) -> int:
    return trial.config["trial"]["config"]["run"]["rounds"]


def render(trials: list[Any]) -> Group:
    """Counts per state, one row per running trial, the best finished trials by acc_last5_mean."""
    by_status: dict[str, list[Any]] = {}
    for trial in trials:
        by_status.setdefault(trial.status, []).append(trial)
    done, failed = by_status.get("TERMINATED", []), by_status.get("ERROR", [])
    header = Text(
        f"{len(trials)} trials: {len(by_status.get('RUNNING', []))} running, {len(done)} done, "
        f"{len(failed)} failed, {len(by_status.get('PENDING', [])) + len(by_status.get('PAUSED', []))} waiting"
    )
    running = Table(title="running", title_justify="left", expand=False)
    for column in ("trial", "round", "test acc"):
        running.add_column(column)
    for trial in by_status.get("RUNNING", []):
        result = trial.last_result or {}
        accuracy = result.get("test_accuracy")
        running.add_row(
            _label(trial), f"{result.get('round', 0)}/{_rounds(trial)}", "-" if accuracy is None else f"{accuracy:.4f}"
        )
    best = Table(title="best so far (acc_last5_mean)", title_justify="left", expand=False)
    for column in ("trial", "acc_last5_mean", "acc_best"):
        best.add_column(column)
    scored = [t for t in done if "acc_last5_mean" in (t.last_result or {})]
    for trial in sorted(scored, key=lambda t: -t.last_result["acc_last5_mean"])[:_BEST_SHOWN]:
        best.add_row(_label(trial), f"{trial.last_result['acc_last5_mean']:.4f}", f"{trial.last_result['acc_best']:.4f}")
    parts: list[Any] = [header, *(table for table in (running, best) if table.row_count)]
    if failed:
        parts.append(Text("failed: " + "; ".join(_label(t) for t in failed), style="red"))
    return Group(*parts)


class LiveTable(tune.Callback):
    """A rich Live view refreshed from the Tune loop (at most every half second, and at the end)."""

    def __init__(self) -> None:
        self._live: Live | None = None
        self._last_refresh = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {"_live": None, "_last_refresh": 0.0}

    def setup(self, **info: Any) -> None:
        self._live = Live(Text("starting trials ..."), console=Console(), refresh_per_second=4)
        self._live.start()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._live is not None and time.monotonic() - self._last_refresh > _REFRESH_SECONDS:
            self._live.update(render(trials))
            self._last_refresh = time.monotonic()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self._live is not None:
            self._live.update(render(trials))
            self._live.stop()
            self._live.console.line()  # the final view ends without a newline on non-terminals
            self._live = None
