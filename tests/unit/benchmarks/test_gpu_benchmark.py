"""benchmarks/gpu.py on CPU: its pure PyTorch loop reproduces byzlab's stored rounds bit for bit, and the
script runs end to end, within its budget, and writes the results table."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml
from machine_kind import stored_first_rounds

REPOSITORY = Path(__file__).resolve().parents[3]
BEHAVIOUR = REPOSITORY / "tests" / "e2e" / "fixtures" / "behaviour"


def _pure_rounds(gpu_benchmark, name: str, rounds: int) -> list[dict[str, float]]:
    import torch

    from byzlab.orchestrator.config import build_config
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    cfg = build_config(yaml.safe_load((BEHAVIOUR / f"{name}.yaml").read_text()) or {})
    loop = gpu_benchmark.PureLoop(resolve_inputs(cfg), torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stored runs' actors (1 CPU each): a reduction's order follows the threads
    try:
        return [loop.run_round(r) for r in range(1, rounds + 1)]
    finally:
        torch.set_num_threads(threads)


def test_the_pure_loop_reproduces_the_stored_quickstart_rounds(gpu_benchmark):
    """Same data, model, seeds, local training, aggregation and evaluation as byzlab's actors: the first
    three rounds of the stored quickstart run (digits, FedAvg), to the bit."""
    assert _pure_rounds(gpu_benchmark, "quickstart", 3) in stored_first_rounds("quickstart", 3)


@pytest.mark.slow  # ~40 s on 2 cores: three evaluations of the CNN on 10,000 images on one thread
def test_the_pure_loop_reproduces_the_stored_lasa_rounds_under_a_model_attack(gpu_benchmark):
    """LASA (layer-wise context) under ByzMean (the adversary rewrites the malicious rows): the stored
    Fashion-MNIST run, all three rounds, to the bit."""
    from byzlab.orchestrator.data.datasets import DEBIAN_FASHION_MNIST_DIR

    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (installed by .ci/run)")
    assert _pure_rounds(gpu_benchmark, "fmnist_lasa_byzmean", 3) in stored_first_rounds("fmnist_lasa_byzmean", 3)


def test_placement_splits_the_cpus_and_shares_the_gpu_among_actors_and_server(gpu_benchmark):
    """16 CPUs, 8 client actors: the server keeps 2, each actor gets 14 / 8 = 1.75; the GPU is split in
    nine shares of 0.1111 (Ray's 1e-4 grid, rounded down so the nine fit in one GPU)."""
    assert gpu_benchmark.placement(8, 16, 1) == [
        "run.client_actors=8", "run.client_actor_cpus=1.75", "run.server_cpus=2",
        "run.client_actor_gpus=0.1111", "run.server_gpus=0.1111",
    ]
    assert gpu_benchmark.placement(2, 2, 0) == ["run.client_actors=2", "run.client_actor_cpus=0.5", "run.server_cpus=1"]


def test_a_case_stops_when_its_next_round_would_end_past_the_budget(gpu_benchmark):
    """After a round of ~1 s, another fits in 60 s left and not in 0.5 s left; the row says how many ran."""
    now = time.perf_counter()
    roomy = gpu_benchmark.CaseTimes(started=now - 2.0, rounds_started=now - 1.0)
    roomy.end_of_round({"test_accuracy": 0.5}, deadline=now + 60)
    tight = gpu_benchmark.CaseTimes(started=now - 2.0, rounds_started=now - 1.0)
    with pytest.raises(gpu_benchmark.BudgetSpent):
        tight.end_of_round({"test_accuracy": 0.6}, deadline=now + 0.5)
    assert tight.accuracy == 0.6 and tight.row(planned_rounds=4)["rounds"] == "1 of 4"
    assert roomy.row(planned_rounds=1)["rounds"] == "1"


def _tables(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    """The results file's tables: workload heading -> case -> column -> cell."""
    tables, heading, columns = {}, None, None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            heading, columns = line[3:], None
            tables[heading] = {}
        elif line.startswith("| ") and heading is not None:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if columns is None:
                columns = cells
            elif not cells[0].startswith("---"):
                tables[heading][cells[0]] = dict(zip(columns, cells))
    return tables


def _check_measured(table: dict[str, dict[str, str]], cases: list[str], rounds: int) -> None:
    """Every case ran all rounds at a positive rate, and byzlab's accuracy is the pure loop's (CPU: the same
    numbers whatever the placement)."""
    for case in cases:
        row = table[case]
        assert row["rounds"] == str(rounds), row
        rate, steady = float(row["rounds/s"]), float(row["steady round s"])
        assert rate > 0 and math.isclose(rate * steady, 1, rel_tol=0.01), row
        assert float(row["end to end s"]) >= float(row["startup s"]) > 0, row
        # pure uses every CPU as torch threads, an actor its own share: sums differ in their last bits
        assert abs(float(row["test accuracy"]) - float(table["pure"]["test accuracy"])) <= 0.01, row
        assert row["GPU util %"] == "", row  # no GPU here: the GPU columns stay empty
    assert table["pure"]["x pure"] == "1.00"


@pytest.mark.usefixtures("ray_cluster")
def test_the_script_runs_end_to_end_and_writes_the_results_table(gpu_benchmark, tmp_path):
    """One tiny case: LASA's round on digits (5 sampled clients), 2 rounds, pure loop and 1 client actor."""
    output = tmp_path / "gpu.md"
    gpu_benchmark.main(["--workloads", "lasa", "--actors", "1", "--rounds", "2", "--dataset", "digits",
                        "--clients-scale", "0.05", "--attack", "none", "--output", str(output)])
    [(heading, table)] = _tables(output).items()
    assert heading.startswith("LASA Table 1")
    assert list(table) == ["pure", "byzlab 1"]
    assert tuple(table["pure"]) == gpu_benchmark.COLUMNS
    _check_measured(table, ["pure", "byzlab 1"], rounds=2)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_both_workloads_with_two_actor_counts(gpu_benchmark, tmp_path):
    """LASA's and SDEA's rounds (SDEA shrunk: 1 local epoch, 1 SDEA epoch on 64 public images) under the
    default attack, pure loop and 1 and 2 client actors."""
    output = tmp_path / "gpu.md"
    gpu_benchmark.main(["--workloads", "lasa,sdea", "--actors", "1,2", "--rounds", "2", "--dataset", "digits",
                        "--clients-scale", "0.05", "--set", "sdea:clients.local_epochs=1",
                        "--set", "sdea:server.aggregator_params.epochs=1", "--set", "sdea:server.public_data.size=64",
                        "--set", "sdea:server.aggregator_params.public_subset=64", "--output", str(output)])
    tables = _tables(output)
    assert [heading.split(",")[0] for heading in tables] == ["LASA Table 1", "SDEA Table 8"]
    for table in tables.values():
        _check_measured(table, ["pure", "byzlab 1", "byzlab 2"], rounds=2)


@pytest.mark.usefixtures("ray_cluster")
def test_a_spent_budget_skips_the_cases_and_still_writes_every_row(gpu_benchmark, tmp_path):
    output = tmp_path / "gpu.md"
    gpu_benchmark.main(["--workloads", "lasa", "--actors", "1,2", "--dataset", "digits", "--clients-scale", "0.05",
                        "--budget-seconds", "1e-6", "--output", str(output)])
    [table] = _tables(output).values()
    assert {case: row["rounds"] for case, row in table.items()} == {
        "pure": "skipped (budget)", "byzlab 1": "skipped (budget)", "byzlab 2": "skipped (budget)"}


def test_bad_options_are_one_line_naming_the_option(gpu_benchmark, capsys):
    for argv, expected in ((["--workloads", "lasa,cifar"], "--workloads: unknown 'cifar'; allowed: lasa, sdea"),
                           (["--set", "resnet:run.seed=1"], "--set: unknown workload in 'resnet:run.seed'"),
                           (["--actors", "1,two"], "--actors: '1,two' is not a comma-separated list")):
        with pytest.raises(SystemExit):
            gpu_benchmark.parse_args(argv)
        assert expected in capsys.readouterr().err
