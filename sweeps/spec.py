"""A sweep file: a base experiment config and the grid to expand around it.

```yaml
name: quickstart                      # optional; default: the file's stem
description: what it reproduces and the compute it needs
base: {data: {dataset: digits}, run: {rounds: 20}}     # an experiment config, as for `byzlab run`
grid:                                 # dotted config keys -> lists of values; the product is taken
  partition.beta: [0.3, 0.5]
  threat.fraction: [0.2, 0.4]
  data.dataset, model.name: [[mnist, cnn], [cifar10, resnet18]]   # coupled keys: rows taken together
defenses:                             # aggregator -> its own parameter grid (lists are swept, scalars fixed)
  fedavg: {}
  lasa: {sparsity: [0.1, 0.3], lambda_m: [1, 2]}
attacks:                              # attack -> its parameter grid, the same way
  none: {}
  sign_flip: {scale: [4]}
seeds: [0, 1]                         # replicates (run.seed)
exclude:                              # partial assignments; trials matching one of them are dropped
  - {server.aggregator: krum, threat.fraction: 0.4}
reuse_workers: true                   # a trial borrows the Ray actors of the trial before it on its slot
report: {metric: acc_best}            # the table's metric (default acc_last5_mean; LASA reports acc_best);
                                      # defense_keys / attack_keys: keys named with the defense / attack
```

A list in a parameter grid means "sweep these values"; a parameter whose value is itself a list is written
as a list of lists. A value may also be a distribution (``{uniform: [0.5, 3]}``), searched with the
``search:`` section instead of swept (sweeps/search.py). Every expanded trial is validated as an experiment
config before anything runs; a searched parameter at each end of its distribution.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from byzlab.orchestrator.config import (
    ExperimentConfig,
    build_config,
    format_validation_error,
    read_yaml,
    run_id,
    set_dotted,
)
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.sweeps.search import UNSEARCHABLE_PREFIXES, Distribution, SearchSpec, as_distribution, search_variable

PACKAGED_SWEEPS = Path(__file__).parent
SPEC_FILE = "sweep.yaml"  # the validated sweep file, kept in the sweep's directory
_DEFENSE_KEYS = ("server.aggregator", "server.aggregator_params.")
_ATTACK_KEYS = ("threat.attack", "threat.attack_params.")
_ATTACK_SCHEDULE = ("threat.start_round", "threat.every")  # searched by worst_attack besides the attacks' own
SHORT_NAMES = {"partition.beta": "β", "threat.fraction": "Φ"}


class TableMetric(NamedTuple):
    """What a report's table can show: the quantity, which evaluations it summarises, which way is better."""

    quantity: str
    of: str
    lower_is_better: bool = False


TABLE_METRICS = {
    "acc_last5_mean": TableMetric("Test accuracy", "the mean of the last five evaluations"),
    "acc_best": TableMetric("Test accuracy", "the best evaluation"),
    "acc_final": TableMetric("Test accuracy", "the last evaluation"),
    # backdoor tables (the residual and PAwBRoFL papers): the attack's success, lower is better for a defense
    "backdoor_asr": TableMetric("Backdoor success rate", "the mean of the last five evaluations", lower_is_better=True),
}
DEFAULT_TABLE_METRIC = "acc_last5_mean"  # SDEA's; LASA reports acc_best


def check_table_metric(metric: str) -> str:
    """``metric`` when a table can show it; a ValueError naming the allowed ones otherwise."""
    if metric not in TABLE_METRICS:
        raise ValueError(f"'{metric}' is not one of: {', '.join(TABLE_METRICS)}")
    return metric


