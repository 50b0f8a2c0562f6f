"""Search spaces in sweep files, and the Tune searchers and schedulers that explore them.

A value of the ``grid``, ``defenses`` or ``attacks`` blocks may be a distribution instead of a list:

```yaml
defenses:
  lasa: {lambda_m: {uniform: [0.5, 3]}, sparsity: {uniform: [0.1, 0.9]}}
attacks:
  lie: {z: {loguniform: [0.1, 10]}}
search:
  num_samples: 8            # samples per grid point (random) or in all (a model-based searcher)
  algorithm: random         # random (Tune's BasicVariantGenerator) or a Tune searcher: optuna, hyperopt, ...
  metric: acc_last5_mean    # what the search optimises: a table metric (default: the report's)
  mode: max                 # default: max, min for metrics where lower is better
  scheduler: {name: asha, metric: test_accuracy, grace_period: 5, reduction_factor: 2}
objective: worst_attack     # search the attacks' parameters for the lowest accuracy (the highest backdoor rate)
```

Distributions map onto Ray Tune's search-space API, nothing sampled by hand: ``{uniform: [a, b]}`` is
``tune.uniform(a, b)``, ``{loguniform: [a, b]}`` ``tune.loguniform(a, b)``, ``{randint: [a, b]}``
``tune.randint(a, b)`` (a <= value < b, as Tune's), ``{choice: [v, ...]}`` ``tune.choice([v, ...])``.

Every searched setting also runs with the searched parameters at their defaults (the value the config has
without them: a rule's or attack's default, the base config's), as the search's first point (Tune's
``points_to_evaluate``), so the report can say how much the search found over the default. A model-based
searcher gets that point only where every default lies in its distribution.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import tune

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
RANDOM = "random"
SEARCH_METRIC = "search_metric"
SEARCH_DEFAULTS = "search_defaults"  # set in a random search's first point: the trial runs the defaults  # what every round of a search's trial reports: its metric over the rounds so far
UNSEARCHABLE_PREFIXES = ("run.", "data.", "tracking.")  # execution, placement and the data loaded once per sweep


@dataclass(frozen=True)
class Distribution:
    """One searched parameter's distribution, as written in the sweep file."""

    kind: str
    args: tuple[Any, ...]

    def domain(self) -> Any:
        """The Tune search-space object."""
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](*self.args)

    def extremes(self) -> list[Any]:
        """Values spanning the distribution, each validated as a config before anything runs."""
        if self.kind == "choice":
            return list(self.args)
        low, high = self.args
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        low, high = self.args
        return low <= value < high if self.kind == "randint" else low <= value <= high

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.args))})"


def as_distribution(value: Any, where: str) -> Distribution | None:
    """The distribution ``value`` writes (``{uniform: [0.5, 3]}``), None for any other value; ValueError
    naming ``where`` and the allowed forms for a malformed one."""
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        return None
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: choice needs a non-empty list of values, got {args!r}")
        return Distribution(kind, tuple(args))
    numbers = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    if not numbers:
        raise ValueError(f"{where}: {kind} needs [low, high], two finite numbers, got {args!r}")
    low, high = args
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError(f"{where}: randint needs two integers [low, high) , got {args!r}")
    if not low < high:
        raise ValueError(f"{where}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs 0 < low < high, got {args!r}")
    return Distribution(kind, (low, high))


