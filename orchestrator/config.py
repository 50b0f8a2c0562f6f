"""The experiment configuration: a pydantic schema, YAML loading, dotted overrides and the run id.

The schema's defaults are the built-in quickstart (digits, 10 clients, Dirichlet beta = 0.5, FedAvg, 20
rounds). Every error is reported as one line naming the field and what it allows, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import aggregators
import attacks
from orchestrator.datasets import DATASET_NAMES, EMNIST_SPLITS
from orchestrator.models import MODEL_NAMES, default_model


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    dataset: Literal[DATASET_NAMES] = Field("digits", description="training and test data")
    data_root: str | None = Field(None, description="where torchvision-format files live (default ~/.cache/byzlab/data)")
    download: bool = Field(False, description="let torchvision download a missing dataset")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="digits only: share held out for testing")
    split_seed: int = Field(0, description="digits only: seed of the stratified train/test split")
    emnist_split: Literal[EMNIST_SPLITS] = Field("balanced", description="emnist only: which EMNIST split")


PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "lognormal")
# Parameters each scheme takes, with their defaults. A parameter that the chosen scheme does not use is an
# error rather than silently ignored, so a sweep over partition.beta cannot run an IID grid by mistake.
PARTITION_PARAMETERS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"beta": 0.5, "min_samples": 10},
    "shards": {"classes_per_client": 2},
    "lognormal": {"sigma": 1.0, "label_skew": "iid"},
}


class PartitionConfig(_Section):
    scheme: Literal[PARTITION_SCHEMES] = Field("dirichlet", description="how training data is split over clients")
    beta: float | None = Field(None, gt=0, description="dirichlet: concentration (smaller = more label skew)")
    min_samples: int | None = Field(None, ge=1, description="dirichlet: redraw until every client has this many")
    classes_per_client: int | None = Field(None, ge=1, description="shards: distinct classes per client")
    sigma: float | None = Field(None, ge=0, description="lognormal: std of log client sizes")
    label_skew: Literal["iid", "one_class"] | None = Field(None, description="lognormal: labels within clients")

    @model_validator(mode="after")
    def _scheme_parameters(self) -> PartitionConfig:
        used = PARTITION_PARAMETERS[self.scheme]
        for name in ("beta", "min_samples", "classes_per_client", "sigma", "label_skew"):
            if name in used:
                if getattr(self, name) is None:
                    setattr(self, name, used[name])
            elif getattr(self, name) is not None:
                allowed = ", ".join(used) or "none"
                raise ValueError(f"'{name}' is not a parameter of scheme '{self.scheme}' (it takes: {allowed})")
        return self

    def parameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARTITION_PARAMETERS[self.scheme]}


class ModelConfig(_Section):
    name: Literal[("auto", *MODEL_NAMES)] = Field("auto", description="architecture; auto = the dataset's default")


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
    source: Literal[("holdout", *DATASET_NAMES)] = Field(
        "holdout", description="holdout = a slice of the training data, or another dataset (same label space)"
    )
    size: int = Field(100, ge=1, description="labeled samples the server holds")


class PublicDataConfig(_Section):
    source: Literal[("sample_patches", *DATASET_NAMES)] = Field(
        "sample_patches", description="unlabeled images: patches of scikit-learn's sample photos, or a dataset"
    )
    size: int = Field(2000, ge=1, description="public images the server holds")


class ServerConfig(_Section):
    aggregator: str = Field("fedavg", description="aggregation rule (byzlab list aggregators)")
    aggregator_params: dict[str, Any] = Field(default_factory=dict, description="the rule's parameters")
    lr: float = Field(1.0, gt=0, description="server learning rate: theta += lr * velocity")
    momentum: float = Field(0.0, ge=0, lt=1, description="server momentum (FedAvgM); 0 = plain update")
    eval_batch_size: int = Field(1024, ge=1, description="batch size of test-set evaluation")
    proxy_data: ProxyDataConfig = Field(
        default_factory=ProxyDataConfig, description="labeled server data, for rules that need it (fltrust, sageflow)"
    )
    public_data: PublicDataConfig = Field(
        default_factory=PublicDataConfig, description="unlabeled server data, for rules that need it (sdea)"
    )

    @model_validator(mode="after")
    def _aggregator(self) -> ServerConfig:
        params = aggregators.validate_params(self.aggregator, self.aggregator_params)
        self.aggregator_params = params.model_dump()
        return self


def malicious_count(fraction: float, num_clients: int) -> int:
    """floor(fraction * N): never more malicious clients than the fraction allows."""
    return math.floor(fraction * num_clients + 1e-9)


class ThreatConfig(_Section):
    """The threat model (DESIGN.md, "Attack contract"). The malicious set is floor(fraction * N) clients,
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
            cls = attacks.attack_class(name)
            if cls.kind not in kinds:
                allowed = ", ".join(n for k in kinds for n in attacks.names(k))
                raise ValueError(f"{name_field}: '{name}' is a {cls.kind} attack; allowed: none, {allowed}")
            setattr(self, params_field, attacks.validate_params(name, getattr(self, params_field)).model_dump())
            if self.fraction == 0:
                raise ValueError(f"{name_field} '{name}' needs fraction > 0")
        return self

    def active(self, round_index: int) -> bool:
        """Whether the attackers attack in ``round_index`` (1-based)."""
        return round_index >= self.start_round and (round_index - self.start_round) % self.every == 0


