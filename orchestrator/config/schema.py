"""The experiment configuration's schema (pydantic) and the run id derived from it.

The schema's defaults are the built-in quickstart (digits, 10 clients, Dirichlet beta = 0.5, FedAvg, 20
rounds). Every error is reported as one line naming the field and what it allows, before anything runs.

The classes are built from the registries when this module is imported, after the installed entry-point
plug-ins joined them; a config naming a plug-in by import path is validated with
:func:`experiment_schema`, the same schema extended with the components admitted since
(docs/architecture.md, "Plug-ins").
"""

from __future__ import annotations

import hashlib
import json
import math
import types
from copy import copy
from typing import Annotated, Any, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from byzlab import aggregators
from byzlab import attacks
from byzlab.orchestrator.core.registry import Registry
from byzlab.orchestrator.data.datasets import DATASETS, dataset_names, default_model
from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
from byzlab.orchestrator.learning.models import MODELS
from byzlab.orchestrator.learning.server_optimizers import SERVER_OPTIMIZERS
from byzlab.orchestrator.config import plugins

plugins.install()  # entry-point plug-ins join the registries before the classes below are built from them


def _takes_number(annotation: Any) -> bool:
    """Whether a field's annotation is a number (int or float, optional or constrained), not a bool."""
    if get_origin(annotation) is Annotated:
        return _takes_number(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_takes_number(arg) for arg in get_args(annotation))
    return annotation in (int, float)


class _Section(BaseModel):
    """Every section: unknown keys, NaN and infinite numbers are errors, and so is a bool where a number
    goes (pydantic would read ``true`` as 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _takes_number(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value

    @classmethod
    def known_keys(cls, given: Any) -> list[str]:
        """The keys this section takes, for an error about an unknown one (``given``: the section as written)."""
        return list(cls.model_fields)


def _finite(field: str, value: Any) -> None:
    """ValueError naming ``field`` when ``value`` (a parameter dict, a list of them) holds NaN or an infinity:
    the parameters validated by a component's own schema, which may allow them."""
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(f"{field}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(f"{field}[{i}]", item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number (got {value})")


def _validated_params(registry: Registry, name: str, params: dict[str, Any], field: str) -> dict[str, Any]:
    """The component's parameters validated by its schema, defaults filled in: an unknown one is answered with
    those it takes, and a NaN or infinite one is refused whatever its schema allows."""
    own = registry.get(name).Params.model_fields
    unknown = [key for key in params if key not in own]
    if unknown:
        raise ValueError(f"{registry.what} '{name}' parameter '{unknown[0]}': Extra inputs are not permitted "
                         f"(it takes: {', '.join(own) or 'none'})")
    try:
        validated = registry.validate_params(name, params).model_dump()
    except ValueError as err:
        raise ValueError(str(err).replace("Value error, ", "")) from None
    _finite(field, validated)
    return validated


def _parameter_fields(registry: Registry, *, keep_defaults: bool) -> dict[str, Any]:
    """Every parameter of the registry's entries as a flat config field (``create_model`` form), so that a
    component's parameters sit beside its name (``partition.beta``) and a new component adds its own keys
    by being registered. With ``keep_defaults`` a field holds its entry's default (it is always part of
    the resolved config); otherwise it is None until the chosen component fills in its defaults.
    Components sharing a parameter name must agree on its type."""
    collected: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    for name in registry.names():
        for param, info in registry.get(name).Params.model_fields.items():
            if param in collected and collected[param].annotation != info.annotation:
                raise TypeError(f"{registry.what} parameter '{param}' has two types ({', '.join(owners[param])}, {name})")
            collected.setdefault(param, info)
            owners.setdefault(param, []).append(name)
    fields = {}
    for param, info in collected.items():
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        description = f"{', '.join(owners[param])} only: {info.description}"
        if keep_defaults and param in _recorded_parameters(registry):
            fields[param] = (annotation, Field(info.default, description=description))
        else:
            fields[param] = (Optional[annotation], Field(None, description=description))
    return fields


