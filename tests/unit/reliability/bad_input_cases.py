"""The bad-input table of issue 12 (items 1 and 7), shared by ``test_bad_input.py`` and
``benchmarks/bad_inputs.py``: every case is a ``byzlab`` command line that must exit 2 with one line
(``error: ...`` naming the field or file), no traceback, before Ray starts and before anything is written.

A case runs in a sandbox directory (its working directory during the command); ``{out}`` in its arguments is
the sandbox's ``out/`` (every ``run`` gets ``-o run.output_dir={out}``), ``{root}`` the sandbox, ``{run}`` a
run directory its setup made, ``{repo}`` the repository (the tiny example data). ``run_case`` returns what
happened: exit code, stderr lines, whether a traceback escaped, and whether any file under the sandbox
appeared, changed or went.

The cases: files and YAML (config and sweep files, overrides), every config field with a wrong type, a bool
for a number, a NaN or infinite value and an out-of-range one (generated from the schema), unknown keys and
names, parameters of components (NaN, unknown), threat and defense settings, settings that depend on the
loaded data (class ids, trigger geometry, features, tokens: images, tabular rows, text), the output
directory, and damaged run directories of every kind (``--resume``, and a rerun of a config whose directory
is damaged).
"""

from __future__ import annotations

import contextlib
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import annotated_types
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[3]
RUN_ROUNDS = 4  # the sandbox run directory: 4 rounds, checkpointed at round 2


class RayWouldStart(RuntimeError):
    """Raised in place of starting Ray: a bad input must be refused before."""


@dataclass
class Sandbox:
    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def run(self) -> Path:
        return self.out / run_dir_id()

    @property
    def sweep(self) -> Path:
        return self.out / "sweeps" / SWEEP_NAME

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def placeholders(self) -> dict[str, str]:
        return {"root": str(self.root), "out": str(self.out), "run": str(self.run), "sweep": str(self.sweep),
                "repo": str(REPO)}


def _nothing(sandbox: Sandbox) -> None:
    sandbox.out.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    args: tuple[str, ...]
    expect: str  # a fragment the one line holds: the field or file it names
    setup: Callable[[Sandbox], None] = _nothing


@dataclass
class Outcome:
    exit_code: int
    lines: list[str]  # stderr
    stdout: str
    traceback: str | None  # the exception that escaped, if any
    wrote: list[str] = field(default_factory=list)  # files or folders that appeared, changed or went

    @property
    def accepted(self) -> bool:
        """The input was taken: the command went on to start Ray."""
        return self.traceback is not None and self.traceback.startswith(RayWouldStart.__name__)

    def clear(self, expect: str) -> bool:
        return (self.exit_code == 2 and self.traceback is None and len(self.lines) == 1
                and self.lines[0].startswith("error: ") and expect in self.lines[0] and not self.stdout.strip())


# ------------------------------------------------------------------------------------------------ running


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size if name in files else -1, stat.st_mtime_ns)
    return found


@contextlib.contextmanager
def _no_ray():
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RayWouldStart("Ray would start: the bad input was not refused before")

    import byzlab.sweeps.runner  # noqa: F401  (patched below)

    # As in a fresh `byzlab` process, whatever this test process holds: Ray is not running yet.
    with mock.patch("ray.init", refuse), mock.patch("byzlab.orchestrator.run.experiment.ensure_ray", refuse), \
            mock.patch("byzlab.sweeps.runner.ensure_ray", refuse), mock.patch("ray.is_initialized", lambda: False):
        yield


def run_case(case: Case, root: Path) -> Outcome:
    """Set the case up in ``root`` (a fresh directory), run its command there, and say what happened."""
    from typer.testing import CliRunner

    from byzlab.orchestrator import cli

    sandbox = Sandbox(Path(root))
    sandbox.root.mkdir(parents=True, exist_ok=True)
    case.setup(sandbox)
    args = list(case.args)
    for key, value in sandbox.placeholders().items():
        args = [arg.replace(f"{{{key}}}", value) for arg in args]
    before = _snapshot(sandbox.root)
    with contextlib.chdir(sandbox.root), _no_ray(), warnings.catch_warnings(record=True):
        result = CliRunner().invoke(cli.app, args, terminal_width=400)
    after = _snapshot(sandbox.root)
    wrote = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    traceback = f"{type(escaped).__name__}: {escaped}" if escaped is not None else None
    return Outcome(result.exit_code, result.stderr.splitlines(), result.stdout, traceback, wrote)


# ------------------------------------------------------------------------------------------------ builders


def run(name: str, *overrides: str, expect: str, group: str = "fields", config: str | None = None,
        setup: Callable[[Sandbox], None] = _nothing) -> Case:
    """``byzlab run [CONFIG] -o run.output_dir={out} -o ...``."""
    args = ("run", *((config,) if config else ()), "-o", "run.output_dir={out}")
    return Case(group, name, (*args, *(part for o in overrides for part in ("-o", o))), expect, setup)


def config_file(name: str, content: str | bytes, *, expect: str, group: str = "files", command: str = "run") -> Case:
    """``byzlab run|validate {root}/exp.yaml`` with the file holding ``content``."""

    def setup(sandbox: Sandbox) -> None:
        _nothing(sandbox)
        sandbox.write("exp.yaml", content)

    extra = ("-o", "run.output_dir={out}") if command == "run" else ()
    return Case(group, name, (command, "{root}/exp.yaml", *extra), expect, setup)


def sweep_file(name: str, content: str | bytes, *, expect: str) -> Case:
    def setup(sandbox: Sandbox) -> None:
        _nothing(sandbox)
        sandbox.write("grid.yaml", content)

    return Case("sweep files", name, ("sweep", "{root}/grid.yaml"), expect, setup)


# ------------------------------------------------------------------------------------------------ files, YAML

