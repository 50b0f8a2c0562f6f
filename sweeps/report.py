"""Paper-style tables and plots from a finished sweep.

Records come from a sweep directory (``runs/<run id>/``) or from MLflow; either way a record is one
finished experiment: its flattened config as strings (what MLflow stores as params), its summary metrics
and its per-round curves. :func:`write_report` turns records into tables and figures, with no Ray and no
MLflow involved.

The grid is inferred from the records. Keys that only say where or how a run executed (output dir,
actors, CPUs/GPUs, device, checkpointing, tracking) are ignored. Of the keys that vary:

- the defense is ``server.aggregator`` plus the ``server.aggregator_params.*`` that vary among the records
  of that aggregator: ``lasa (sparsity=0.3)``, ``median``;
- the attack is ``threat.attack`` plus the ``threat.attack_params.*`` that vary among the records of that
  attack: ``sign_flip (scale=4)``; an authors'-code variant is always named, so a table says which
  definition a column or row used: ``lie (variant=lasa_code)``, ``residual (variant=residual_code)``;
- ``run.seed`` gives the replicates a cell averages over;
- config keys a sweep ties to the defense or the attack (the sweep file's ``report: {defense_keys: [...],
  attack_keys: [...]}``: ``clients.update_clip``, which the LASA authors' engine applies for some defenses
  only; ``threat.start_round`` of a model replacement) are named in the labels of the records whose value
  is not the key's most common one: ``fedavg (update_clip=1)``, ``model_replacement (start_round=6,
  every=1000)``; a group's table lists the defenses that ran in it;
- every other varying key forms the column group, labelled with short names (``partition.beta`` -> β,
  ``threat.fraction`` -> Φ, others by their last dotted component): ``β=0.3, Φ=0.2``. A key a record lacks
  (``partition.beta`` of an iid run) is left out of that record's label. Nothing else varying: one group
  with an empty label.

Order: groups and the variants of one defense or attack sort numerically where a key's values are all
numbers, by first appearance otherwise (missing values first); defense names keep first-appearance order
with ``fedavg`` first, attack names likewise with ``none`` (the no-attack baseline) first. A group's
columns are the attacks that occur in it.

Cells: the table's metric (``acc_last5_mean`` unless the sweep file's ``report: {metric: ...}`` or
``byzlab report --metric`` names another of :data:`TABLE_METRICS`, as a paper's own tables do: LASA reports
the best accuracy; ``backdoor_asr``, the backdoor's success rate over the last five evaluations, for the
backdoor tables, where the lowest is best) in percent, two decimals, mean ± population std (ddof=0: the spread of the
seeds actually run, not an estimate for unseen ones) over the seeds. A cell with one seed shows the mean
alone (no ``± 0.00`` suggesting a spread was measured); a cell without a finished run shows ``–``. In
each column (one attack in one group) the best mean is bold and the second best underlined; ranks are
dense and taken on the displayed two-decimal values, so equal-looking means tie: tied best are all bold,
and the next distinct value is underlined.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow.compute as pc
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient
from mlflow.entities import Run

from byzlab.orchestrator.config import flatten
from byzlab.orchestrator.run.storage import RunDirectory
from byzlab.sweeps.spec import (
    DEFAULT_TABLE_METRIC, SHORT_NAMES, SPEC_FILE, TABLE_METRICS, check_table_metric, load_saved_sweep,
)

SUMMARY_KEYS = ("acc_last5_mean", "acc_best", "acc_final")
DETECTION_KEYS = ("detection_tpr", "detection_fpr")
BACKDOOR_KEY = "backdoor_asr"
CURVE_KEYS = ("test_accuracy", *DETECTION_KEYS, BACKDOOR_KEY)
LAST_EVALUATIONS = 5  # a curve's table value (backdoor_asr): the mean of its last five evaluations, as acc_last5_mean
RUN_ID_TAG = "byzlab.run_id"
TRIAL_ID_TAG = "byzlab.trial_id"
PARENT_TAG = "mlflow.parentRunId"

DEFENSE_KEY, DEFENSE_PARAMS = "server.aggregator", "server.aggregator_params"
ATTACK_KEY, ATTACK_PARAMS = "threat.attack", "threat.attack_params"
SEED_KEY = "run.seed"
EXECUTION_KEYS = frozenset({
    "run.output_dir", "run.checkpoint_every", "run.client_actors", "run.client_actor_cpus",
    "run.client_actor_gpus", "run.server_cpus", "run.server_gpus", "run.device",
})
EXECUTION_PREFIXES = ("tracking.",)
BASELINE_DEFENSE, NO_ATTACK = "fedavg", "none"  # listed first
CODE_VARIANT = "_code"  # attack and defense variants that follow a paper's released code (lasa_code, residual_code)

MISSING = "–"
LATEX_NAMES = {"β": r"$\beta$", "Φ": r"$\Phi$"}
SLUG_NAMES = {"β": "beta", "Φ": "phi"}
LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def caption(metric: str) -> str:
    what = TABLE_METRICS[metric]
    best, second, missing = (("lowest", "second lowest", "no finished run or no backdoor") if what.lower_is_better
                             else ("best", "second best", "no finished run"))
    return (f"{what.quantity} (%), mean ± std (population, over seeds) of {what.of} ({metric}); "
            f"{best} per column in bold, {second} underlined; – = {missing}.")


def record_value(record: TrialRecord, metric: str) -> float | None:
    """A record's value of a table metric: a run summary, or for ``backdoor_asr`` the mean of the last
    evaluations of its curve; None when the run has none (a backdoor rate without a backdoor)."""
    if metric != BACKDOOR_KEY:
        return record.summary[metric]
    curve = record.curves.get(BACKDOOR_KEY, [])
    return float(np.mean([value for _, value in curve[-LAST_EVALUATIONS:]])) if curve else None


DPI = 150


@dataclass
class TrialRecord:
    """One finished experiment: flattened config (values as ``str(value)``, as MLflow stores params),
    summary metrics, and per-round curves (metric -> [(round, value)], rounds without a value dropped; the
    loaders give every metric of CURVE_KEYS, an empty list where the run has none)."""

    params: dict[str, str]
    summary: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]


# ---------------------------------------------------------------------------------------------- loading


def records_from_sweep_dir(path: str | Path) -> list[TrialRecord]:
    """The finished runs under ``path/runs/``, in the sweep file's trial order when the directory keeps
    it (``sweep.yaml``), else in order of creation (then run id); others are skipped."""
    runs = Path(path) / "runs"
    if not runs.is_dir():
        raise ValueError(f"{path}: not a sweep directory (no runs/ folder)")
    run_dirs = [run_dir for run_dir in map(RunDirectory, runs.iterdir()) if run_dir.exists()]
    states = {run_dir.run_id: run_dir.read_state() for run_dir in run_dirs}
    trial_order = (
        {trial.run_id: trial.index for trial in load_saved_sweep(path).trials}
        if (Path(path) / SPEC_FILE).is_file() else {}
    )
    finished = sorted(
        (d for d in run_dirs if states[d.run_id].get("status") == "finished"),
        key=lambda d: (trial_order.get(d.run_id, math.inf), states[d.run_id].get("created", ""), d.run_id),
    )
    if not finished:
        raise ValueError(f"{runs}: no finished runs ({len(run_dirs)} run directories)")
    return [_record_from_run_dir(d, states[d.run_id]) for d in finished]


def _record_from_run_dir(run_dir: RunDirectory, state: dict) -> TrialRecord:
    params = {key: str(value) for key, value in flatten(run_dir.read_config()).items()}
    table = run_dir.read_table("metrics")
    curves = {key: [] for key in CURVE_KEYS}
    for key in CURVE_KEYS:
        if table is not None and key in table.column_names:
            rows = table.select(["round", key]).filter(pc.is_valid(table[key]))
            curves[key] = [(int(r), float(v)) for r, v in zip(rows["round"].to_pylist(), rows[key].to_pylist())]
    summary = {key: float(state["summary"][key]) for key in SUMMARY_KEYS if key in state["summary"]}
    return TrialRecord(params, summary, curves)


def records_from_mlflow(experiment_name: str, tracking_uri: str) -> tuple[list[TrialRecord], str | None]:
    """The FINISHED runs of the experiment that carry the ``byzlab.run_id`` tag (sweep parents do not):
    sweep trials in their sweep's trial order (Tune numbers trial ids in grid order), then other runs in
    order of start; when an experiment was rerun (``--force``) only its latest finished run is kept. Second
    element: the parent run id all of them share (``mlflow.parentRunId``), else None."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"MLflow experiment '{experiment_name}' does not exist at {tracking_uri}")
    runs, page_token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"], page_token=page_token,
        )
        runs.extend(run for run in page if RUN_ID_TAG in run.data.tags)
        page_token = page.token
        if not page_token:
            break
    latest = sorted(
        {run.data.tags[RUN_ID_TAG]: run for run in runs}.values(),
        key=lambda run: (TRIAL_ID_TAG not in run.data.tags, run.data.tags.get(TRIAL_ID_TAG, "")),
    )
    if not latest:
        raise ValueError(f"MLflow experiment '{experiment_name}' has no finished byzlab runs")
    parents = {run.data.tags.get(PARENT_TAG) for run in latest}
    parent = parents.pop() if len(parents) == 1 else None
    return [_record_from_mlflow_run(client, run) for run in latest], parent