def _recorded_parameters(registry: Registry) -> set[str]:
    """Parameters of the entries registered with ``record_defaults`` (the default): their defaults are always
    in the resolved config. An entry registered with ``record_defaults=False`` adds keys that stay out of it
    while they hold their defaults, so adding it changes no existing run id."""
    return {param for name in registry.names() if getattr(registry.get(name), "record_defaults", True)
            for param in registry.get(name).Params.model_fields}


class _ComponentSection(_Section):
    """A section naming a registered component (``name_field``) with the component's parameters as flat
    keys beside it: a parameter of another component is an error (a sweep over ``partition.beta`` cannot
    run an IID grid by mistake), and the chosen component's defaults are filled in."""

    registry: ClassVar[Registry]
    name_field: ClassVar[str]
    label: ClassVar[str]  # how messages call the component: "scheme", "model"
    # Whether the chosen component's defaults are written into the resolved config (and so into the run
    # id), or left out so that a parameter added later with a default changes no existing run id.
    record_defaults: ClassVar[bool] = True

    def fill_parameters(self) -> None:
        name = getattr(self, self.name_field)
        own = self.registry.get(name).Params.model_fields
        for param in type(self).model_fields:
            if param != self.name_field and param not in own and getattr(self, param) is not None:
                raise ValueError(
                    f"'{param}' is not a parameter of {self.label} '{name}' (it takes: {', '.join(own) or 'none'})"
                )
        given = {param: getattr(self, param) for param in own if getattr(self, param) is not None}
        for param, value in self.registry.validate_params(name, given).model_dump().items():
            recorded = self.record_defaults or value != own[param].get_default(call_default_factory=True)
            setattr(self, param, value if recorded else None)

    @classmethod
    def known_keys(cls, given: Any) -> list[str]:
        """The name key and the parameters of the component the section names (all of them when it names
        none, or auto)."""
        default = cls.model_fields[cls.name_field].default
        name = given.get(cls.name_field, default) if isinstance(given, dict) else default
        if not isinstance(name, str) or name not in cls.registry.names():
            return list(cls.model_fields)
        return [cls.name_field, *cls.registry.get(name).Params.model_fields]

    def parameters(self) -> dict[str, Any]:
        """The chosen component's parameters, by name (the values given; the component fills in the rest)."""
        own = self.registry.get(getattr(self, self.name_field)).Params.model_fields
        return {param: getattr(self, param) for param in own if getattr(self, param) is not None}


class _DataSection(_Section):
    """The clients' dataset. Dataset parameters (``byzlab list datasets``) are flat keys of this section.
    The image datasets' parameters keep their defaults in the resolved config whichever dataset is chosen,
    so run ids stay those of earlier versions; the parameters of a dataset registered with
    ``record_defaults=False`` (csv) are an error with another dataset and stay out of the resolved config
    while they hold their defaults."""

    dataset: Literal[tuple(DATASETS.names())] = Field("digits", description="training and test data (byzlab list datasets)")
    data_root: str | None = Field(None, description="where torchvision-format files live (default ~/.cache/byzlab/data)")
    download: bool = Field(False, description="let torchvision download a missing dataset")

    @model_validator(mode="after")
    def _dataset_parameters(self) -> _DataSection:
        own = DATASETS.get(self.dataset).Params.model_fields
        recorded = _recorded_parameters(DATASETS)
        for param in type(self).model_fields:
            if param not in _DataSection.model_fields and param not in {*own, *recorded} and getattr(self, param) is not None:
                raise ValueError(f"'{param}' is not a parameter of dataset '{self.dataset}' (it takes: {', '.join(own) or 'none'})")
        given = {param: getattr(self, param) for param in own if getattr(self, param) is not None}
        for param, value in DATASETS.validate_params(self.dataset, given).model_dump().items():
            keep = param in recorded or value != own[param].get_default(call_default_factory=True)
            setattr(self, param, value if keep else None)
        return self

    @classmethod
    def known_keys(cls, given: Any) -> list[str]:
        """The section's own keys and the parameters of the dataset it names (digits when none)."""
        name = given.get("dataset", "digits") if isinstance(given, dict) else "digits"
        if not isinstance(name, str) or name not in DATASETS.names():
            return list(cls.model_fields)
        return [*_DataSection.model_fields, *DATASETS.get(name).Params.model_fields]

    def parameters(self) -> dict[str, Any]:
        """The chosen dataset's parameters that are set, by name (the loader fills in the rest)."""
        own = DATASETS.get(self.dataset).Params.model_fields
        return {param: getattr(self, param) for param in own if getattr(self, param) is not None}