FILE_CASES = [
    config_file("invalid UTF-8", b"run:\n  rounds: 3\n  seed: \xff\xfe\n", expect="is not UTF-8 text"),
    config_file("binary garbage", bytes(range(256)), expect="exp.yaml"),
    config_file("a control character", "run: {rounds: 3}\x00\n", expect="is not valid YAML"),
    config_file("undefined alias", "run: *missing\n", expect="is not valid YAML"),
    config_file("billion laughs", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)),
        expect="more than 1000000 values"),
    config_file("nested too deeply", "run: " + "[" * 5000 + "]" * 5000 + "\n", expect="nested too deeply"),
    config_file("nested deeply", "run: " + "[" * 60 + "]" * 60 + "\n", expect="levels"),
    run("override nested too deeply", "run.seed=" + "[" * 5000 + "]" * 5000, expect="nested too deeply",
        group="overrides"),
    config_file("YAML tag", "run: !!python/object/apply:os.system ['echo pwned']\n", expect="!!python/object/apply"),
    config_file("YAML name tag", "run: {rounds: !!python/name:os.system }\n", expect="!!python/name:os.system"),
    config_file("unclosed list", "run: {rounds: [1,\n", expect="is not valid YAML"),
    config_file("bad indentation", "run:\n  rounds: 3\n seed: 1\n", expect="is not valid YAML"),
    config_file("tab indentation", "run:\n\trounds: 3\n", expect="is not valid YAML"),
    config_file("a list, not a mapping", "- run\n- data\n", expect="must hold a mapping"),
    config_file("a scalar, not a mapping", "42\n", expect="must hold a mapping"),
    config_file("a date value", "run: {seed: 2020-01-01}\n", expect="run.seed"),
    config_file("a binary value", "data: {data_root: !!binary aGVsbG8=}\n", expect="data.data_root"),
    config_file("a set value", "run: {seed: !!set {1: null}}\n", expect="run.seed"),
    config_file("a list as key", "run:\n  ? [a, b]\n  : 1\n", expect="found unhashable key"),
    config_file("a null key", "run:\n  null: 1\n", expect="run.null: unknown field"),
    config_file("a section as a number", "run: 5\n", expect="run"),
    config_file("a section as a list", "clients: [1, 2]\n", expect="clients"),
    config_file("non-finite in the file", "clients: {lr: .inf}\n", expect="clients.lr"),
    config_file("validate: YAML tag", "run: !!python/object/apply:os.system ['true']\n", expect="!!python",
                command="validate"),
    config_file("validate: invalid UTF-8", b"\xc3\x28: 1\n", expect="is not UTF-8 text", command="validate"),
    Case("files", "config is a directory", ("run", "{root}/confdir", "-o", "run.output_dir={out}"),
         "is a directory", lambda s: (_nothing(s), (s.root / "confdir").mkdir())),
    Case("files", "validate: config is a directory", ("validate", "{root}"), "is a directory"),
    Case("files", "config does not exist", ("run", "{root}/nope.yaml", "-o", "run.output_dir={out}"),
         "does not exist"),
    Case("files", "config is a device", ("validate", "/dev/null"), "is not a regular file"),
    run("override: unclosed list", "run.rounds=[1,", expect="override 'run.rounds=[1,'", group="overrides"),
    run("override: unclosed mapping", "threat.attack_params={a: ", expect="override", group="overrides"),
    run("override: unclosed quote", "data.dataset='digits", expect="override", group="overrides"),
    run("override: mapping in mapping", "server.aggregator_params={a: b: c}", expect="override", group="overrides"),
    run("override: reserved character", "run.rounds=@3", expect="override 'run.rounds=@3'", group="overrides"),
    run("override: python tag", "run.rounds=!!python/object/apply:os.system [true]",
        expect="the tag '!!python/object/apply:os.system' is not allowed", group="overrides"),
    run("override: python name tag", "run.seed=!!python/name:os.system ''", expect="!!python/name:os.system",
        group="overrides"),
    run("override: binary", "tracking.experiment=!!binary aGVsbG8=", expect="tracking.experiment", group="overrides"),
    run("override: timestamp", "run.seed=2020-01-01", expect="run.seed", group="overrides"),
    run("override: no '='", "run.rounds", expect="must look like section.key=value", group="overrides"),
    run("override: no key", "=3", expect="must look like section.key=value", group="overrides"),
    run("override: empty part", "run..rounds=3", expect="has an empty part", group="overrides"),
    run("override: into a value", "run.rounds=3", "run.rounds.x=1", expect="'rounds' is a value", group="overrides"),
    Case("overrides", "--resume with a config", ("run", "{root}/exp.yaml", "--resume", "{out}"),
         "--resume takes the run directory only"),
    sweep_file("sweep: YAML tag", "base: !!python/object/apply:os.system ['true']\n", expect="!!python"),
    sweep_file("sweep: invalid UTF-8", b"name: \xff\n", expect="is not UTF-8 text"),
    sweep_file("sweep: unclosed list", "grid: {partition.beta: [0.3,\n", expect="is not valid YAML"),
    sweep_file("sweep: non-finite grid value",
               "base: {run: {output_dir: out}}\ngrid: {clients.lr: [0.1, .inf]}\n", expect="clients.lr"),
    sweep_file("sweep: unknown base key", "base: {run: {output_dir: out, roundz: 3}}\n", expect="roundz"),
    sweep_file("sweep: CPUs beyond the machine", "base: {run: {output_dir: out, server_cpus: 512}}\n",
               expect="trial 0"),
    sweep_file("sweep: tracking.uri unknown scheme", "base: {run: {output_dir: out}, tracking: {uri: 'x://y'}}\n",
               expect="tracking.uri 'x://y'"),
    Case("sweep files", "sweep: a directory", ("sweep", "{root}"), "is a directory"),
    Case("sweep files", "sweep: no such file", ("sweep", "{root}/nope.yaml"), "does not exist"),
]


# ------------------------------------------------------------------------------------------------ fields


