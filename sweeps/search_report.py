"""The report of a search (a sweep with distributions): per searched setting, the configurations found and the
defaults, and the metric against each searched parameter; for ``objective: worst_attack``, the worst attack
of each family against each defense.

Every run of the search counts: finished ones and those its scheduler stopped early (marked, with the round
it stopped at, and valued by the metric over their rounds so far, as the searcher saw them). A run belongs
to the setting whose fixed parameters it has (sweep file order). "Better" is the search's direction: the
highest accuracy for a tuning search, the lowest (a backdoor's highest success rate) for the worst attack.

- ``search.md`` / ``search.csv``: per setting, the default's value, then the best configurations (at most
  ten), the early-stopped runs last;
- ``worst_case.md`` (worst_attack): rows defenses, columns attack families; each cell the worst value found,
  the default parameters' value in brackets, and the parameters that reached it below the table;
- ``search_<parameter>.png``: the metric against each searched parameter, one colour per setting, hollow
  markers for runs stopped early.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.sweeps.report import agg_figure
from byzlab.sweeps.search import RunningObjective
from byzlab.sweeps.spec import Sweep, Trial, TABLE_METRICS, read_dotted

SHOWN = 10


@dataclass
class SearchRun:
    run_id: str
    values: dict[str, Any]  # dotted key -> the value this run had
    value: float | None  # the metric over its rounds
    stopped_round: int | None  # None: it ran out


@dataclass
class Setting:
    trial: Trial
    metric: str
    mode: str  # max: higher is better for the search
    runs: list[SearchRun] = field(default_factory=list)

    @property
    def title(self) -> str:
        labels = self.trial.labels
        rest = [f"{k}={v}" for k, v in labels.items() if k not in ("defense", "attack")]
        return " · ".join([labels["defense"], labels["attack"], *rest])

    def ranked(self) -> list[SearchRun]:
        """Finished runs best first (the search's direction), then the stopped ones, best first."""
        sign = -1 if self.mode == "max" else 1
        valued = [r for r in self.runs if r.value is not None]
        return sorted(valued, key=lambda r: (r.stopped_round is not None, sign * r.value))

    def default(self) -> SearchRun | None:
        defaults = {s.key: s.default for s in self.trial.searched.values()}
        return next((r for r in self.runs if all(r.values[k] == v for k, v in defaults.items())), None)


def _matches(trial: Trial, config: dict[str, Any]) -> bool:
    searched = {s.key for s in trial.searched.values()}
    fixed = {k: v for k, v in trial.overrides.items() if k not in searched and not isinstance(v, dict)}
    return all(read_dotted(config, k) == v for k, v in fixed.items())


def settings(sweep: Sweep, directory: Path, metric: str, mode: str, metric_of: dict[int, str]) -> list[Setting]:
    """The sweep's searched settings with their runs (finished or stopped) under ``directory/runs``.
    ``metric_of``: a setting (trial index) measured by another metric (a backdoor family's backdoor_asr)."""
    found = [Setting(trial, metric_of.get(trial.index, metric),
                     ("max" if mode == "min" else "min") if trial.index in metric_of else mode)
             for trial in sweep.trials if trial.searched]
    runs = directory / "runs"
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        run_dir = RunDirectory(path)
        state = run_dir.read_state() if run_dir.exists() else {}
        if state.get("status") not in ("finished", "stopped"):
            continue
        config = run_dir.read_config()
        setting = next((s for s in found if _matches(s.trial, config)), None)
        if setting is None:
            continue
        table = run_dir.read_table("metrics")
        value = RunningObjective(setting.metric, table.to_pylist() if table is not None else []).add({})
        stopped = state.get("stopped_round") if state["status"] == "stopped" else None
        values = {s.key: read_dotted(config, s.key) for s in setting.trial.searched.values()}
        setting.runs.append(SearchRun(run_dir.run_id, values, value, stopped))
    return found


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "default" if value is None else str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _markdown(found: list[Setting], worst: bool) -> str:
    lines = [f"# {'Worst attacks found' if worst else 'Configurations found'}", ""]
    for setting in found:
        what = TABLE_METRICS[setting.metric]
        ranked, default = setting.ranked(), setting.default()
        stopped = sum(r.stopped_round is not None for r in setting.runs)
        keys = [s.key for s in setting.trial.searched.values()]
        lines += [
            f"## {setting.title}", "",
            f"{what.quantity} (%), {what.of} ({setting.metric}), {'highest' if setting.mode == 'max' else 'lowest'} "
            f"first; {len(setting.runs)} runs, {stopped} stopped early. Defaults: "
            + ", ".join(f"{_short(s.key)}={_number(s.default)}" for s in setting.trial.searched.values())
            + (f": {_percent(default.value)}." if default else ": not evaluated (outside the searched space)."),
            "",
            "| rank | " + " | ".join(_short(k) for k in keys) + f" | {setting.metric} | run |",
            "| ---: | " + " | ".join("---:" for _ in keys) + " | ---: | --- |",
        ]
        for rank, run in enumerate(ranked[:SHOWN], 1):
            note = [*(["default"] if run is default else []),
                    *([f"stopped at round {run.stopped_round}"] if run.stopped_round is not None else [])]
            lines.append(f"| {rank} | " + " | ".join(_number(run.values[k]) for k in keys)
                         + f" | {_percent(run.value)} | {run.run_id}{' (' + ', '.join(note) + ')' if note else ''} |")
        lines.append("")
    return "\n".join(lines)


def _worst_case(found: list[Setting]) -> str:
    """Defenses x attack families: the worst value found, the default's in brackets."""
    defenses = list(dict.fromkeys(s.trial.labels["defense"] for s in found))
    families = list(dict.fromkeys(s.trial.labels["attack"] for s in found))
    others = sorted(k for k in {k for s in found for k in s.trial.labels} - {"defense", "attack"}
                    if len({s.trial.labels.get(k) for s in found}) > 1)  # what tells the tables apart
    lines = ["# Worst case per defense and attack family", "",
             "Cells: the worst value found (%), the family's default parameters' in brackets; the parameters that "
             "reached it are listed below. Accuracy families: the lowest accuracy; backdoor families: the highest "
             "success rate.", ""]
    notes = []
    for group in sorted({tuple((k, s.trial.labels.get(k)) for k in others) for s in found}):
        if group:
            lines += [f"## {', '.join(f'{k}={v}' for k, v in group)}", ""]
        lines += ["| defense | " + " | ".join(families) + " |", "| --- | " + " | ".join("---:" for _ in families) + " |"]
        for defense in defenses:
            cells = []
            for family in families:
                setting = next((s for s in found if s.trial.labels["defense"] == defense
                                and s.trial.labels["attack"] == family
                                and all(s.trial.labels.get(k) == v for k, v in group)), None)
                ranked = [r for r in setting.ranked() if r.stopped_round is None] if setting else []
                if not ranked:
                    cells.append("–")
                    continue
                worst, default = ranked[0], setting.default()
                cells.append(f"{_percent(worst.value)} ({_percent(default.value if default else None)})")
                notes.append(f"- {defense} vs {family}{' (' + ', '.join(f'{k}={v}' for k, v in group) + ')' if group else ''}: "
                             + ", ".join(f"{_short(k)}={_number(v)}" for k, v in worst.values.items())
                             + f" ({setting.metric})")
            lines.append(f"| {defense} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + ["Parameters of the worst attacks found:", "", *notes, ""])


def _plot(path: Path, found: list[Setting], key: str) -> None:
    figure = agg_figure(6.0, 3.6)
    ax = figure.subplots()
    palette = [f"C{i}" for i in range(10)]
    for index, setting in enumerate(s for s in found if any(x.key == key for x in s.trial.searched.values())):
        color = palette[index % len(palette)]
        for stopped in (False, True):
            runs = [r for r in setting.runs if (r.stopped_round is not None) == stopped and r.value is not None
                    and isinstance(r.values[key], (int, float))]
            if not runs:
                continue
            ax.scatter([r.values[key] for r in runs], [100 * r.value for r in runs], s=24,
                       facecolors="none" if stopped else color, edgecolors=color,
                       label=setting.title + (" (stopped early)" if stopped else ""))
    ax.set_xlabel(key)
    ax.set_ylabel(f"{found[0].metric} (%)")
    if any(s.distribution.kind == "loguniform" for f in found for s in f.trial.searched.values() if s.key == key):
        ax.set_xscale("log")
    ax.legend(fontsize=6, loc="best")
    figure.savefig(path)


def write_search_report(sweep: Sweep, directory: Path, out: Path, metric: str, mode: str,
                        metric_of: dict[int, str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    found = settings(sweep, directory, metric, mode, metric_of)
    worst = sweep.spec.objective == "worst_attack"
    paths = [out / "search.md", out / "search.csv"]
    paths[0].write_text(_markdown(found, worst))
    with paths[1].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "run_id", "metric", "value", "stopped_round", "parameters"])
        for setting in found:
            for run in setting.ranked():
                writer.writerow([setting.title, run.run_id, setting.metric, run.value, run.stopped_round or "",
                                 "; ".join(f"{k}={v}" for k, v in run.values.items())])
    if worst:
        paths.append(out / "worst_case.md")
        paths[-1].write_text(_worst_case(found))
    for key in dict.fromkeys(s.key for f in found for s in f.trial.searched.values()):
        path = out / f"search_{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.png"
        _plot(path, found, key)
        paths.append(path)
    return paths