DataConfig = create_model("DataConfig", __base__=_DataSection, **_parameter_fields(DATASETS, keep_defaults=True))


class _PartitionSection(_ComponentSection):
    registry, name_field, label = PARTITION_SCHEMES, "scheme", "scheme"
    scheme: Literal[tuple(PARTITION_SCHEMES.names())] = Field(
        "dirichlet", description="how training data is split over clients (byzlab list partitions)"
    )

    @model_validator(mode="after")
    def _scheme_parameters(self) -> _PartitionSection:
        self.fill_parameters()
        return self


PartitionConfig = create_model(
    "PartitionConfig", __base__=_PartitionSection, **_parameter_fields(PARTITION_SCHEMES, keep_defaults=False)
)


class _ModelSection(_ComponentSection):
    """The model; its parameters are filled in once ``auto`` is resolved (ExperimentConfig)."""

    registry, name_field, label, record_defaults = MODELS, "name", "model", False
    name: Literal[("auto", *MODELS.names())] = Field("auto", description="architecture; auto = the dataset's default")


ModelConfig = create_model("ModelConfig", __base__=_ModelSection, **_parameter_fields(MODELS, keep_defaults=False))


class ClientsConfig(_Section):
    num_clients: int = Field(10, ge=1, description="population size N")
    clients_per_round: int | None = Field(None, ge=1, description="clients sampled per round (default: all)")
    local_epochs: int = Field(2, ge=1, description="local passes over the client's data")
    local_steps: int | None = Field(None, ge=1, description="fixed number of local SGD steps (overrides epochs)")
    batch_size: int = Field(32, ge=1, description="local minibatch size")
    lr: float = Field(0.05, gt=0, description="local SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="local SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="local SGD weight decay")
    prox_mu: float = Field(0.0, ge=0, description="FedProx proximal coefficient mu (0 = plain local SGD)")
    # Left out of the resolved config while 1 (no decay): earlier configs keep their run ids.
    lr_decay: float = Field(1.0, gt=0, le=1, exclude_if=lambda decay: decay == 1.0,
                            description="local lr of round r = lr * lr_decay^(r-1) (LASA: 0.99, Shakespeare 0.999)")
    update_clip: float | None = Field(
        None, gt=0, exclude_if=lambda clip: clip is None,
        description="every client scales its update to L2 norm <= this before sending it, so attackers craft from "
        "clipped updates too (the LASA authors' engine for FedAvg, TrMean, GeoMed, SparseFed, Krum, Bulyan off "
        "CIFAR); None = no clipping",
    )

    @model_validator(mode="after")
    def _sampling(self) -> ClientsConfig:
        if self.clients_per_round is None:
            self.clients_per_round = self.num_clients
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be at most num_clients ({self.num_clients})"
            )
        return self


class ProxyDataConfig(_Section):
    source: Literal[("holdout", *dataset_names("image"))] = Field(
        "holdout", description="holdout = a slice of the training data, or another dataset (same label space)"
    )
    size: int = Field(100, ge=1, description="labeled samples the server holds")


class PublicDataConfig(_Section):
    source: Literal[("sample_patches", *dataset_names("image"))] = Field(
        "sample_patches", description="unlabeled images: patches of scikit-learn's sample photos, or a dataset"
    )
    size: int = Field(2000, ge=1, description="public images the server holds")