def _scalar_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, field info) of every scalar field of the sections, the components' flat keys excepted."""
    from byzlab.orchestrator.config.schema import _ComponentSection, _DataSection

    fields = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields += _scalar_fields(annotation, f"{prefix}{name}.")
        elif issubclass(model, _ComponentSection) and name != model.name_field:
            continue
        elif issubclass(model, _DataSection) and name not in _DataSection.model_fields:
            continue
        else:
            fields.append((f"{prefix}{name}", info))
    return fields


def _bounds(info: Any) -> list[tuple[str, Any]]:
    """(label, a value just outside) for each bound of the field."""
    out = []
    for item in info.metadata:
        for kind, attr, step in (("ge", "ge", -1), ("gt", "gt", 0), ("le", "le", 1), ("lt", "lt", 0)):
            if isinstance(item, getattr(annotated_types, kind.capitalize())):
                bound = getattr(item, attr)
                value = bound + step if isinstance(bound, int) else bound + (0.5 * step if step else 0)
                out.append((f"{kind} {bound}", value))
    return out


def _field_cases() -> list[Case]:
    """For every scalar field: a wrong type, and for numbers a bool, NaN, infinities, an overflowing float,
    an integer beyond 64 bits and a value just outside each bound."""
    from byzlab.orchestrator.config import ExperimentConfig

    cases = []
    for path, info in _scalar_fields(ExperimentConfig):
        leaf = path.rpartition(".")[2]
        numeric = _takes_number(info.annotation)
        cases.append(run(f"{path}: wrong type", f"{path}={_wrong_value(info.annotation)}", expect=leaf,
                         group="field types"))
        if not numeric:
            continue
        values = [("a bool", "true"), ("NaN", ".nan"), ("+inf", ".inf"), ("-inf", "-.inf"), ("'inf' string", "'inf'"),
                  ("overflowing float", "1.0e+400"), ("beyond 64 bits", "100000000000000000000")]
        values += [(f"outside {label}", repr(value)) for label, value in _bounds(info)]
        for label, value in values:
            if label == "beyond 64 bits" and float in _number_types(info.annotation):
                continue  # a float field takes a large integer as a float
            cases.append(run(f"{path}: {label}", f"{path}={value}", expect=leaf,
                             group="non-finite" if label in ("NaN", "+inf", "-inf", "'inf' string", "overflowing float")
                             else "field values"))
    return cases