class SchedulerSpec(BaseModel):
    """``search.scheduler``: early stopping of trials that fall behind (Tune's ASHAScheduler)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["asha"] = Field("asha", description="asha: asynchronous successive halving")
    metric: str = Field("test_accuracy", description="the per-round metric it compares trials on")
    mode: Literal["max", "min"] = Field("max", description="max for accuracies, min for losses and backdoor rates")
    grace_period: int = Field(1, ge=1, description="rounds every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="1 / the share of trials kept at each rung")


class SearchSpec(BaseModel):
    """The ``search:`` section of a sweep file."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(ge=1, description="samples per grid point (random search) or in all (model-based)")
    algorithm: str = Field(RANDOM, description="random, or a Tune searcher name (optuna, hyperopt, bayesopt, ...)")
    metric: str | None = Field(None, description="what the search optimises (a table metric; default: the report's)")
    mode: Literal["max", "min"] | None = Field(None, description="default: max (min where lower is better)")
    seed: int = Field(0, ge=0, description="the searcher's seed")
    scheduler: SchedulerSpec | None = Field(None, description="early stopping (ASHA); none: every trial runs out")

    @field_validator("algorithm")
    @classmethod
    def _known(cls, algorithm: str) -> str:
        from ray.tune.search import SEARCH_ALG_IMPORT

        known = [RANDOM, *sorted(set(SEARCH_ALG_IMPORT) - {"variant_generator", "random"})]
        if algorithm not in known:
            raise ValueError(f"'{algorithm}' is not one of: {', '.join(known)}")
        return algorithm


def is_backdoor(attack: str) -> bool:
    """Whether the attack plants a backdoor (its success rate is measured): a worst-case search maximises that
    rate for it, where it minimises the accuracy for the others."""
    from byzlab.attacks import registry
    from byzlab.attacks.base import DataAttack

    cls = registry.attack_class(attack)
    return issubclass(cls, DataAttack) and cls.triggered_test_set is not DataAttack.triggered_test_set


def search_variable(key: str, owner: str | None) -> str:
    """The name of a searched key in Tune's space: the dotted key, with the defense or attack it belongs to
    (two rules may both have a parameter of that name, with their own distributions)."""
    return key if owner is None else f"{owner}:{key}"  # not "/": Tune's separator of nested keys


def searcher(spec: SearchSpec, metric: str, mode: str, points: list[dict[str, Any]],
             max_concurrent: int | None = None) -> Any:
    """Tune's search algorithm for the sweep; ValueError with the install hint when it is not installed.
    ``max_concurrent``: Tune applies its own limit to a Searcher but not to the variant generator, which takes
    it here."""
    from ray.tune.search import BasicVariantGenerator, create_searcher

    if spec.algorithm == RANDOM:
        return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.seed,
                                     max_concurrent=max_concurrent or 0)
    options = {"metric": metric, "mode": mode, "points_to_evaluate": points or None}
    seed_option = {"optuna": "seed", "hyperopt": "random_state_seed"}.get(spec.algorithm)  # the others: no seed
    if seed_option:
        options[seed_option] = spec.seed
    try:
        return create_searcher(spec.algorithm, **options)
    except (ImportError, AssertionError) as err:
        raise ValueError(f"search.algorithm '{spec.algorithm}' needs its package: {str(err).splitlines()[0]}") from None


def scheduler(spec: SearchSpec, rounds: int) -> Any | None:
    """ASHA over rounds (the trials' ``round``), or None."""
    if spec.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(time_attr="round", metric=s.metric, mode=s.mode, max_t=rounds,
                         grace_period=min(s.grace_period, rounds), reduction_factor=s.reduction_factor)


class RunningObjective:
    """The search metric over the rounds so far, reported with every round so that a searcher has it even
    for a trial a scheduler stops before its summary: the accuracy summaries as the run computes them
    (``orchestrator.run.experiment.summarize``), ``backdoor_asr`` as the report does (the mean of the last five
    evaluations)."""

    def __init__(self, metric: str, earlier_rows: list[dict[str, Any]] = ()) -> None:
        self.metric = metric
        self._key = "backdoor_asr" if metric == "backdoor_asr" else "test_accuracy"
        self._values: list[float] = []
        for row in earlier_rows:
            self.add(row)

    def add(self, row: dict[str, Any]) -> float | None:
        """Take one round's metrics; the objective so far (None before the first evaluation)."""
        if row.get(self._key) is not None:
            self._values.append(float(row[self._key]))
        if not self._values:
            return None
        if self.metric == "acc_best":
            return max(self._values)
        if self.metric == "acc_final":
            return self._values[-1]
        return statistics.fmean(self._values[-5:])  # acc_last5_mean, backdoor_asr