class ServerConfig(_Section):
    aggregator: str = Field("fedavg", description="aggregation rule (byzlab list aggregators)")
    aggregator_params: dict[str, Any] = Field(default_factory=dict, description="the rule's parameters")
    lr: float = Field(1.0, gt=0, description="server learning rate eta of the server optimizer")
    momentum: float = Field(0.0, ge=0, lt=1, description="server momentum (fedavgm); 0 = plain update")
    # The two optimizer fields are left out of the resolved config (and so of the run id) while they hold
    # their defaults: configs from before server optimizers keep their run ids.
    optimizer: Literal[tuple(SERVER_OPTIMIZERS.names())] = Field(
        "fedavgm", exclude_if=lambda name: name == "fedavgm",
        description="how the global model steps along the aggregate (byzlab list server-optimizers)",
    )
    optimizer_params: dict[str, Any] = Field(
        default_factory=dict, exclude_if=lambda params: not params,
        description="the server optimizer's parameters (fedadam / fedyogi: beta1, beta2, tau)",
    )
    eval_batch_size: int = Field(1024, ge=1, description="batch size of test-set evaluation")
    proxy_data: ProxyDataConfig = Field(
        default_factory=ProxyDataConfig, description="labeled server data, for rules that need it (fltrust, sageflow)"
    )
    public_data: PublicDataConfig = Field(
        default_factory=PublicDataConfig, description="unlabeled server data, for rules that need it (sdea)"
    )
    # Left out of the resolved config (and so of the run id) while empty: configs without pre-aggregators
    # keep the run ids they had before the field existed.
    pre_aggregators: list[dict[str, Any]] = Field(
        default_factory=list,
        exclude_if=lambda specs: not specs,
        description="transforms applied, in order, before the rule, each {name: ..., **params}: nnm, "
        "bucketing (s), clipping (threshold), arc (byzlab.aggregators.pre_aggregator_names())",
    )

    @model_validator(mode="after")
    def _aggregator(self) -> ServerConfig:
        self.aggregator_params = _validated_params(
            aggregators.AGGREGATORS, self.aggregator, self.aggregator_params, "aggregator_params")
        self._optimizer()
        self._pre_aggregators()
        aggregators.pipeline.check_compatible(self.pre_aggregators, self.aggregator, self.aggregator_params)
        return self

    def _pre_aggregators(self) -> None:
        """Each entry validated and filled in; an unknown parameter is answered with those it takes."""
        for i, spec in enumerate(self.pre_aggregators):
            name = spec.get("name")
            if isinstance(name, str) and name in aggregators.PRE_AGGREGATORS.names():
                own = aggregators.PRE_AGGREGATORS.get(name).Params.model_fields
                unknown = [key for key in spec if key != "name" and key not in own]
                if unknown:
                    raise ValueError(f"pre_aggregators[{i}]: pre-aggregator '{name}' parameter '{unknown[0]}': Extra "
                                     f"inputs are not permitted (it takes: {', '.join(own) or 'none'})")
        self.pre_aggregators = aggregators.pipeline.normalise_specs(self.pre_aggregators)
        _finite("pre_aggregators", self.pre_aggregators)

    def _optimizer(self) -> None:
        """FedAvgM's momentum is ``server.momentum``; the adaptive optimizers take ``optimizer_params``."""
        if self.optimizer == "fedavgm":
            if self.optimizer_params:
                raise ValueError("optimizer_params: fedavgm takes none (its momentum is server.momentum)")
            return
        if self.momentum != 0:
            raise ValueError(f"momentum applies to fedavgm only; {self.optimizer}'s is optimizer_params.beta1")
        self.optimizer_params = _validated_params(SERVER_OPTIMIZERS, self.optimizer, self.optimizer_params,
                                                  "optimizer_params")

    def optimizer_parameters(self) -> dict[str, Any]:
        """What the optimizer is built with: fedavgm's momentum, or the adaptive ones' parameters."""
        return {"momentum": self.momentum} if self.optimizer == "fedavgm" else self.optimizer_params


MAX_ROUNDS = 1_000_000