def _takes_number(annotation: Any) -> bool:
    """Whether a field's annotation is a number (int or float, optional or constrained), not a bool."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _takes_number(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_number(arg) for arg in typing.get_args(annotation))
    return annotation in (int, float)


def _wrong_value(annotation: Any) -> str:
    """A YAML value of a type the field never takes."""
    if _takes_number(annotation):
        return "not-a-number"
    if typing.get_origin(annotation) in (dict, list):
        return "7"
    return "{x: 1}"  # strings, names, bools


def _number_types(annotation: Any) -> set[type]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _number_types(typing.get_args(annotation)[0])
    if typing.get_args(annotation) and typing.get_origin(annotation) is not typing.Literal:
        return {t for arg in typing.get_args(annotation) for t in _number_types(arg)}
    return {annotation} if annotation in (int, float) else set()


THREAT = ("threat.fraction=0.2",)
UNKNOWN_CASES = [
    run("top-level section", "sevrer.aggregator=krum", expect="sevrer: unknown field (did you mean 'server'?); known:",
        group="unknown keys"),
    *(run(f"{section}: unknown key", f"{section}.foo=1", expect=f"{section}.foo: unknown field; known: ",
          group="unknown keys")
      for section in ("data", "partition", "model", "clients", "server", "threat", "run", "tracking",
                      "server.proxy_data", "server.public_data")),
    run("partition: misspelt key", "partition.bta=0.3", expect="did you mean 'beta'?", group="unknown keys"),
    run("partition: another scheme's key", "partition.scheme=iid", "partition.beta=0.3",
        expect="'beta' is not a parameter of scheme 'iid'", group="unknown keys"),
    run("data: another dataset's key", "data.csv_path=x.csv", expect="'csv_path' is not a parameter of dataset",
        group="unknown keys"),
    run("model: another model's key", "model.hidden_size=3", expect="'hidden_size' is not a parameter of model 'mlp'",
        group="unknown keys"),
    run("aggregator parameter", "server.aggregator=trimmed_mean", "server.aggregator_params.alpha=0.1",
        expect="parameter 'alpha': Extra inputs are not permitted (it takes: beta, trim)", group="unknown keys"),
    run("pre-aggregator parameter", "server.pre_aggregators=[{name: bucketing, size: 2}]",
        expect="pre-aggregator 'bucketing' parameter 'size'", group="unknown keys"),
    run("optimizer parameter", "server.optimizer=fedadam", "server.optimizer_params.beta3=0.9",
        expect="(it takes: beta1, beta2, tau)", group="unknown keys"),
    run("attack parameter", *THREAT, "threat.attack=lie", "threat.attack_params.zz=1",
        expect="attack 'lie' parameter 'zz'", group="unknown keys"),
    run("quantity attack parameter", *THREAT, "threat.quantity_attack=enlarge_quantity",
        "threat.quantity_params.alpha=1", expect="it takes: alpha_q", group="unknown keys"),
    run("byzmean base parameter", *THREAT, "threat.attack=byzmean", "threat.attack_params={base_params: {zz: 1}}",
        expect="attack 'lie' parameter 'zz'", group="unknown keys"),
    run("dataset name", "data.dataset=imagenet", expect="data.dataset", group="unknown names"),
    run("scheme name", "partition.scheme=random", expect="partition.scheme", group="unknown names"),
    run("model name", "model.name=gpt", expect="model.name", group="unknown names"),
    run("aggregator name", "server.aggregator=krumm", expect="unknown aggregator 'krumm'; known:", group="unknown names"),
    run("optimizer name", "server.optimizer=sgd", expect="server.optimizer", group="unknown names"),
    run("pre-aggregator name", "server.pre_aggregators=[{name: mix}]", expect="unknown pre-aggregator 'mix'",
        group="unknown names"),
    run("attack name", *THREAT, "threat.attack=lye", expect="unknown attack 'lye'; known:", group="unknown names"),
    run("quantity attack name", *THREAT, "threat.quantity_attack=lie", expect="'lie' is a model attack",
        group="unknown names"),
    run("quantity attack unknown", *THREAT, "threat.quantity_attack=more",
        expect="unknown quantity attack 'more'; known: enlarge_quantity", group="unknown names"),
    run("byzmean base name", *THREAT, "threat.attack=byzmean", "threat.attack_params.base=lies",
        expect="unknown model attack 'lies'", group="unknown names"),
    run("plug-in that does not import", "server.aggregator=nopkg.rules:Rule", expect="server.aggregator",
        group="unknown names"),
]

PARAMETER_CASES = [
    run("aggregator parameter NaN", "server.aggregator=trimmed_mean", "server.aggregator_params.beta=.nan",
        expect="beta", group="non-finite"),
    run("aggregator parameter 'nan' string", "server.aggregator=norm_bound", "server.aggregator_params.threshold='nan'",
        expect="threshold", group="non-finite"),
    run("pre-aggregator parameter inf", "server.pre_aggregators=[{name: clipping, threshold: .inf}]",
        expect="threshold", group="non-finite"),
    run("optimizer parameter inf", "server.optimizer=fedadam", "server.optimizer_params.tau=.inf",
        expect="tau", group="non-finite"),
    run("optimizer parameter 'inf' string", "server.optimizer=fedyogi", "server.optimizer_params.tau='inf'",
        expect="tau", group="non-finite"),
    run("attack scale inf", *THREAT, "threat.attack=sign_flip", "threat.attack_params.scale=.inf",
        expect="scale", group="non-finite"),
    run("lie z NaN", *THREAT, "threat.attack=lie", "threat.attack_params.z=.nan", expect="attack_params.z", group="non-finite"),
    run("noise sigma inf", *THREAT, "threat.attack=noise", "threat.attack_params.sigma=.inf", expect="sigma",
        group="non-finite"),
    run("ipm epsilon -inf", *THREAT, "threat.attack=ipm", "threat.attack_params.epsilon=-.inf", expect="epsilon",
        group="non-finite"),
    run("backdoor value inf", *THREAT, "threat.attack=backdoor", "threat.attack_params.value=.inf", expect="value",
        group="non-finite"),
    run("backdoor lr NaN", *THREAT, "threat.attack=backdoor", "threat.attack_params.lr=.nan", expect="lr",
        group="non-finite"),
    run("model_replacement boost inf", *THREAT, "threat.attack=model_replacement", "threat.attack_params.boost=.inf",
        expect="boost", group="non-finite"),
    run("symmetric_flip epsilon NaN", *THREAT, "threat.attack=symmetric_flip", "threat.attack_params.epsilon=.nan",
        expect="epsilon", group="non-finite"),
    run("quantity alpha_q inf", *THREAT, "threat.quantity_attack=enlarge_quantity", "threat.quantity_params.alpha_q=.inf",
        expect="alpha_q", group="non-finite"),
    run("byzmean base z inf", *THREAT, "threat.attack=byzmean", "threat.attack_params={base_params: {z: .inf}}",
        expect="base_params.z", group="non-finite"),
    run("model dropout NaN", "model.dropout=.nan", expect="dropout", group="non-finite"),
    run("model hidden width inf", "model.hidden=[.inf]", expect="model.hidden", group="non-finite"),
    run("dirichlet beta inf", "partition.beta=.inf", expect="partition.beta", group="non-finite"),
    run("test fraction NaN", "data.test_fraction=.nan", expect="test_fraction", group="non-finite"),
]

SETTING_CASES = [
    run("declared f above the clients", *THREAT, "threat.declared_byzantine=20", expect="threat.declared_byzantine (20)",
        group="threat and defense"),
    run("declared f equal to the round", "clients.clients_per_round=5", "threat.declared_byzantine=5",
        expect="clients.clients_per_round = 5", group="threat and defense"),
    run("attack starts after the last round", *THREAT, "threat.attack=lie", "run.rounds=3", "threat.start_round=4",
        expect="threat.start_round (4)", group="threat and defense"),
    run("rounds above a million", "run.rounds=1000001", expect="run.rounds", group="threat and defense"),
    run("rounds 1e20", "run.rounds=1e20", expect="run.rounds", group="threat and defense"),
    run("rounds 1.0e+20", "run.rounds=1.0e+20", expect="run.rounds", group="threat and defense"),
    run("seed negative", "run.seed=-1", expect="run.seed", group="threat and defense"),
    run("attack without attackers", "threat.attack=lie", expect="needs fraction > 0", group="threat and defense"),
    run("attack parameters without attack", "threat.attack_params.z=1", expect="attack_params given",
        group="threat and defense"),
    run("data attack as quantity attack", *THREAT, "threat.attack=enlarge_quantity",
        expect="'enlarge_quantity' is a quantity attack", group="threat and defense"),
    run("krum with too many attackers", "server.aggregator=krum", "threat.fraction=0.4",
        expect="server.aggregator 'krum'", group="threat and defense"),
    run("bulyan with declared f", "server.aggregator=bulyan", *THREAT, "threat.declared_byzantine=3",
        expect="server.aggregator 'bulyan'", group="threat and defense"),
    run("trimming more than half", "server.aggregator=trimmed_mean", "server.aggregator_params.trim=5",
        expect="trimming more than half", group="threat and defense"),
    run("more per round than clients", "clients.clients_per_round=11", expect="clients_per_round (11)",
        group="threat and defense"),
    run("more actors than clients", "run.client_actors=11", expect="run.client_actors (11)", group="threat and defense"),
    run("fedadam with momentum", "server.optimizer=fedadam", "server.momentum=0.9", expect="momentum",
        group="threat and defense"),
    run("cuda without GPUs", "run.device=cuda", "run.server_gpus=0", expect="device 'cuda'", group="threat and defense"),
    run("more clients than samples", "clients.num_clients=5000", expect="partition: num_clients",
        group="threat and defense"),
    run("proxy set as large as the data", "server.aggregator=fltrust", "server.proxy_data.size=1347",
        expect="server.proxy_data.size (1347)", group="threat and defense"),
    run("public data beyond memory", "server.aggregator=sdea", "server.public_data.size=1000000000",
        expect="server.public_data.size (1000000000)", group="threat and defense"),
    run("shards of more classes than the data", "partition.scheme=shards", "partition.classes_per_client=11",
        expect="classes_per_client", group="threat and defense"),
    run("natural partition without groups", "partition.scheme=natural", expect="needs a group column",
        group="threat and defense"),
]


# ------------------------------------------------------------------------------------------------ data-dependent

IMAGES = THREAT  # digits: 8x8 grey images, 10 classes
FEMNIST = ("data.dataset=femnist", "data.data_root={repo}/examples/data", "partition.scheme=natural",
           "clients.num_clients=8", *THREAT)  # 28x28 images, 62 classes
LOAN = ("data.dataset=csv", "data.csv_path={repo}/examples/loan-tiny.csv", "data.label_column=loan_status",
        "data.drop_columns=[id]", *THREAT)  # tabular rows, 3 classes
AMAZON = ("data.dataset=amazon-kindle", "data.data_root={repo}/examples/data", "data.max_length=32",
          "partition.scheme=iid", *THREAT)  # words, 2 classes
SHAKESPEARE = ("data.dataset=shakespeare", "data.data_root={repo}/examples/data", "partition.scheme=natural",
               "clients.num_clients=8", *THREAT)  # characters, 24 classes


def _data(name: str, data: tuple[str, ...], attack: str, params: str, expect: str) -> Case:
    return run(name, *data, f"threat.attack={attack}", f"threat.attack_params={params}", expect=expect,
               group="attack vs data")


DATA_CASES = [
    _data("images: label_flip target 99", IMAGES, "label_flip", "{source: 1, target: 99}", "target=99"),
    _data("images: label_flip source 10", IMAGES, "label_flip", "{source: 10, target: 1}", "source=10"),
    _data("images: backdoor row 99", IMAGES, "backdoor", "{row: 99}", "does not fit a 8x8 image"),
    _data("images: backdoor col 8", IMAGES, "backdoor", "{col: 8}", "does not fit a 8x8 image"),
    _data("images: backdoor row -9", IMAGES, "backdoor", "{row: -9}", "does not fit a 8x8 image"),
    _data("images: backdoor size 9", IMAGES, "backdoor", "{size: 9}", "does not fit a 8x8 image"),
    _data("images: backdoor at the corner too big", IMAGES, "backdoor", "{row: -2, col: -2, size: 3}",
          "does not fit a 8x8 image"),
    _data("images: backdoor target 10", IMAGES, "backdoor", "{target: 10}", "target=10"),
    _data("images: model_replacement size 12", IMAGES, "model_replacement", "{size: 12}", "does not fit a 8x8 image"),
    _data("images: model_replacement target 11", IMAGES, "model_replacement", "{target: 11}", "target=11"),
    _data("images: dba 12 parts", IMAGES, "dba", "{num_parts: 12}", "does not fit a 8x8 image"),
    _data("images: dba bars of 8", IMAGES, "dba", "{bar_length: 8}", "does not fit a 8x8 image"),
    _data("images: dba gap 9", IMAGES, "dba", "{gap: 9}", "does not fit a 8x8 image"),
    _data("images: dba target 10", IMAGES, "dba", "{target: 10}", "target=10"),
    _data("images: feature backdoor", IMAGES, "feature_backdoor", "{features: [x]}", "needs tabular rows"),
    _data("images: token backdoor", IMAGES, "token_backdoor", "{tokens: [x]}", "needs text"),
    _data("28x28: backdoor row 26 size 3", FEMNIST, "backdoor", "{row: 26}", "does not fit a 28x28 image"),
    _data("28x28: dba col 24", FEMNIST, "dba", "{col: 24}", "does not fit a 28x28 image"),
    _data("28x28: label_flip target 62", FEMNIST, "label_flip", "{source: 0, target: 62}", "target=62"),
    _data("tabular: label_flip target 3", LOAN, "label_flip", "{source: 0, target: 3}", "target=3"),
    _data("tabular: backdoor", LOAN, "backdoor", "{}", "needs images"),
    _data("tabular: dba", LOAN, "dba", "{}", "needs images"),
    _data("tabular: feature backdoor, no features", LOAN, "feature_backdoor", "{}", "name at least one"),
    _data("tabular: feature backdoor, unknown feature", LOAN, "feature_backdoor", "{features: [salary]}",
          "feature 'salary' is not an encoded feature"),
    _data("tabular: feature backdoor, target 5", LOAN, "feature_backdoor", "{features: [int_rate], target: 5}",
          "target=5"),
    _data("tabular: token backdoor", LOAN, "token_backdoor", "{tokens: [x]}", "needs text"),
    _data("words: label_flip target 2", AMAZON, "label_flip", "{source: 0, target: 2}", "target=2"),
    _data("words: backdoor", AMAZON, "backdoor", "{}", "needs images"),
    _data("words: token backdoor, unknown token", AMAZON, "token_backdoor", "{tokens: [zzzqqq]}",
          "token 'zzzqqq' is not in the training vocabulary"),
    _data("words: token backdoor, position 40", AMAZON, "token_backdoor", "{tokens: [book], position: 40}",
          "position 40"),
    _data("words: token backdoor, target 2", AMAZON, "token_backdoor", "{tokens: [book], target: 2}", "target=2"),
    _data("words: feature backdoor", AMAZON, "feature_backdoor", "{features: [x]}", "needs tabular rows"),
    _data("characters: label_flip target 24", SHAKESPEARE, "label_flip", "{source: 0, target: 24}", "target=24"),
    _data("characters: token backdoor, two tokens at -1", SHAKESPEARE, "token_backdoor", "{tokens: [e, t], position: -1}",
          "position -1"),
    _data("characters: dba", SHAKESPEARE, "dba", "{}", "needs images"),
    run("images: split_seed -1", "data.split_seed=-1", expect="data.split_seed", group="data parameters"),
    run("tabular: split_seed 2^32", *LOAN[:-1], "data.split_seed=4294967296", expect="data.split_seed",
        group="data parameters"),
    run("words: split_seed -3", *AMAZON[:-1], "data.split_seed=-3", expect="data.split_seed", group="data parameters"),
    run("text model on images", "model.name=fasttext", expect="model", group="attack vs data"),
    run("CNN on tabular rows", *LOAN[:-1], "model.name=cnn", expect="model", group="attack vs data"),
]


# ------------------------------------------------------------------------------------------------ output dir


def _file_as_output(sandbox: Sandbox) -> None:
    sandbox.write("taken", "a file where the output directory goes\n")


OUTPUT_CASES = [
    Case("output directory", "output dir is a file", ("run", "-o", "run.output_dir={root}/taken"), "run.output_dir",
         _file_as_output),
    Case("output directory", "output dir under a file", ("run", "-o", "run.output_dir={root}/taken/results"),
         "is a file, not a directory", _file_as_output),
    run("tracking.uri unknown scheme", "tracking.uri=nonsense://store", expect="tracking.uri 'nonsense://store': unknown "
        "scheme", group="tracking and resources"),
    run("tracking.uri a directory", "tracking.uri={root}/mlruns", expect="MLflow 3 keeps no runs in a directory",
        group="tracking and resources"),
    run("tracking.uri file scheme", "tracking.uri=file://{root}/mlruns", expect="MLflow 3 keeps no runs in a directory",
        group="tracking and resources"),
    run("tracking.uri SQLite under a file", "tracking.uri=sqlite:///{root}/taken/mlflow.db",
        expect="tracking.uri", group="tracking and resources", setup=_file_as_output),
    run("tracking.uri SQLite a directory", "tracking.uri=sqlite:///{root}", expect="tracking.uri",
        group="tracking and resources"),
    run("tracking.uri closed port", "tracking.uri=http://127.0.0.1:1", expect="nothing answers at 127.0.0.1:1",
        group="tracking and resources"),
    run("tracking.uri driver missing", "tracking.uri=mysql+mysqldb://user@127.0.0.1/mlflow",
        expect="the database driver is not installed", group="tracking and resources"),
    run("client actor CPUs 1000", "run.client_actor_cpus=1000", expect="run.client_actor_cpus 1000",
        group="tracking and resources"),
    run("server CPUs 4096", "run.server_cpus=4096", expect="run.server_cpus 4096", group="tracking and resources"),
    run("actors x CPUs beyond the machine", "run.client_actors=10", "run.client_actor_cpus=64",
        expect="this machine has", group="tracking and resources"),
]


# ------------------------------------------------------------------------------------------------ run directories


_RUN_CACHE: dict[str, Any] = {}


def _run_config():
    """The sandbox run's config (run.output_dir is filled in per sandbox: it is not part of the run id)."""
    from byzlab.orchestrator.config import build_config

    if "cfg" not in _RUN_CACHE:
        _RUN_CACHE["cfg"] = build_config({}, [f"run.rounds={RUN_ROUNDS}", "run.checkpoint_every=2"])
    return _RUN_CACHE["cfg"]