class ReportSpec(BaseModel):
    """The ``report:`` section: what the sweep's table shows, as the paper it reproduces reports it."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(DEFAULT_TABLE_METRIC, description="the table's metric: " + ", ".join(TABLE_METRICS))
    defense_keys: list[str] = Field(default_factory=list, description="config keys the sweep ties to the defense "
                                    "(exclude), named in the defense's label instead of forming column groups")
    attack_keys: list[str] = Field(default_factory=list, description="config keys the sweep ties to the attack, "
                                   "named in the attack's label instead of forming column groups")

    _metric = field_validator("metric")(check_table_metric)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the sweep's name (its directory)")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="the experiment config every trial starts from")
    grid: dict[str, list[Any] | dict[str, Any]] = Field(
        default_factory=dict, description="dotted key -> values, or a distribution to search")
    defenses: dict[str, dict[str, Any]] | None = Field(None, description="aggregator -> parameter grid")
    attacks: dict[str, dict[str, Any]] | None = Field(None, description="attack -> parameter grid")
    seeds: list[int] | None = Field(None, min_length=1, description="run.seed values")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="partial assignments to drop")
    reuse_workers: bool = Field(True, description="a trial borrows the trainable process and the client and server "
                                "actors of the trial before it on its slot (false: three new processes per trial)")
    report: ReportSpec = Field(default_factory=ReportSpec, description="what the report's table shows")
    search: SearchSpec | None = Field(None, description="how distributions are searched (sweeps/search.py)")
    objective: Literal["worst_attack"] | None = Field(
        None, description="worst_attack: search each attack's parameters for the defense's lowest accuracy "
        "(a backdoor's highest success rate)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any] | dict[str, Any]]) -> dict[str, list[Any] | dict[str, Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"'{key}' has no values")
            parts = coupled_keys(key)
            if "run.seed" in parts:
                raise ValueError("'run.seed' is swept with the top-level `seeds` list")
            if len(parts) > 1 and not (isinstance(values, list) and all(
                    isinstance(row, list) and len(row) == len(parts) for row in values)):
                raise ValueError(f"'{key}': coupled keys take a list of rows, each a list of {len(parts)} values "
                                 f"(one per key), got {values!r}")
            if isinstance(values, dict) and as_distribution(values, key) is None:
                raise ValueError(f"'{key}': a list of values or a distribution ({{uniform: [low, high]}}, loguniform, "
                                 f"randint, choice), got {values!r}")
        return grid

    @field_validator("defenses", "attacks")
    @classmethod
    def _not_empty(cls, variants: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        if variants is not None and not variants:
            raise ValueError("lists no entry; leave it out to keep the base config's choice")
        for name, params in (variants or {}).items():
            for key, values in (params or {}).items():
                if values == []:
                    raise ValueError(f"'{name}.{key}' has no values")
                as_distribution(values, f"{name}.{key}")  # a malformed distribution is an error here
        return variants


@dataclass(frozen=True)
class Searched:
    """A parameter a trial searches: its dotted config key, distribution and default value."""

    key: str
    distribution: Distribution
    default: Any


@dataclass(frozen=True)
class Trial:
    index: int
    overrides: dict[str, Any]  # dotted key -> value: what distinguishes this trial from the base
    labels: dict[str, str]  # short description for tables and the live view: defense, attack, seed, ...
    config: ExperimentConfig  # with searched parameters: at their defaults
    searched: dict[str, Searched] = field(default_factory=dict)  # Tune variable -> the parameter it sets

    @property
    def run_id(self) -> str:
        return run_id(self.config)


@dataclass(frozen=True)
class Sweep:
    spec: SweepSpec
    trials: list[Trial]

    @property
    def searching(self) -> bool:
        return any(trial.searched for trial in self.trials)


def coupled_keys(key: str) -> list[str]:
    """The dotted keys a grid entry sets: ``"data.dataset, model.name"`` couples two, whose values are rows
    ``[[mnist, cnn], [cifar10, resnet18]]`` taken together; any other key is one key."""
    return [part.strip() for part in key.split(",")]


def grid_keys(spec: SweepSpec) -> list[str]:
    """Every dotted key the sweep's grid sets, coupled ones included."""
    return [part for key in spec.grid for part in coupled_keys(key)]


