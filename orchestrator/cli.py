"""The ``byzlab`` command line."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from byzlab.orchestrator.core import interrupts
from byzlab.orchestrator.core.errors import ConfigError, DatasetNotFoundError, RunAbortedError, Terminated
from byzlab.orchestrator.config import ExperimentConfig, load_config, run_id

if TYPE_CHECKING:
    from byzlab.orchestrator.run.experiment import Prepared, RunResult


app = typer.Typer(
    help="byzlab: Byzantine-robust federated-learning experiments on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)
UI_PORT = 5000  # byzlab ui's default port, in the links it prints

OverrideOption = typer.Option(
    [], "-o", "--override", metavar="KEY=VALUE", help="dotted override, e.g. -o partition.beta=0.3 (repeatable)"
)


@app.callback()
def _importable_here() -> None:
    # Like `python -m`, the command imports from the current directory: a config may name the user's own
    # components by import path (README, "Your own components"); appended, so it shadows no installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def _fail(message: str, code: int = 2) -> None:
    """Print ``message`` as one ``error:`` line and exit with ``code`` (2: bad input; 1: the run failed)."""
    message = " ".join(message.split("\n"))  # one line, whatever the error's text holds
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # brackets are text
    raise typer.Exit(code)


def _progress() -> Progress:
    return Progress(
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("acc {task.fields[accuracy]}"),
        TextColumn("{task.fields[seconds]} s/round"),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="experiment YAML; omit for the built-in quickstart"),
    override: list[str] = OverrideOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the interrupted run in this directory"),
    force: bool = typer.Option(False, "--force", help="rerun even if this exact run already exists"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local one)"),
) -> None:
    """Run one federated experiment (the quickstart when no CONFIG is given)."""
    run_dir: Path | None = resume
    try:  # Ctrl-C at any moment, from here to the last line: exit 130 with what to do next
        from byzlab.orchestrator.run import experiment  # Ray and MLflow load only for commands that need them

        try:
            if resume is not None:
                if config is not None or override:
                    _fail("--resume takes the run directory only: its config.yaml is the config")
                prepared = experiment.prepare_resume(resume, address=address)
            else:
                prepared = experiment.prepare(load_config(config, override), force=force, address=address)
        except (ConfigError, DatasetNotFoundError) as err:
            _fail(str(err))
        run_dir = prepared.run_dir.path
        result = _execute_with_progress(experiment, prepared, address)
        interrupts.honour()  # a Ctrl-C whose KeyboardInterrupt a finalizer swallowed
        _print_result(prepared.cfg, run_dir, result)
    except KeyboardInterrupt:
        _interrupted(run_dir, "interrupted", 130)
    except Terminated as err:
        _interrupted(run_dir, "terminated", err.code)


def _execute_with_progress(experiment, prepared: Prepared, address: str | None) -> RunResult:
    """Run the prepared experiment under a progress bar. A Ray this call started is shut down before it
    returns: a Ctrl-C during the shutdown is then one this command handles (at exit it would be ignored)."""
    import ray

    started_ray = not ray.is_initialized()
    cfg = prepared.cfg
    if prepared.state != "finished":
        action = "resuming" if prepared.state == "resumed" else "running"
        console.print(
            f"{action} [bold]{cfg.server.aggregator}[/] on {cfg.data.dataset} "
            f"({cfg.clients.num_clients} clients, {cfg.partition.scheme}) -> {prepared.run_dir.path}"
        )
    with _progress() as progress:
        task = progress.add_task("rounds", total=cfg.run.rounds, accuracy="  -  ", seconds="  -  ")
        if prepared.state == "resumed":
            progress.update(task, completed=prepared.run_dir.read_state().get("round", 0))

        def on_round(metrics: dict) -> None:
            interrupts.honour()
            accuracy = metrics.get("test_accuracy")
            fields = {"seconds": f"{metrics['round_seconds']:.2f}"}
            if accuracy is not None:
                fields["accuracy"] = f"{accuracy:.3f}"
            progress.update(task, completed=metrics["round"], **fields)

        try:
            result = experiment.execute(prepared, on_round=on_round, address=address)
        except ConfigError as err:
            _fail(str(err))
        except RunAbortedError as err:
            _fail(str(err), code=1)
        finally:
            if started_ray:
                ray.shutdown()
    return result


def _print_result(cfg: ExperimentConfig, run_dir: Path, result: RunResult) -> None:
    if result.status == "already finished":
        console.print(f"this exact run is already complete in {run_dir} (use --force to rerun it)")
    summary = "  ".join(f"{k} = {v:.4f}" for k, v in result.summary.items())
    console.print(f"[bold green]done[/]  {summary}")
    console.print(f"results: {run_dir}   (MLflow: byzlab ui --output-dir {cfg.run.output_dir})", soft_wrap=True)


def _interrupted(run_dir: Path | None, what: str, code: int) -> None:
    """Say what a Ctrl-C (``interrupted``, exit 130) or a SIGTERM (``terminated``, exit 143) left and how to
    go on: 128 + the signal's number is the exit code a shell expects."""
    from byzlab.orchestrator.run.storage import RunDirectory

    directory = RunDirectory(run_dir) if run_dir is not None else None
    written = directory is not None and directory.exists()
    try:
        finished = written and directory.read_state()["status"] == "finished"
    except ConfigError:  # damaged: the resume command says how
        finished = False
    if not written:
        errors.print(f"{what} before the run wrote anything; nothing to resume")
    elif finished:
        errors.print(f"{what} after the run finished; its results are complete in {run_dir}", soft_wrap=True)
    else:
        errors.print(f"{what}; continue with: byzlab run --resume {run_dir}", soft_wrap=True)
    raise typer.Exit(code)