def run_dir_id() -> str:
    from byzlab.orchestrator.config import run_id

    return run_id(_run_config())


def make_run_dir(sandbox: Sandbox, status: str = "interrupted") -> None:
    """A run directory as a run interrupted after its round-2 checkpoint leaves it (``finished``: as a
    finished run leaves it), written with the storage code the runs use; no Ray."""
    import numpy as np
    import pyarrow as pa
    import torch

    from byzlab.orchestrator.core.layout import flatten_state
    from byzlab.orchestrator.run.storage import RunDirectory, rows_to_table
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    cfg = _run_config().model_copy(deep=True)
    cfg.run.output_dir = str(sandbox.out)
    if "inputs" not in _RUN_CACHE:
        _RUN_CACHE["inputs"] = resolve_inputs(cfg)
    torch.manual_seed(0)
    params = flatten_state(_RUN_CACHE["inputs"].client.model.build())
    run_dir = RunDirectory(sandbox.run)
    rounds = RUN_ROUNDS if status == "finished" else 2
    run_dir.create(cfg.to_dict(), {"run_id": run_dir.run_id, "status": status, "round": rounds, "mlflow_run_id": None,
                                   "malicious": [], "created": "2024-01-01T00:00:00"})
    run_dir.save_checkpoint({"round": rounds, "run_id": run_dir.run_id, "mlflow_run_id": "", "server": {
        "global_params": params, "optimizer": {"velocity": torch.zeros_like(params)}, "aggregator": {}}})
    metrics = [{"round": r, "test_accuracy": 0.5 + 0.1 * r, "train_loss": 1.0 / r} for r in range(1, rounds + 1)]
    run_dir.append_segment("metrics", 1, rows_to_table(metrics))
    clients = pa.table({"round": np.repeat(np.arange(1, rounds + 1), 2), "client": np.tile([0, 1], rounds)})
    run_dir.append_segment("clients", 1, clients)
    if status == "finished":
        run_dir.join_segments()