def _record_from_mlflow_run(client: MlflowClient, run: Run) -> TrialRecord:
    curves = {}
    for key in CURVE_KEYS:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp)
        curves[key] = sorted({m.step: m.value for m in history}.items())  # a step logged twice: last wins
    summary = {key: run.data.metrics[key] for key in SUMMARY_KEYS if key in run.data.metrics}
    return TrialRecord(dict(run.data.params), summary, curves)


# ------------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Label:
    """A defense, an attack or a column group: a name (aggregator or attack; "" for a group) and the
    varying settings that tell its variants apart, as (dotted key, value or None where the record lacks
    the key)."""

    name: str
    settings: tuple[tuple[str, str | None], ...]


@dataclass
class Grid:
    """The records placed on (group, defense, attack) cells, everything in display order."""

    group_keys: list[str]
    short_names: dict[str, str]  # dotted key -> name shown in labels
    groups: list[Label]
    defenses: list[Label]
    attacks: dict[Label, list[Label]]  # group -> the attacks that occur in it
    cells: dict[tuple[Label, Label, Label], list[TrialRecord]]
    metric: str = DEFAULT_TABLE_METRIC  # what the table's cells show (TABLE_METRICS)

    def defenses_in(self, group: Label) -> list[Label]:
        """The defenses with a finished run in ``group``, in display order (a defense variant a sweep runs
        on one dataset only leaves no empty row in the others' tables)."""
        return [d for d in self.defenses if any((group, d, a) in self.cells for a in self.attacks[group])]

    def text(self, label: Label) -> str:
        """``lasa (sparsity=0.3)``, ``sign_flip``, ``β=0.3, Φ=0.2``."""
        return _render(label, self.short_names.__getitem__)

    def latex(self, label: Label) -> str:
        """The label with LaTeX special characters escaped and β, Φ as math."""
        def name_of(key: str) -> str:
            short = self.short_names[key]
            return LATEX_NAMES.get(short, _latex_escape(short))

        return _render(label, name_of, _latex_escape)

    def slug(self, group: Label) -> str:
        """A filesystem-safe name: ``beta0.3_phi0.2``, ``dataset-mnist``; ``all`` for the empty group."""
        parts = []
        for key, value in group.settings:
            if value is not None:
                name = SLUG_NAMES.get(self.short_names[key], self.short_names[key])
                value = _short_value(value)
                parts.append(f"{name}{value}" if _is_number(value) else f"{name}-{value}")
        return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)) or "all"

    def metric_values(self, group: Label, defense: Label, attack: Label) -> np.ndarray:
        """The cell's values of the table's metric, one per seed (empty when the cell has no run or none of
        its runs has the metric)."""
        values = (record_value(r, self.metric) for r in self.cells.get((group, defense, attack), []))
        return np.array([v for v in values if v is not None])