def _product(grid: dict[str, list[Any] | dict[str, Any]], where: str = "grid") -> list[dict[str, Any]]:
    """Every combination of the listed values (a row of coupled keys counts as one value); a distribution
    stays one value (a Distribution), searched."""
    columns = []
    for key, values in grid.items():
        parts = coupled_keys(key)
        if len(parts) > 1:
            columns.append([dict(zip(parts, row)) for row in values])
            continue
        distribution = as_distribution(values, f"{where}.{key}")
        columns.append([{key: value} for value in ([distribution] if distribution else values)])
    return [{k: v for chosen in combination for k, v in chosen.items()} for combination in itertools.product(*columns)]


def _variants(name_key: str, params_key: str, spec: dict[str, dict[str, Any]]) -> list[tuple[dict, str]]:
    """Each (name, parameter combination) as overrides, with a label naming the swept parameters. The
    block's parameters replace the base's (parameters meant for the base's rule would not fit another)."""
    variants = []
    for name, params in spec.items():
        grid = {k: v if isinstance(v, list) or as_distribution(v, f"{name}.{k}") else [v]
                for k, v in (params or {}).items()}
        swept = [k for k, values in grid.items() if isinstance(values, list) and len(values) > 1]
        for combo in _product(grid, name):
            overrides = {name_key: name, params_key: {}, **{f"{params_key}.{k}": v for k, v in combo.items()}}
            label = name + (f" ({', '.join(f'{k}={combo[k]}' for k in swept)})" if swept else "")
            variants.append((overrides, label))
    return variants


def _check_keys(spec: SweepSpec) -> None:
    for block, prefixes in (("defenses", _DEFENSE_KEYS), ("attacks", _ATTACK_KEYS)):
        if getattr(spec, block) is None:
            continue
        for key in grid_keys(spec):
            if key.startswith(prefixes):
                raise ConfigError(f"grid.{key}: set by the `{block}` block; sweep it there")
    for block in ("defense_keys", "attack_keys"):
        for key in getattr(spec.report, block):
            if key not in grid_keys(spec):
                raise ConfigError(f"report.{block}: '{key}' is not a grid key of this sweep "
                                  f"(grid: {', '.join(grid_keys(spec)) or 'none'})")


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def _candidates(spec: SweepSpec, base: ExperimentConfig) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Every (overrides, labels) of the sweep, in order: grid point, then attack, then defense, then seed."""
    defenses = _variants("server.aggregator", "server.aggregator_params", spec.defenses) if spec.defenses else [
        ({}, None)
    ]
    attack_variants = _variants("threat.attack", "threat.attack_params", spec.attacks) if spec.attacks else [
        ({}, None)
    ]
    seeds = spec.seeds or [base.run.seed]
    # A grid that sweeps the aggregator or the attack itself names them in the defense / attack labels.
    named_elsewhere = {"server.aggregator", "threat.attack"}
    # A row of coupled keys is labelled by its first key (data.dataset names the row of a dataset's setting).
    swept_grid_keys = [coupled_keys(k)[0] for k, values in spec.grid.items()
                       if len(values) > 1 and coupled_keys(k)[0] not in named_elsewhere]

    candidates = []
    for point in _product(spec.grid):
        for (attack, attack_label), (defense, defense_label), seed in itertools.product(
            attack_variants, defenses, seeds
        ):
            overrides = {**point, **attack, **defense, "run.seed": seed}
            labels = {
                **{SHORT_NAMES.get(k, k.rsplit(".", 1)[-1]): str(point[k]) for k in swept_grid_keys},
                "attack": attack_label or str(point.get("threat.attack", base.threat.attack)),
                "defense": defense_label or str(point.get("server.aggregator", base.server.aggregator)),
                "seed": str(seed),
            }
            candidates.append((overrides, labels))
    return candidates


def _exclude(spec: SweepSpec, candidates: list[tuple[dict[str, Any], dict[str, str]]]):
    """The candidates that match no `exclude` assignment; an assignment naming a key no trial sets is an error."""
    for position, assignment in enumerate(spec.exclude):
        unknown = [k for k in assignment if not any(k in overrides for overrides, _ in candidates)]
        if unknown:
            raise ConfigError(f"exclude[{position}]: '{unknown[0]}' is not a key this sweep sets")
    kept = [
        (overrides, labels)
        for overrides, labels in candidates
        if not any(all(overrides.get(k) == v for k, v in a.items()) for a in spec.exclude)
    ]
    if not kept:
        raise ConfigError("the sweep has no trials left after `exclude`")
    return kept


def drop_stale_excludes(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw sweep dict cut to fewer defenses or attacks (a benchmark's reduced row), without the `exclude`
    entries that can no longer match: those naming a removed defense or attack, or a parameter no remaining
    one sets (expansion would reject them as keys the sweep does not set)."""
    names = {_DEFENSE_KEYS[0]: set(raw.get("defenses") or ()), _ATTACK_KEYS[0]: set(raw.get("attacks") or ())}
    params = {f"{prefix}{key}" for block, prefix in (("defenses", _DEFENSE_KEYS[1]), ("attacks", _ATTACK_KEYS[1]))
              for grid in (raw.get(block) or {}).values() for key in (grid or {})}

    def applies(entry: dict[str, Any]) -> bool:
        return all((key not in names or not names[key] or value in names[key])
                   and (not key.startswith((_DEFENSE_KEYS[1], _ATTACK_KEYS[1])) or key in params)
                   for key, value in entry.items())

    return {**raw, "exclude": [entry for entry in raw.get("exclude") or [] if applies(entry)]}