def _finish_sweep(outcome) -> None:
    """Say how the sweep ended and where its table is; exit 1 unless every trial finished."""
    state = "[bold green]done[/]" if outcome.complete else "[bold yellow]incomplete[/]"
    console.print(f"{state}  {outcome.finished}/{outcome.total} trials finished  ->  {outcome.directory}")
    for failure in outcome.failed:
        errors.print(f"failed: {failure}", highlight=False, soft_wrap=True)
    if outcome.report:
        console.print(f"table: {outcome.report[0]}  (all report files in {outcome.report[0].parent})", soft_wrap=True)
    if outcome.parent_run:
        console.print(f"MLflow: byzlab ui {outcome.ui_options}, then open its parent run "
                      f"{ui_link(UI_PORT, *outcome.parent_run)}", soft_wrap=True, highlight=False)
    if not outcome.complete:
        console.print(f"continue with: byzlab resume {outcome.directory}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., metavar="SWEEP", help="sweep YAML, or the name of a ready sweep (quickstart)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="validate every trial and its placement; print trials, reservations and total work"
    ),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address: auto or HOST:PORT"),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="trials at a time"),
    force: bool = typer.Option(False, "--force", help="delete an existing sweep of this name and start over"),
) -> None:
    """Run a grid of experiments on Ray Tune; ends with the report's tables and plots."""
    from byzlab.sweeps import runner
    from byzlab.sweeps.spec import load_sweep

    if Path(sweep_file).is_dir():
        _fail(f"sweep file '{sweep_file}' is a directory; give the sweep's YAML file (or `byzlab resume` a sweep "
              "directory)")
    try:
        grid = load_sweep(sweep_file)
        if dry_run:
            for line in runner.dry_run(grid, address=address, max_concurrent=max_concurrent):
                console.print(line, highlight=False, soft_wrap=True)
            return
        outcome = runner.launch(grid, address=address, max_concurrent=max_concurrent, force=force)
    except (ConfigError, DatasetNotFoundError) as err:
        _fail(str(err))
    _finish_sweep(outcome)


@app.command()
def resume(
    sweep_dir: Path = typer.Argument(..., help="the sweep's directory (byzlab-results/sweeps/<name>)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address: auto or HOST:PORT"),
) -> None:
    """Continue an interrupted sweep: finished trials are kept, the others continue from their checkpoints."""
    from byzlab.sweeps import runner

    try:
        outcome = runner.resume(sweep_dir, address=address)
    except (ConfigError, DatasetNotFoundError) as err:
        _fail(str(err))
    _finish_sweep(outcome)


@app.command()
def report(
    source: str = typer.Argument(..., help="a sweep directory, or an MLflow experiment name"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default: SWEEP_DIR/report, or "
                                       "OUTPUT_DIR/reports/<experiment>)"),
    output_dir: Path = typer.Option(Path("byzlab-results"), "--output-dir", help="store of an experiment name"),
    uri: Optional[str] = typer.Option(None, "--uri", help="MLflow tracking URI (default: the output dir's store)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="the table's metric: acc_last5_mean, acc_best, "
                                         "acc_final or backdoor_asr (default: the sweep file's report.metric, else "
                                         "acc_last5_mean)"),
) -> None:
    """Paper-style tables (Markdown, CSV, LaTeX) and plots from a sweep, logged to its MLflow parent run."""
    from byzlab.sweeps import runner

    try:
        paths = runner.report(source, out=out, output_dir=output_dir, uri=uri, metric=metric)
    except (ConfigError, ValueError) as err:
        _fail(str(err))
    console.print(f"table: {paths[0]}  (all report files in {paths[0].parent})", soft_wrap=True)



def _default_models(dataset) -> str:
    """A dataset's default model, or one per ``input_kind`` (``huggingface``)."""
    default = dataset.default_model
    return ", ".join(f"{kind}: {model}" for kind, model in default.items()) if isinstance(default, dict) else default

@app.command()
def validate(
    config: Path = typer.Argument(..., help="experiment YAML"),
    override: list[str] = OverrideOption,
) -> None:
    """Check a config and print it fully resolved, with its run id."""
    try:
        cfg = load_config(config, override)
    except (ConfigError, DatasetNotFoundError) as err:
        _fail(str(err))
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="", highlight=False)
    console.print(f"# valid; run id {run_id(cfg)}")