def _value(record: TrialRecord, key: str) -> str | None:
    """The record's value of ``key``; an empty section (``{}``, e.g. the params of a rule without any)
    counts as absent."""
    value = record.params.get(key)
    return None if value == "{}" else value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _short_value(text: str) -> str:
    """``2.0`` -> ``2`` (YAML and pydantic turn 2 into 2.0); anything else unchanged."""
    if _is_number(text) and float(text).is_integer() and abs(float(text)) < 1e15:
        return str(int(float(text)))
    return text


def _in_section(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".")


def _varying(records: list[TrialRecord], keys: list[str]) -> list[str]:
    return [key for key in keys if len({_value(r, key) for r in records}) > 1]


def _value_order(records: list[TrialRecord], key: str) -> dict[str | None, int]:
    """Rank of each value of ``key``: numeric order when all are numbers, else first appearance; missing
    first."""
    present = [v for v in dict.fromkeys(_value(r, key) for r in records) if v is not None]
    if all(_is_number(v) for v in present):
        present.sort(key=float)
    return {None: -1, **{value: rank for rank, value in enumerate(present)}}


def _name_order(names: list[str], first: str) -> dict[str, int]:
    ordered = list(dict.fromkeys(names))
    if first in ordered:
        ordered.remove(first)
        ordered.insert(0, first)
    return {name: rank for rank, name in enumerate(ordered)}