def read_dotted(tree: dict[str, Any], key: str) -> Any:
    """``read_dotted(tree, "partition.beta")`` is ``tree["partition"]["beta"]`` (None where a section lacks it)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _search_owner(spec: SweepSpec, key: str, overrides: dict[str, Any]) -> str | None:
    """The defense or attack whose block a searched key comes from (None: the grid's)."""
    if key in grid_keys(spec):
        return None
    return overrides["server.aggregator"] if key.startswith(_DEFENSE_KEYS[1]) else overrides["threat.attack"]


def _build(spec: SweepSpec, overrides: dict[str, Any]) -> ExperimentConfig:
    tree = json.loads(json.dumps(spec.base))
    for key, value in overrides.items():
        set_dotted(tree, key, copy.deepcopy(value))  # later keys may fill a section this one sets
    return build_config(tree)


def _searched_trial(spec: SweepSpec, index: int, overrides: dict[str, Any], labels: dict[str, str]) -> Trial:
    """A trial with searched parameters: its config is the one without them (their defaults), validated
    besides with each parameter at both ends of its distribution (the others at their low end)."""
    fixed = {k: v for k, v in overrides.items() if not isinstance(v, Distribution)}
    searched = {k: v for k, v in overrides.items() if isinstance(v, Distribution)}
    config = _build(spec, fixed)  # the searched parameters at their defaults: what a sample starts from
    defaults = config.to_dict()
    low = {k: d.extremes()[0] for k, d in searched.items()}
    for key, distribution in searched.items():
        for value in distribution.extremes():
            try:
                _build(spec, {**fixed, **low, key: value})
            except ConfigError as err:
                raise ConfigError(f"{key}={value!r}, in its distribution {distribution}: {err}") from None
    variables = {
        search_variable(key, _search_owner(spec, key, overrides)): Searched(key, distribution, read_dotted(defaults, key))
        for key, distribution in searched.items()
    }
    return Trial(index, overrides, labels, config, variables)


def _check_search(spec: SweepSpec, trials: list[Trial]) -> None:
    """The search section and the distributions fit together; one clear line otherwise."""
    keys = {s.key: name for trial in trials for name, s in trial.searched.items()}
    if keys and spec.search is None:
        raise ConfigError(f"'{next(iter(keys))}' is a distribution: add a `search:` section (num_samples, algorithm) "
                          "to search it, or give a list of values to sweep")
    if spec.search is None:
        if spec.objective:
            raise ConfigError(f"objective {spec.objective}: needs a `search:` section and attack parameters to search")
        return
    if not keys:
        raise ConfigError("search: no value of the sweep is a distribution ({uniform: [low, high]}, loguniform, "
                          "randint, choice): nothing to search")
    for key in keys:
        if key.startswith(UNSEARCHABLE_PREFIXES):
            raise ConfigError(f"'{key}': run.*, data.* and tracking.* keys are not searched (they fix the execution "
                              "and the data a sweep loads once); list their values instead")
    try:
        check_table_metric(spec.search.metric or spec.report.metric)
    except ValueError as err:
        raise ConfigError(f"search.metric: {err}") from None
    if spec.objective == "worst_attack":
        outside = [key for key in keys
                   if not (key.startswith(_ATTACK_KEYS[1]) and key not in grid_keys(spec))
                   and key not in _ATTACK_SCHEDULE]
        if outside or spec.attacks is None:
            raise ConfigError("objective worst_attack searches the parameters of the `attacks` block and the "
                              "attack's schedule (grid keys threat.start_round, threat.every) only"
                              + (f"; '{outside[0]}' is not one" if outside else ""))
    if spec.search.algorithm != "random" and len(trials) > 1:
        raise ConfigError(
            f"search.algorithm {spec.search.algorithm}: a model-based searcher searches one setting, and this sweep "
            f"has {len(trials)} (grid points x defenses x attacks x seeds); use algorithm random, or one sweep per "
            "setting")


def expand(spec: SweepSpec) -> Sweep:
    """All trials of the sweep, in order (grid point, then attack, then defense, then seed), each one
    validated; raises ConfigError naming the first invalid trial and how many there are. A trial with
    distributions stands for the samples a search draws from it."""
    _check_keys(spec)
    kept = _exclude(spec, _candidates(spec, build_config(spec.base)))
    trials, invalid, seen = [], [], {}
    for index, (overrides, labels) in enumerate(kept):
        try:
            if any(isinstance(v, Distribution) for v in overrides.values()):
                trial = _searched_trial(spec, index, overrides, labels)
            else:
                trial = Trial(index, overrides, labels, _build(spec, overrides))
        except ConfigError as err:
            invalid.append(f"trial {index} ({_describe(overrides)}): {err}")
            continue
        if trial.run_id in seen:
            raise ConfigError(
                f"trials {seen[trial.run_id]} and {index} are the same experiment ({_describe(overrides)}); "
                "remove the duplicate value"
            )
        seen[trial.run_id] = index
        trials.append(trial)
    if invalid:
        remedy = "" if len(invalid) == len(kept) else " (drop invalid combinations with `exclude`)"
        raise ConfigError(f"{len(invalid)} of {len(kept)} trials are invalid{remedy}; first: {invalid[0]}")
    _check_search(spec, trials)
    return Sweep(spec, trials)


def resolve_path(path_or_name: str | Path) -> Path:
    """A sweep file path, or the name of a ready sweep shipped in this package (``quickstart``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    packaged = PACKAGED_SWEEPS / f"{path.name}.yaml"
    if path.name == str(path_or_name) and packaged.is_file():
        return packaged
    ready = ", ".join(sorted(p.stem for p in PACKAGED_SWEEPS.glob("*.yaml")))
    raise ConfigError(f"sweep file '{path_or_name}' does not exist (ready sweeps: {ready})")


def parse_spec(raw: dict[str, Any], default_name: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate({"name": default_name, **raw})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_sweep(path_or_name: str | Path) -> Sweep:
    path = resolve_path(path_or_name)
    return expand(parse_spec(read_yaml(path), path.stem))


def load_saved_sweep(directory: str | Path) -> Sweep:
    """The sweep whose directory this is, from the copy of its sweep file kept there."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"'{path}' is missing")
    raw = read_yaml(path)
    return expand(parse_spec(raw, raw.get("name", Path(directory).name)))