def _damaged(status: str, damage: Callable[[Path], None]) -> Callable[[Sandbox], None]:
    def setup(sandbox: Sandbox) -> None:
        make_run_dir(sandbox, status)
        damage(sandbox.run)

    return setup


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / name).write_bytes(content if isinstance(content, bytes) else content.encode())


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / name).unlink()


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _checkpoint(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    """Rewrite latest.pt with ``change`` applied to the loaded checkpoint (its result saved when not None)."""

    def damage(run_dir: Path) -> None:
        import torch

        path = run_dir / "checkpoints" / "latest.pt"
        checkpoint = torch.load(path, weights_only=True)
        replaced = change(checkpoint)
        torch.save(checkpoint if replaced is None else replaced, path)

    return damage


def _nan_params(checkpoint: dict) -> None:
    checkpoint["server"]["global_params"][3] = float("nan")


def _inf_velocity(checkpoint: dict) -> None:
    checkpoint["server"]["optimizer"]["velocity"][0] = float("inf")


def _other_shape(checkpoint: dict) -> None:
    import torch

    checkpoint["server"]["global_params"] = torch.zeros(1000)


def _a_tensor(checkpoint: dict) -> Any:
    import torch

    return torch.zeros(3)


def _foreign_module(checkpoint: dict) -> Any:
    import torch

    return torch.nn.Linear(2, 2)


def _records_mlflow_run(store: str) -> Callable[[Sandbox], None]:
    """The sandbox run directory recording an MLflow run that is ``deleted`` in its store, ``absent`` from it,
    or whose store is ``gone``."""

    def setup(sandbox: Sandbox) -> None:
        import json

        from mlflow import MlflowClient

        make_run_dir(sandbox)
        mlflow_run_id = "0123456789abcdef0123456789abcdef"
        if store != "gone":
            client = MlflowClient(tracking_uri=f"sqlite:///{sandbox.out / 'mlflow.db'}")
            run = client.create_run(client.create_experiment("byzlab"))
            if store == "deleted":
                mlflow_run_id = run.info.run_id
                client.delete_run(mlflow_run_id)
        state_path = sandbox.run / "run.json"
        state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "mlflow_run_id": mlflow_run_id}))

    return setup