class Listing(str, Enum):
    datasets = "datasets"
    partitions = "partitions"
    models = "models"
    aggregators = "aggregators"
    pre_aggregators = "pre-aggregators"
    attacks = "attacks"
    server_optimizers = "server-optimizers"


def _rows(what: Listing) -> list[tuple[str, str]]:
    """(name, description) of every registered component of one kind, from its registry."""
    if what in (Listing.aggregators, Listing.pre_aggregators, Listing.attacks):
        from byzlab import aggregators, attacks

        registry = {Listing.aggregators: aggregators.AGGREGATORS, Listing.pre_aggregators: aggregators.PRE_AGGREGATORS,
                    Listing.attacks: attacks.ATTACKS}[what]
        heading = (lambda entry: f"({entry.kind} attack)") if what is Listing.attacks else (lambda entry: "")
    else:
        from byzlab.orchestrator.data.datasets import DATASETS
        from byzlab.orchestrator.data.partition import PARTITION_SCHEMES
        from byzlab.orchestrator.learning.models import MODELS
        from byzlab.orchestrator.learning.server_optimizers import SERVER_OPTIMIZERS

        registry = {Listing.datasets: DATASETS, Listing.partitions: PARTITION_SCHEMES, Listing.models: MODELS,
                    Listing.server_optimizers: SERVER_OPTIMIZERS}[what]
        heading = (lambda entry: f"(default model: {_default_models(entry)})") if what is Listing.datasets else (
            lambda entry: "")
    rows = [(name, registry.describe(name, _plugin_heading(registry, name, heading))) for name in registry.names()]
    return rows + [(name, f"(plug-in, not loaded) {why}") for name, why in registry.broken().items()]


def _plugin_heading(registry, name: str, heading) -> str:
    """The entry's heading, and where it came from when it is a plug-in (an entry point's distribution)."""
    origin = registry.origin(name)
    return " ".join(part for part in (heading(registry.get(name)), origin and f"(plug-in: {origin})") if part)


@app.command("list")
def list_(what: Listing = typer.Argument(..., help="what to list")) -> None:
    """List the available datasets, partitions, models, aggregators, pre-aggregators, attacks or server
    optimizers (with parameters and defaults)."""
    table = Table(show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, text in _rows(what):
        table.add_row(name, Text(text))  # Text: brackets in descriptions are not markup
    console.print(table)


@app.command()
def ui(
    output_dir: Path = typer.Option(Path("byzlab-results"), "--output-dir", help="the runs' run.output_dir"),
    uri: Optional[str] = typer.Option(None, "--uri", help="MLflow tracking URI (default: the output dir's store)"),
    port: int = typer.Option(UI_PORT, "--port"),
) -> None:
    """Open the MLflow UI on the run store, bound to 127.0.0.1 only; prints each experiment's runs table."""
    from byzlab.orchestrator.run.tracking import default_tracking_uri, store_client

    store = uri or default_tracking_uri(output_dir)
    if uri is None and not (output_dir / "mlflow.db").is_file():
        _fail(f"no MLflow store at {output_dir / 'mlflow.db'}; run an experiment first or pass --output-dir")
    client = store_client(store)
    experiments = [e for e in client.search_experiments() if client.search_runs([e.experiment_id], max_results=1)]
    console.print(f"MLflow UI on http://127.0.0.1:{port}  (store {store}); Ctrl-C to stop", soft_wrap=True)
    for experiment in experiments:  # a fresh browser on the bare address lands on MLflow's GenAI pages
        view = _save_runs_view(client, experiment.experiment_id)
        console.print(f"runs of {experiment.name}: {ui_link(port, experiment.experiment_id)}?{view}",
                      soft_wrap=True, highlight=False)
    sys.stdout.flush()
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI jobs: 7 idle worker processes
    # This interpreter's MLflow, found without PATH (the environment's bin/ need not be on it).
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                              "--host", "127.0.0.1", "--port", str(port)])


def ui_link(port: int, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs table, or of one run."""
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")


RUNS_VIEW = "byzlab"  # the runs table's shared view, an experiment tag mlflow.sharedViewState.<name>
_RUNS_VIEW = {
    "selectedColumns": ["tags.`byzlab.defense`", "tags.`byzlab.attack`", "metrics.`acc_last5_mean`",
                        "metrics.`acc_best`"],
    # grouped by dataset: a sweep's trials are listed with the single runs, not folded under the sweep's
    # parent run (unfolded rows are not part of a shared view; the parent runs form MLflow's "Additional runs")
    "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "byzlab.dataset"}]},
}


def _save_runs_view(client, experiment_id: str) -> str:
    """Save the runs table's view byzlab links to (every experiment, sweep trials included, grouped by
    dataset, with its defense, attack and accuracies) as an MLflow shared view; returns its URL query.
    Without it the table shows none of these columns: MLflow keeps the columns chosen in the browser's
    storage, not in the link."""
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{RUNS_VIEW}", json.dumps(_RUNS_VIEW))
    return f"viewStateShareKey={RUNS_VIEW}"