def _most_common(values: Iterable[str | None]) -> str | None:
    """The most frequent value; on a tie, absent (None) if it is among the most frequent, else the first seen."""
    counts = Counter(values)
    top = max(counts.values())
    return None if counts.get(None) == top else next(v for v, c in counts.items() if c == top)


def _labels_of(records: list[TrialRecord], all_keys: list[str], name_key: str, params_section: str,
               first: str, bound_keys: Sequence[str] = ()) -> tuple[list[Label], list[Label]]:
    """Each record's defense or attack label and all distinct labels in display order; ``bound_keys`` are
    config keys outside the parameters that a label names where its record's value is not the key's most
    common one (if the key varies at all)."""
    by_name = defaultdict(list)
    for record in records:
        by_name[record.params[name_key]].append(record)
    param_keys = [k for k in all_keys if _in_section(k, params_section)]
    bound = _varying(records, [k for k in all_keys if k in bound_keys])  # the sweep ties these to the label
    varying = {name: _varying(group, param_keys) + bound for name, group in by_name.items()}
    marked = f"{params_section}.variant"  # an authors'-code variant is named even where every record has it
    for name, group in by_name.items():
        if marked not in varying[name] and any((_value(r, marked) or "").endswith(CODE_VARIANT) for r in group):
            varying[name] = [*varying[name], marked]
    usual = {k: _most_common(_value(r, k) for r in records) for k in bound}

    def shown(record: TrialRecord, key: str) -> str | None:
        value = _value(record, key)
        return None if key in usual and value == usual[key] else value  # a bound key's usual value goes unsaid

    labels = [
        Label(r.params[name_key], tuple((k, shown(r, k)) for k in varying[r.params[name_key]])) for r in records
    ]
    name_rank = _name_order([r.params[name_key] for r in records], first)
    value_rank = {key: _value_order(records, key) for keys in varying.values() for key in keys}
    order = sorted(set(labels), key=lambda label: (
        name_rank[label.name], tuple(value_rank[k][v] for k, v in label.settings)))
    return labels, order


def _short_names(keys: list[str]) -> dict[str, str]:
    """Group keys' names: β, Φ, else the last dotted component; the full key where two would coincide."""
    short = {key: SHORT_NAMES.get(key, key.rsplit(".", 1)[-1]) for key in keys}
    shared = {name for name in short.values() if list(short.values()).count(name) > 1}
    return {key: key if name in shared else name for key, name in short.items()}


def build_grid(records: list[TrialRecord], metric: str = DEFAULT_TABLE_METRIC, defense_keys: Sequence[str] = (),
               attack_keys: Sequence[str] = ()) -> Grid:
    """Infer defenses, attacks, replicates and column groups from the records (see the module docstring);
    the cells will show ``metric``; ``defense_keys`` / ``attack_keys`` are named with the defense / attack."""
    if not records:
        raise ValueError("no records to report on")
    try:
        check_table_metric(metric)
    except ValueError as err:
        raise ValueError(f"report metric {err}") from None
    all_keys = [
        key for key in dict.fromkeys(k for r in records for k in r.params)
        if key not in EXECUTION_KEYS and not key.startswith(EXECUTION_PREFIXES)
    ]
    defenses, defense_order = _labels_of(records, all_keys, DEFENSE_KEY, DEFENSE_PARAMS, BASELINE_DEFENSE,
                                         defense_keys)
    attacks, attack_order = _labels_of(records, all_keys, ATTACK_KEY, ATTACK_PARAMS, NO_ATTACK, attack_keys)
    not_group = (DEFENSE_KEY, DEFENSE_PARAMS, ATTACK_KEY, ATTACK_PARAMS, SEED_KEY, *defense_keys, *attack_keys)
    group_keys = _varying(records, [k for k in all_keys if not any(_in_section(k, s) for s in not_group)])
    value_rank = {key: _value_order(records, key) for key in group_keys}

    cells = defaultdict(list)
    for record, defense, attack in zip(records, defenses, attacks):
        group = Label("", tuple((k, _value(record, k)) for k in group_keys))
        cells[group, defense, attack].append(record)
    groups = sorted({group for group, _, _ in cells},
                    key=lambda g: tuple(value_rank[k][v] for k, v in g.settings))
    attacks_in = {g: [a for a in attack_order if any((g, d, a) in cells for d in defense_order)] for g in groups}
    short_names = {**{key: key.rsplit(".", 1)[-1] for key in all_keys}, **_short_names(group_keys)}
    return Grid(group_keys, short_names, groups, defense_order, attacks_in, dict(cells), metric)