def resume(name: str, damage: Callable[[Path], None], expect: str, status: str = "interrupted") -> Case:
    return Case("run directories", name, ("run", "--resume", "{run}"), expect, _damaged(status, damage))


CHECKPOINT = "checkpoints/latest.pt"
RUN_DIR_CASES = [
    resume("run.json garbage", _write("run.json", "{status: running"), "run.json is not a JSON record"),
    resume("run.json empty", _write("run.json", ""), "run.json is not a JSON record"),
    resume("run.json invalid UTF-8", _write("run.json", b'{"status": "\xff"}'), "run.json is not a JSON record"),
    resume("run.json a list", _write("run.json", "[1, 2]"), "run.json holds a list"),
    resume("run.json without status", _write("run.json", '{"round": 2}'), "run.json has no status"),
    resume("run.json unknown status", _write("run.json", '{"status": "paused"}'), "status 'paused'"),
    resume("run.json round not a number", _write("run.json", '{"status": "running", "round": "two"}'),
           "run.json has round 'two'"),
    resume("run.json missing", _remove("run.json"), "has no run.json"),
    resume("config.yaml missing", _remove("config.yaml"), "config.yaml is missing"),
    resume("config.yaml YAML tag", _write("config.yaml", "run: !!python/object/apply:os.system ['true']\n"),
           "config.yaml does not read"),
    resume("config.yaml not YAML", _write("config.yaml", "run: {rounds: [1,\n"), "config.yaml does not read"),
    resume("config.yaml invalid UTF-8", _write("config.yaml", b"run: \xff\n"), "config.yaml does not read"),
    resume("config.yaml a list", _write("config.yaml", "- 1\n"), "config.yaml does not read"),
    resume("config.yaml invalid config", _write("config.yaml", "clients: {lr: -1}\n"), "config.yaml is not a valid config"),
    resume("config.yaml non-finite", _write("config.yaml", "clients: {lr: .nan}\n"), "config.yaml is not a valid config"),
    resume("config.yaml unknown key", _write("config.yaml", "run: {roundz: 3}\n"), "config.yaml is not a valid config"),
    resume("latest.pt truncated", _truncate(CHECKPOINT), f"{CHECKPOINT} does not load"),
    resume("latest.pt empty", _write(CHECKPOINT, b""), f"{CHECKPOINT} does not load"),
    resume("latest.pt garbage", _write(CHECKPOINT, b"not a checkpoint at all" * 10), f"{CHECKPOINT} does not load"),
    resume("latest.pt a pickled module", _checkpoint(_foreign_module), f"{CHECKPOINT} does not load"),
    resume("latest.pt a foreign dict", _checkpoint(lambda c: {"state": 1}), "is not a byzlab checkpoint"),
    resume("latest.pt a tensor", _checkpoint(_a_tensor), "is not a byzlab checkpoint"),
    resume("latest.pt another model's shape", _checkpoint(_other_shape), "holds 1000 parameters"),
    resume("latest.pt NaN parameters", _checkpoint(_nan_params), "holds NaN or infinite parameters"),
    resume("latest.pt infinite momentum", _checkpoint(_inf_velocity), "holds NaN or infinite parameters"),
    resume("latest.pt negative round", _checkpoint(lambda c: c.update(round=-1)), "has round -1"),
    resume("latest.pt after the last round", _checkpoint(lambda c: c.update(round=99)), "is of round 99"),
    resume("latest.pt of another run", _checkpoint(lambda c: c.update(run_id="0123456789ab")),
           "is the checkpoint of run 0123456789ab"),
    resume("metrics segment garbage", _write("segments/metrics-0000001.parquet", b"PAR1 garbage"),
           "metrics-0000001.parquet is not a readable Parquet table"),
    resume("clients segment garbage", _write("segments/clients-0000001.parquet", b"\x00" * 64),
           "clients-0000001.parquet is not a readable Parquet table"),
    resume("metrics segment truncated", _truncate("segments/metrics-0000001.parquet"), "metrics-0000001.parquet"),
    resume("joined metrics garbage", _write("metrics.parquet", b"garbage"), "metrics.parquet is not a readable"),
    resume("finished: metrics.parquet garbage", _write("metrics.parquet", b"garbage"),
           "metrics.parquet is not a readable Parquet table", status="finished"),
    resume("finished: metrics.parquet missing", _remove("metrics.parquet"), "holds no test accuracy",
           status="finished"),
    resume("finished: metrics.parquet truncated", _truncate("metrics.parquet"), "metrics.parquet", status="finished"),
    resume("finished: run.json garbage", _write("run.json", "\x00\x01"), "run.json", status="finished"),
    Case("run directories", "run.json: its MLflow run deleted", ("run", "--resume", "{run}"),
         "which was deleted in MLflow (undo: MLFLOW_TRACKING_URI=", _records_mlflow_run("deleted")),
    Case("run directories", "run.json: its MLflow run absent", ("run", "--resume", "{run}"),
         "which the MLflow store", _records_mlflow_run("absent")),
    Case("run directories", "run.json: its MLflow store gone", ("run", "--resume", "{run}"), "is gone",
         _records_mlflow_run("gone")),
    Case("run directories", "resume a file", ("run", "--resume", "{root}/taken"), "is a file", _file_as_output),
    Case("run directories", "resume a missing directory", ("run", "--resume", "{root}/nope"), "does not exist"),
    Case("run directories", "resume a directory without run.json", ("run", "--resume", "{out}"), "has no run.json"),
    Case("run directories", "rerun over a damaged run.json",
         ("run", "-o", "run.output_dir={out}", "-o", f"run.rounds={RUN_ROUNDS}", "-o", "run.checkpoint_every=2"),
         "--force", _damaged("interrupted", _write("run.json", "garbage"))),
    Case("run directories", "rerun over a damaged finished run",
         ("run", "-o", "run.output_dir={out}", "-o", f"run.rounds={RUN_ROUNDS}", "-o", "run.checkpoint_every=2"),
         "metrics.parquet", _damaged("finished", _write("metrics.parquet", b"garbage"))),
]