class RunConfig(_Section):
    rounds: int = Field(20, ge=1, description="communication rounds")
    seed: int = Field(0, description="seed of everything random in the run")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when the actor has a GPU")
    eval_every: int = Field(1, ge=1, description="evaluate the global model every k rounds (and the last)")
    checkpoint_every: int = Field(5, ge=1, description="save full state every k rounds (and the last)")
    client_actors: int = Field(1, ge=1, description="Ray actors hosting the virtual clients")
    client_actor_cpus: float = Field(1.0, gt=0, description="CPUs reserved per client actor")
    client_actor_gpus: float | None = Field(None, ge=0, description="GPUs per client actor (default: see README)")
    server_cpus: float = Field(1.0, gt=0, description="CPUs reserved for the server actor")
    server_gpus: float | None = Field(None, ge=0, description="GPUs for the server actor (default: see README)")
    output_dir: str = Field("byzlab-results", description="where run directories and the MLflow store go")

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
            self.model.name = default_model(self.data.dataset)
        self._check_aggregator_setting()
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

    def _check_aggregator_setting(self) -> None:
        cls = aggregators.aggregator_class(self.server.aggregator)
        params = cls.Params(**self.server.aggregator_params)
        try:
            cls.check_setting(params, self.clients.clients_per_round, self.expected_byzantine())
        except ValueError as err:
            raise ValueError(f"server.aggregator '{self.server.aggregator}': {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration (defaults filled in, unused options left out)."""
        return self.model_dump(mode="json", exclude_none=True)


# Fields that say where results go or how the run is spread over the cluster; they do not change any
# number the run produces (randomness is keyed by client and round, not by actor), so they are not part
# of the run's identity.
_EXECUTION_FIELDS = {
    "run": ("output_dir", "checkpoint_every", "client_actors", "client_actor_cpus", "client_actor_gpus",
            "server_cpus", "server_gpus"),
    "tracking": ("enabled", "uri", "experiment"),
}


def run_id(cfg: ExperimentConfig) -> str:
    """A short hash of the resolved configuration, seed included, execution placement excluded."""
    identity = cfg.to_dict()
    for section, fields in _EXECUTION_FIELDS.items():
        for name in fields:
            identity[section].pop(name, None)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:12]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply ``"section.key=value"`` to a raw config dict; the value is parsed as YAML (0.3, true, [1, 2])."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' must look like section.key=value")
    set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(tree, "partition.beta", 0.3)`` sets ``tree["partition"]["beta"]``, creating sections."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def format_validation_error(err: ValidationError) -> str:
    """One line per problem (joined by '; '), each naming the field, the complaint and the input."""
    problems = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] not in ("value_error", "missing"):
            message = f"{message} (got {item['input']!r})"
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    tree = json.loads(json.dumps(raw))  # a deep copy that overrides may mutate
    for override in overrides:
        apply_override(tree, override)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config in ``path`` (or the built-in quickstart when None) with dotted overrides applied."""
    return build_config(read_yaml(path) if path is not None else {}, overrides)