def _render(label: Label, name_of: Callable[[str], str], escape: Callable[[str], str] = str) -> str:
    settings = ", ".join(
        f"{name_of(key)}={escape(_short_value(value))}" for key, value in label.settings if value is not None
    )
    if not label.name:
        return settings
    return f"{escape(label.name)} ({settings})" if settings else escape(label.name)


# ------------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Cell:
    mean: float  # fraction
    std: float  # population std (ddof=0) over seeds
    seeds: int
    rank: int  # dense rank in its column on the displayed value; 1 = best (the lowest for a backdoor's rate)

    def text(self, pm: str = "±") -> str:
        """``96.31 ± 0.42``; a single seed: ``96.31``."""
        mean = f"{100 * self.mean:.2f}"
        return f"{mean} {pm} {100 * self.std:.2f}" if self.seeds > 1 else mean


def _displayed(mean: float) -> float:
    return float(f"{100 * mean:.2f}")


def table_cells(grid: Grid) -> dict[tuple[Label, Label, Label], Cell]:
    """Mean, std, seed count and rank of every (group, defense, attack) cell that has a finished run."""
    cells = {}
    for group in grid.groups:
        for attack in grid.attacks[group]:
            column = {d: grid.metric_values(group, d, attack) for d in grid.defenses}
            column = {d: v for d, v in column.items() if v.size}
            distinct = sorted({_displayed(v.mean()) for v in column.values()},
                              reverse=not TABLE_METRICS[grid.metric].lower_is_better)
            for defense, values in column.items():
                rank = distinct.index(_displayed(values.mean())) + 1
                cells[group, defense, attack] = Cell(float(values.mean()), float(values.std()), values.size, rank)
    return cells


def _marked(cell: Cell | None, bold: Callable[[str], str], underline: Callable[[str], str], missing: str,
            pm: str = "±") -> str:
    """The cell's text, bold when best in its column, underlined when second."""
    if cell is None:
        return missing
    return {1: bold, 2: underline}.get(cell.rank, str)(cell.text(pm))