# ------------------------------------------------------------------------------------------------ sweep directories

SWEEP_NAME = "grid"
SWEEP_SPEC = {"name": SWEEP_NAME, "base": {"run": {"output_dir": "out", "rounds": 2}},
              "grid": {"partition.beta": [0.3, 1.0]}}


def make_sweep_dir(sandbox: Sandbox) -> None:
    """An interrupted, untracked sweep directory as ``byzlab sweep`` leaves it (before its trials ran)."""
    import json

    import yaml

    sandbox.sweep.mkdir(parents=True)
    (sandbox.sweep / "sweep.yaml").write_text(yaml.safe_dump(SWEEP_SPEC))
    (sandbox.sweep / "sweep.json").write_text(json.dumps(
        {"name": SWEEP_NAME, "sweep_id": "0123456789ab", "status": "interrupted", "trials": 2, "parent_run_id": None,
         "tracking_uri": None, "created": "2024-01-01T00:00:00"}))


def _damaged_sweep(damage: Callable[[Path], None]) -> Callable[[Sandbox], None]:
    def setup(sandbox: Sandbox) -> None:
        make_sweep_dir(sandbox)
        damage(sandbox.sweep)

    return setup


def _sweep_file_over_damaged_dir(sandbox: Sandbox) -> None:
    import yaml

    _damaged_sweep(_write("sweep.json", "garbage"))(sandbox)
    sandbox.write("grid.yaml", yaml.safe_dump(SWEEP_SPEC))


def sweep_resume(name: str, damage: Callable[[Path], None], expect: str, command: str = "resume") -> Case:
    return Case("sweep directories", name, (command, "{sweep}"), expect, _damaged_sweep(damage))


SWEEP_DIR_CASES = [
    sweep_resume("sweep.json garbage", _write("sweep.json", "{status: running"), "sweep.json is not a JSON record"),
    sweep_resume("sweep.json empty", _write("sweep.json", ""), "sweep.json is not a JSON record"),
    sweep_resume("sweep.json invalid UTF-8", _write("sweep.json", b'{"status": "\xff"}'), "sweep.json is not a JSON"),
    sweep_resume("sweep.json a list", _write("sweep.json", "[1]"), "sweep.json holds a list"),
    sweep_resume("sweep.json without ids", _write("sweep.json", '{"status": "interrupted"}'),
                 "sweep.json has no sweep_id, parent_run_id"),
    sweep_resume("sweep.json id a number", _write("sweep.json", '{"status": "x", "sweep_id": 3, "parent_run_id": null}'),
                 "sweep.json has a sweep_id or parent_run_id that is not a string"),
    sweep_resume("sweep.yaml missing", _remove("sweep.yaml"), "sweep.yaml does not read"),
    sweep_resume("sweep.yaml YAML tag", _write("sweep.yaml", "base: !!python/object/apply:os.system ['true']\n"),
                 "sweep.yaml does not read"),
    sweep_resume("sweep.yaml not YAML", _write("sweep.yaml", "grid: {a: [1,\n"), "sweep.yaml does not read"),
    sweep_resume("sweep.yaml an invalid sweep", _write("sweep.yaml", "grid: {run.roundz: [1, 2]}\n"),
                 "sweep.yaml does not read"),
    sweep_resume("report: sweep.json garbage", _write("sweep.json", "garbage"), "sweep.json is not a JSON record",
                 command="report"),
    Case("sweep directories", "sweep over a damaged sweep.json", ("sweep", "{root}/grid.yaml"), "--force",
         _sweep_file_over_damaged_dir),
    Case("sweep directories", "resume a directory without sweep.json", ("resume", "{out}"),
         "is not a byzlab sweep directory"),
]


def cases() -> list[Case]:
    """Every case of the table, names unique."""
    table = [*FILE_CASES, *_field_cases(), *UNKNOWN_CASES, *PARAMETER_CASES, *SETTING_CASES, *DATA_CASES,
             *OUTPUT_CASES, *RUN_DIR_CASES, *SWEEP_DIR_CASES]
    names = [case.name for case in table]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"case names must be unique: {sorted(duplicates)}"
    return table