def malicious_count(fraction: float, num_clients: int) -> int:
    """floor(fraction * N): never more malicious clients than the fraction allows."""
    return math.floor(fraction * num_clients + 1e-9)


class ThreatConfig(_Section):
    """The threat model (docs/architecture.md, "Attack contract"). The malicious set is floor(fraction * N) clients,
    drawn once per run from the seed; with ``attack: none`` they exist (and are declared to the defense)
    but behave honestly, so a no-attack baseline has the same defense configuration as attacked runs."""

    attack: str = Field("none", description="data or model attack (byzlab list attacks); none = honest")
    attack_params: dict[str, Any] = Field(default_factory=dict, description="the attack's parameters")
    fraction: float = Field(0.0, ge=0, lt=0.5, description="malicious share of the population, Phi in [0, 0.5)")
    knowledge: Literal["omniscient", "agnostic"] = Field(
        "omniscient", description="model attacks use statistics of the benign updates, or only their own"
    )
    declared_byzantine: int | None = Field(
        None, ge=0, description="Byzantine count the defense is told (default: the true count among the sampled)"
    )
    start_round: int = Field(1, ge=1, description="first attacked round")
    every: int = Field(1, ge=1, description="attack every k-th round from start_round")
    quantity_attack: str = Field("none", description="lie about sample counts (composes with attack)")
    quantity_params: dict[str, Any] = Field(default_factory=dict, description="the quantity attack's parameters")

    @model_validator(mode="after")
    def _attacks(self) -> ThreatConfig:
        for name_field, params_field, kinds in (
            ("attack", "attack_params", ("data", "model")),
            ("quantity_attack", "quantity_params", ("quantity",)),
        ):
            name = getattr(self, name_field)
            if name == "none":
                if getattr(self, params_field):
                    raise ValueError(f"{params_field} given but {name_field} is 'none'")
                continue
            if name not in attacks.ATTACKS.names() and name not in attacks.ATTACKS.broken():
                known = sorted(n for k in kinds for n in attacks.names(k))
                what = "quantity attack" if kinds == ("quantity",) else "attack"
                raise ValueError(f"unknown {what} '{name}'; known: {', '.join(known)} (none: no attack)")
            cls = attacks.attack_class(name)
            if cls.kind not in kinds:
                allowed = ", ".join(n for k in kinds for n in attacks.names(k))
                raise ValueError(f"{name_field}: '{name}' is a {cls.kind} attack; allowed: none, {allowed}")
            params = _validated_params(attacks.ATTACKS, name, getattr(self, params_field), params_field)
            setattr(self, params_field, params)
            if self.fraction == 0:
                raise ValueError(f"{name_field} '{name}' needs fraction > 0")
        return self

    def active(self, round_index: int) -> bool:
        """Whether the attackers attack in ``round_index`` (1-based)."""
        return round_index >= self.start_round and (round_index - self.start_round) % self.every == 0


class RunConfig(_Section):
    # At most a million rounds: a run's segment files number rounds with seven digits.
    rounds: int = Field(20, ge=1, le=MAX_ROUNDS, description="communication rounds")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of everything random in the run (0 <= seed < 2^63)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when the actor has a GPU")
    eval_every: int = Field(1, ge=1, description="evaluate the global model every k rounds (and the last)")
    checkpoint_every: int = Field(5, ge=1, description="save full state every k rounds (and the last)")
    # The default placement keeps both CPUs it reserves training, without changing a number: two 1-CPU client
    # actors train clients side by side on one torch thread each (a kernel's rounding depends on its thread
    # count, never on the number of actors), and the server, which works while they wait, reserves no CPU
    # (docs/architecture.md, "Placement and threads").
    client_actors: int = Field(2, ge=1, description="Ray actors hosting the virtual clients "
                               "(default 2, or clients.num_clients when fewer)")
    client_actor_cpus: float = Field(1.0, gt=0, description="CPUs reserved per client actor; also its torch threads")
    client_actor_gpus: float | None = Field(None, ge=0, description="GPUs per client actor (default: see README)")
    server_cpus: float = Field(0.0, ge=0, description="CPUs reserved for the server actor; also its torch threads "
                               "(0: none of its own; it works while the client actors wait, on their CPUs)")
    server_gpus: float | None = Field(None, ge=0, description="GPUs for the server actor (default: see README)")
    output_dir: str = Field("byzlab-results", description="where run directories and the MLflow store go")
    actor_restarts: int = Field(2, ge=0, description="times a run restarts its actors from the last checkpoint "
                                "when one dies, before it stops (resumable)")

    @model_validator(mode="after")
    def _cuda_needs_gpus(self) -> RunConfig:
        if self.device == "cuda" and 0 in (self.client_actor_gpus, self.server_gpus):
            raise ValueError("device 'cuda' needs client_actor_gpus and server_gpus > 0 (or unset)")
        return self