def _markdown(grid: Grid, cells: dict) -> str:
    """One Markdown table per column group, under a ``### β=…, Φ=…`` heading (no heading when there is a
    single unlabelled group): one wide table with many groups is hard to read in a text editor."""
    lines = [caption(grid.metric)]
    for group in grid.groups:
        attacks = grid.attacks[group]
        if group.settings:
            lines += ["", f"### {grid.text(group)}"]
        lines += [
            "",
            "| defense | " + " | ".join(_md_escape(grid.text(a)) for a in attacks) + " |",
            "| --- |" + " ---: |" * len(attacks),
        ]
        for defense in grid.defenses_in(group):
            row = [
                _marked(cells.get((group, defense, a)), "**{}**".format, "<u>{}</u>".format, MISSING)
                for a in attacks
            ]
            lines.append(f"| {_md_escape(grid.text(defense))} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def _latex(grid: Grid, cells: dict) -> str:
    """A booktabs table: a ``\\multicolumn`` header per group over its attacks, ``\\cmidrule`` under it."""
    columns = [(g, a) for g in grid.groups for a in grid.attacks[g]]
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _latex_escape(caption(grid.metric)).replace("±", r"$\pm$").replace("–", "--") + "}",
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
    ]
    if grid.group_keys:
        headers, rules, start = [], [], 2
        for group in grid.groups:
            width = len(grid.attacks[group])
            headers.append(rf"\multicolumn{{{width}}}{{c}}{{{grid.latex(group)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & " + " & ".join(headers) + r" \\", " ".join(rules)]
    lines += ["Defense & " + " & ".join(grid.latex(a) for _, a in columns) + r" \\", r"\midrule"]
    for defense in grid.defenses:
        row = [
            _marked(cells.get((g, defense, a)), r"\textbf{{{}}}".format, r"\underline{{{}}}".format, "--",
                    r"$\pm$")
            for g, a in columns
        ]
        lines.append(grid.latex(defense) + " & " + " & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, grid: Grid, cells: dict) -> None:
    """Tidy: one row per (group, defense, attack) with a finished run; group keys as dotted columns (empty
    where a record lacks the key), means and stds of the table's metric (its name in ``metric``) as
    fractions at full precision."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*grid.group_keys, "defense", "attack", "metric", "mean", "std", "seeds", "rank"])
        for group in grid.groups:
            for defense in grid.defenses:
                for attack in grid.attacks[group]:
                    if (cell := cells.get((group, defense, attack))) is not None:
                        writer.writerow([
                            *(value or "" for _, value in group.settings), grid.text(defense),
                            grid.text(attack), grid.metric, repr(cell.mean), repr(cell.std), cell.seeds, cell.rank,
                        ])


# ------------------------------------------------------------------------------------------------ plots


def agg_figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg without pyplot: nothing global (backend, figure registry) changes, and the
    figure is freed with its last reference, so there is no pyplot figure to close."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _mean_curve(records: list[TrialRecord], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and the mean over records of the metric at each round (records lacking a round skipped)."""
    rounds = np.array(sorted({step for r in records for step, _ in r.curves.get(key, [])}))
    values = np.full((len(records), rounds.size), np.nan)
    for row, record in enumerate(records):
        if record.curves.get(key):
            steps, points = np.array(record.curves[key]).T
            values[row, np.searchsorted(rounds, steps)] = points
    return rounds, np.nanmean(values, axis=0) if rounds.size else np.empty(0)


def _defense_colors(grid: Grid) -> dict[Label, tuple]:
    palette = colormaps["tab10" if len(grid.defenses) <= 10 else "tab20"]
    return {defense: palette(i % palette.N) for i, defense in enumerate(grid.defenses)}


def _accuracy_plot(path: Path, grid: Grid, group: Label) -> None:
    """One subplot per attack (at most four per row), one line per defense: test accuracy per round,
    averaged over seeds; shared y axis, one legend (the defenses with a curve in this group), one colour
    per defense across all groups."""
    attacks, colors = grid.attacks[group], _defense_colors(grid)
    ncols = min(len(attacks), 4)
    nrows = math.ceil(len(attacks) / ncols)
    figure = agg_figure(3.2 * ncols + 2.2, 2.8 * nrows + 0.4)
    axes = figure.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    drawn = set()
    for ax, attack in zip(axes, attacks):
        for defense in grid.defenses:
            records = grid.cells.get((group, defense, attack), [])
            rounds, accuracy = _mean_curve(records, "test_accuracy")
            if rounds.size:
                ax.plot(rounds, 100 * accuracy, color=colors[defense], linewidth=1.4)
                drawn.add(defense)
        ax.set_title(grid.text(attack), fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[: len(attacks) : ncols]:
        ax.set_ylabel("test accuracy (%)")
    for ax in axes[len(attacks):]:
        ax.set_visible(False)
    shown = [d for d in grid.defenses if d in drawn]
    handles = [Line2D([], [], color=colors[d], linewidth=1.4) for d in shown]
    figure.legend(handles, [grid.text(d) for d in shown], loc="outside right upper", fontsize=8)
    if group.settings:
        figure.suptitle(grid.text(group))
    figure.savefig(path)


def _heatmap(path: Path, grid: Grid, cells: dict, group: Label) -> None:
    """Defense × attack, colour and annotation = the mean of the table's metric (%); cells without a run
    grey, blank."""
    attacks, defenses = grid.attacks[group], grid.defenses_in(group)
    means = np.array([
        [100 * cells[group, d, a].mean if (group, d, a) in cells else np.nan for a in attacks]
        for d in defenses
    ])
    figure = agg_figure(1.1 * len(attacks) + 3.2, 0.45 * len(defenses) + 1.6)
    ax = figure.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(means), cmap=cmap, aspect="auto")
    for (row, col), value in np.ndenumerate(means):
        if not np.isnan(value):
            dark = image.norm(value) < 0.5
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(attacks)), [grid.text(a) for a in attacks], rotation=30, ha="right")
    ax.set_yticks(range(len(defenses)), [grid.text(d) for d in defenses])
    figure.colorbar(image, ax=ax, label=f"{grid.metric} (%)")
    if group.settings:
        ax.set_title(grid.text(group))
    figure.savefig(path)


def detection_rates(grid: Grid) -> dict[Label, tuple[float, float]]:
    """Per defense run under attack (attack not ``none``), in display order: mean detection TPR and FPR,
    pooled over all rounds of all its attacked records (a round without the metric does not count); NaN
    where none of them reports it."""
    pooled = defaultdict(lambda: {key: [] for key in DETECTION_KEYS})
    for (_, defense, attack), records in grid.cells.items():
        if attack.name != NO_ATTACK:
            for record in records:
                for key, values in pooled[defense].items():
                    values.extend(value for _, value in record.curves.get(key, []))
    return {
        defense: tuple(float(np.mean(pooled[defense][key])) if pooled[defense][key] else math.nan
                       for key in DETECTION_KEYS)
        for defense in grid.defenses if defense in pooled
    }


def _detection_plot(path: Path, grid: Grid) -> bool:
    """Grouped TPR/FPR bars per defense (:func:`detection_rates`); defenses run under attack that never
    report detection metrics are named in a note. Returns False (and writes nothing) when none reports
    them."""
    rates = detection_rates(grid)
    reporting = [d for d, pair in rates.items() if not all(math.isnan(rate) for rate in pair)]
    if not reporting:
        return False
    figure = agg_figure(1.0 * len(reporting) + 2.5, 3.4)
    ax = figure.subplots()
    x, width = np.arange(len(reporting)), 0.38
    for index, (offset, name) in enumerate(((-width / 2, "TPR"), (width / 2, "FPR"))):
        bars = ax.bar(x + offset, [rates[d][index] for d in reporting], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [grid.text(d) for d in reporting], rotation=30, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mean over rounds")
    ax.set_title("detection on attacked runs", fontsize=10)
    ax.legend(fontsize=8)
    silent = [grid.text(d) for d in rates if d not in reporting]
    if silent:
        figure.supxlabel("no detection metrics: " + ", ".join(silent), fontsize=7)
    figure.savefig(path)
    return True


# ----------------------------------------------------------------------------------------------- report


def write_report(records: list[TrialRecord], out_dir: str | Path, metric: str = DEFAULT_TABLE_METRIC,
                 defense_keys: Sequence[str] = (), attack_keys: Sequence[str] = ()) -> list[Path]:
    """Write ``table.md``, ``table.tex``, ``table.csv`` (cells: ``metric``), ``accuracy_<group>.png`` and
    ``heatmap_<group>.png`` per column group, and ``detection.png`` (only when some attacked record has
    detection metrics) into ``out_dir`` (created if needed); returns the written paths, table.md first.
    ``defense_keys`` / ``attack_keys``: config keys named with the defense / attack (the sweep file's
    ``report.defense_keys`` / ``report.attack_keys``) instead of forming column groups."""
    grid = build_grid(records, metric, defense_keys, attack_keys)
    cells = table_cells(grid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "table.md", out / "table.tex", out / "table.csv"]
    written[0].write_text(_markdown(grid, cells))
    written[1].write_text(_latex(grid, cells))
    _write_csv(written[2], grid, cells)
    slugs = _unique_slugs(grid)
    for group in grid.groups:
        accuracy, heatmap = out / f"accuracy_{slugs[group]}.png", out / f"heatmap_{slugs[group]}.png"
        _accuracy_plot(accuracy, grid, group)
        _heatmap(heatmap, grid, cells, group)
        written += [accuracy, heatmap]
    if _detection_plot(out / "detection.png", grid):
        written.append(out / "detection.png")
    return written


def _unique_slugs(grid: Grid) -> dict[Label, str]:
    """Group slugs, numbered where sanitising made two of them equal."""
    slugs = {}
    for group in grid.groups:
        slug = grid.slug(group)
        slugs[group] = slug if slug not in slugs.values() else f"{slug}_{len(slugs) + 1}"
    return slugs