class TrackingConfig(_Section):
    enabled: bool = Field(True, description="log the run to MLflow")
    uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite under run.output_dir)")
    experiment: str = Field("byzlab", min_length=1, description="MLflow experiment name")


class ExperimentConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        if self.model.name == "auto":
            self.model.name = MODELS.canonical(default_model(self.data.dataset, self.data.parameters()))
        try:
            self.model.fill_parameters()
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        self._check_threat_setting()
        self._check_aggregator_setting()
        if "client_actors" not in self.run.model_fields_set:  # the default never asks for more actors than clients
            self.run.client_actors = min(self.run.client_actors, self.clients.num_clients)
        if self.run.client_actors > self.clients.num_clients:
            raise ValueError(
                f"run.client_actors ({self.run.client_actors}) must be at most clients.num_clients "
                f"({self.clients.num_clients})"
            )
        return self

    def expected_byzantine(self) -> int:
        """The Byzantine count a defense is configured for: the declared count, else the malicious clients
        expected among those sampled in a round (all of them when every client participates)."""
        if self.threat.declared_byzantine is not None:
            return self.threat.declared_byzantine
        malicious = malicious_count(self.threat.fraction, self.clients.num_clients)
        return math.ceil(malicious * self.clients.clients_per_round / self.clients.num_clients)

    def _check_threat_setting(self) -> None:
        """The defense is told fewer Byzantine updates than a round has, and an attack starts before the run ends."""
        threat, per_round = self.threat, self.clients.clients_per_round
        if threat.declared_byzantine is not None and threat.declared_byzantine >= per_round:
            raise ValueError(
                f"threat.declared_byzantine ({threat.declared_byzantine}) must be less than the updates per round "
                f"(clients.clients_per_round = {per_round}): at least one update of a round is honest"
            )
        attacking = threat.attack != "none" or threat.quantity_attack != "none"
        if attacking and threat.start_round > self.run.rounds:
            raise ValueError(
                f"threat.start_round ({threat.start_round}) is after the last round (run.rounds = {self.run.rounds}): "
                "the attackers would never attack"
            )

    def _check_aggregator_setting(self) -> None:
        """The rule (after any pre-aggregators) can run with the round's size and Byzantine count."""
        server = self.server
        try:
            aggregators.check_pipeline_setting(
                server.pre_aggregators, server.aggregator, server.aggregator_params,
                self.clients.clients_per_round, self.expected_byzantine(),
            )
        except ValueError as err:
            raise ValueError(f"server.aggregator '{self.server.aggregator}': {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration (defaults filled in, unused options left out)."""
        return self.model_dump(mode="json", exclude_none=True)


# The sections a plug-in admitted after import extends: (field of ExperimentConfig, its class, the key naming
# the component, names accepted besides the registered ones, the registry, and how its parameters become
# flat keys: keep_defaults as in _parameter_fields, or None when they are a params dict of their own).
_EXTENSIBLE: tuple[tuple[str, type[_Section], str, tuple[str, ...], Registry, bool | None], ...] = (
    ("data", DataConfig, "dataset", (), DATASETS, True),
    ("partition", PartitionConfig, "scheme", (), PARTITION_SCHEMES, False),
    ("model", ModelConfig, "name", ("auto",), MODELS, False),
    ("server", ServerConfig, "optimizer", (), SERVER_OPTIMIZERS, None),
)


def _registered() -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(registry.names()) for *_, registry, _ in _EXTENSIBLE)


_BUILT_FOR = _registered()  # the components the classes above were built with
_EXTENDED: dict[tuple[tuple[str, ...], ...], type[ExperimentConfig]] = {}


def _extended_section(section: type[_Section], name_field: str, extra_names: tuple[str, ...], registry: Registry,
                      keep_defaults: bool | None) -> type[_Section]:
    """``section`` accepting every registered name, with the parameters of the components registered since
    as flat keys (typed, constrained and filled in exactly as a built-in's)."""
    names = Literal[(*extra_names, *registry.names())]
    fields: dict[str, Any] = {name_field: (names, copy(section.model_fields[name_field]))}
    if keep_defaults is not None:
        fields |= {param: field for param, field in _parameter_fields(registry, keep_defaults=keep_defaults).items()
                   if param not in section.model_fields}
    return create_model(section.__name__, __base__=section, **fields)


def experiment_schema() -> type[ExperimentConfig]:
    """The schema for the components registered now: ExperimentConfig itself while they are the ones it was
    built with (the built-ins and the installed entry-point plug-ins), else a subclass of it extended with
    the plug-ins admitted since (a config naming ``mypkg.models:build``): their names are accepted and
    their parameters are flat keys of their section, validated like a built-in's. ``build_config``
    validates every config with it; configs without such plug-ins get ExperimentConfig, and their run ids."""
    key = _registered()
    if key == _BUILT_FOR:
        return ExperimentConfig
    if key not in _EXTENDED:
        sections = {field: _extended_section(*spec) for field, *spec in _EXTENSIBLE}
        _EXTENDED[key] = create_model("ExperimentConfig", __base__=ExperimentConfig, **{
            field: (section, Field(default_factory=section)) for field, section in sections.items()
        })
    return _EXTENDED[key]


# Fields that say where results go or how the run is spread over the cluster, not what it computes, so
# they are not part of the run's identity: the number of actors changes no number (randomness is keyed by
# client and round, not by actor); the CPUs per actor set its torch threads, which can change the last bits
# of a sum (docs/architecture.md, "Placement and threads"), and a run resumed on other CPUs is the same run.
_EXECUTION_FIELDS = {
    "run": ("output_dir", "checkpoint_every", "client_actors", "client_actor_cpus", "client_actor_gpus",
            "server_cpus", "server_gpus", "actor_restarts"),
    "tracking": ("enabled", "uri", "experiment"),
}


# Parameters added after runs were stored, with the value that computes what those runs computed: at that
# value they are left out of the identity, so the stored runs keep their ids (and resume). The last element
# names the attack or rule the parameter was added to (None: any that has it).
_ADDED_LATER = {
    ("threat", "attack_params", "variant", None): "paper",
    ("server", "aggregator_params", "variant", None): "paper",
    ("threat", "attack_params", "asr_images", None): "other_classes",
    ("threat", "attack_params", "local_epochs", "label_flip"): None,
    ("threat", "attack_params", "lr", "label_flip"): None,
    ("server", "aggregator_params", "f", "multi_krum"): None,
    ("server", "aggregator_params", "f", "bulyan"): None,
    ("threat", "attack_params", "values", "feature_backdoor"): None,
}
_COMPONENT = {"threat": "attack", "server": "aggregator"}


def run_id(cfg: ExperimentConfig) -> str:
    """A short hash of the resolved configuration, seed included, execution placement excluded."""
    identity = cfg.to_dict()
    for section, fields in _EXECUTION_FIELDS.items():
        for name in fields:
            identity[section].pop(name, None)
    for (section, params, name, component), earlier in _ADDED_LATER.items():
        values = identity.get(section, {}).get(params)
        if component is not None and identity[section].get(_COMPONENT[section]) != component:
            continue
        if isinstance(values, dict) and name in values and values[name] == earlier:
            del values[name]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:12]
