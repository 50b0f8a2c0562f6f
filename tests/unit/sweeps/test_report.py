"""sweeps.report: grid inference, tables, plots and the two record loaders, on hand-made records."""

import csv
import json
import logging
import re

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from byzlab.orchestrator.config import build_config, flatten
from byzlab.sweeps.report import (
    TrialRecord,
    table_cells,
    build_grid,
    detection_rates,
    records_from_mlflow,
    records_from_sweep_dir,
    write_report,
)

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFENSE_PARAMS = {"fedavg": {"weighting": "sample"}, "median": {}}
ATTACK_PARAMS = {"lie": {"z": 1.0}, "sign_flip": {"scale": 4.0}, "none": {}}


def make_params(aggregator, attack, *, sparsity=0.3, scale=4.0, beta=0.5, fraction=0.2, seed=0, dataset="digits",
                quantity_params=None):
    """A flattened config as MLflow stores it; execution-only keys vary with the seed on purpose."""
    lasa_params = {"sparsity": sparsity, "lambda_m": 2.0}
    aggregator_params = lasa_params if aggregator == "lasa" else DEFENSE_PARAMS[aggregator]
    attack_params = {**ATTACK_PARAMS[attack], **({"scale": scale} if attack == "sign_flip" else {})}
    tree = {
        "data": {"dataset": dataset},
        "partition": {"scheme": "dirichlet", "beta": beta},
        "server": {"aggregator": aggregator, "aggregator_params": aggregator_params},
        "threat": {
            "attack": attack, "attack_params": attack_params, "fraction": fraction,
            "quantity_attack": "enlarge_quantity" if quantity_params else "none",
            "quantity_params": quantity_params or {},
        },
        "run": {"rounds": 2, "seed": seed, "client_actors": seed + 1, "output_dir": f"/tmp/out{seed}"},
        "tracking": {"experiment": f"exp{seed}"},
    }
    return {key: str(value) for key, value in flatten(tree).items()}


def make_record(params, accuracy, detection=None):
    """acc_last5_mean = ``accuracy``; test accuracy 0.1 lower in round 1; detection (tpr, fpr) per round."""
    curves = {"test_accuracy": [(1, accuracy - 0.1), (2, accuracy)]}
    if detection is not None:
        curves["detection_tpr"] = [(1, detection[0]), (2, detection[0])]
        curves["detection_fpr"] = [(1, detection[1]), (2, detection[1])]
    return TrialRecord(params, {"acc_last5_mean": accuracy, "acc_best": accuracy, "acc_final": accuracy}, curves)


# (beta, fraction) -> defense -> attack -> accuracy per seed; created in this order, so groups, fedavg and
# attacks all appear out of display order. fedavg under sign_flip at β=0.1 never finished.
ACCURACY = {
    (0.5, 0.2): {
        ("lasa", 0.3): {"sign_flip": (0.88, 0.89), "lie": (0.90, 0.94)},
        ("lasa", 0.5): {"sign_flip": (0.90,), "lie": (0.85, 0.87)},
        ("fedavg", None): {"sign_flip": (0.10, 0.12), "lie": (0.80, 0.84)},
    },
    (0.1, 0.3): {
        ("lasa", 0.3): {"sign_flip": (0.60, 0.64), "lie": (0.75, 0.77)},
        ("lasa", 0.5): {"sign_flip": (0.50, 0.52), "lie": (0.74, 0.78)},
        ("fedavg", None): {"lie": (0.70, 0.70)},
    },
}

EXPECTED_MARKDOWN = """\
### β=0.1, Φ=0.3

| defense | sign_flip | lie |
| --- | ---: | ---: |
| fedavg | – | <u>70.00 ± 0.00</u> |
| lasa (sparsity=0.3) | **62.00 ± 2.00** | **76.00 ± 1.00** |
| lasa (sparsity=0.5) | <u>51.00 ± 1.00</u> | **76.00 ± 2.00** |

### β=0.5, Φ=0.2

| defense | sign_flip | lie |
| --- | ---: | ---: |
| fedavg | 11.00 ± 1.00 | 82.00 ± 2.00 |
| lasa (sparsity=0.3) | <u>88.50 ± 0.50</u> | **92.00 ± 2.00** |
| lasa (sparsity=0.5) | **90.00** | <u>86.00 ± 1.00</u> |
"""


@pytest.fixture(scope="module")
def records():
    made = []
    for (beta, fraction), defenses in ACCURACY.items():
        for (aggregator, sparsity), attacks in defenses.items():
            for attack, accuracies in attacks.items():
                for seed, accuracy in enumerate(accuracies):
                    params = make_params(
                        aggregator, attack, sparsity=sparsity, beta=beta, fraction=fraction, seed=seed
                    )
                    detection = (0.75, 0.125) if aggregator == "lasa" else None
                    made.append(make_record(params, accuracy, detection))
    return made


@pytest.fixture(scope="module")
def report(records, tmp_path_factory):
    """The fixture records' report, written once into a directory that does not exist yet."""
    out = tmp_path_factory.mktemp("report") / "new" / "report"
    return out, write_report(records, out)


def test_grid_ignores_execution_keys_and_labels_only_varying_params(records):
    grid = build_grid(records)
    assert grid.group_keys == ["partition.beta", "threat.fraction"]  # run.client_actors etc. vary too
    assert [grid.text(g) for g in grid.groups] == ["β=0.1, Φ=0.3", "β=0.5, Φ=0.2"]
    assert [grid.slug(g) for g in grid.groups] == ["beta0.1_phi0.3", "beta0.5_phi0.2"]
    # fedavg first; lambda_m (2.0 for every lasa) is not part of the label
    assert [grid.text(d) for d in grid.defenses] == ["fedavg", "lasa (sparsity=0.3)", "lasa (sparsity=0.5)"]
    assert [grid.text(a) for a in grid.attacks[grid.groups[0]]] == ["sign_flip", "lie"]


def test_markdown_cells_marks_and_missing(report):
    out, _ = report
    caption, tables = (out / "table.md").read_text().split("\n\n", 1)
    assert "mean ± std" in caption
    assert tables == EXPECTED_MARKDOWN


def test_latex_grouped_headers_and_escaping(report):
    out, _ = report
    tex = (out / "table.tex").read_text()
    assert (
        r" & \multicolumn{2}{c}{$\beta$=0.1, $\Phi$=0.3} & \multicolumn{2}{c}{$\beta$=0.5, $\Phi$=0.2} \\"
    ) in tex
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" in tex
    assert r"Defense & sign\_flip & lie & sign\_flip & lie \\" in tex
    assert (
        r"lasa (sparsity=0.5) & \underline{51.00 $\pm$ 1.00} & \textbf{76.00 $\pm$ 2.00} & \textbf{90.00} & "
        r"\underline{86.00 $\pm$ 1.00} \\"
    ) in tex
    assert r"fedavg & -- & \underline{70.00 $\pm$ 0.00} & 11.00 $\pm$ 1.00 & 82.00 $\pm$ 2.00 \\" in tex
    assert re.search(r"(?<!\\)_", tex) is None  # every underscore escaped
    assert tex.count(r"\begin{tabular}") == 1 and r"\bottomrule" in tex


def test_csv_is_tidy_with_fractions_and_ranks(report):
    out, _ = report
    with (out / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "partition.beta", "threat.fraction", "defense", "attack", "metric", "mean", "std", "seeds", "rank"
    ]
    assert len(rows) == 11  # 2 groups x 3 defenses x 2 attacks, one cell without a run
    by_cell = {(r["partition.beta"], r["threat.fraction"], r["defense"], r["attack"]): r for r in rows}
    single = by_cell["0.5", "0.2", "lasa (sparsity=0.5)", "sign_flip"]
    assert (float(single["mean"]), float(single["std"]), single["seeds"], single["rank"]) == (0.9, 0.0, "1", "1")
    pair = by_cell["0.5", "0.2", "lasa (sparsity=0.3)", "sign_flip"]
    assert float(pair["mean"]) == pytest.approx(0.885, abs=1e-12)
    assert float(pair["std"]) == pytest.approx(0.005, abs=1e-12)
    assert pair["rank"] == "2"
    # tied best in the β=0.1 lie column, so fedavg is second and the ranks are dense
    tied_column = ("lasa (sparsity=0.3)", "lasa (sparsity=0.5)", "fedavg")
    assert [by_cell["0.1", "0.3", d, "lie"]["rank"] for d in tied_column] == ["1", "1", "2"]
    assert ("0.1", "0.3", "fedavg", "sign_flip") not in by_cell


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = matplotlib.image.imread(path).shape
    assert height > 200 and width > 200 and channels in (3, 4)


def test_write_report_files_and_plots(report):
    out, written = report
    assert [p.name for p in written] == [
        "table.md", "table.tex", "table.csv",
        "accuracy_beta0.1_phi0.3.png", "heatmap_beta0.1_phi0.3.png",
        "accuracy_beta0.5_phi0.2.png", "heatmap_beta0.5_phi0.2.png",
        "detection.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    for path in written[3:]:
        _assert_png(path)


def test_single_group_no_detection_and_param_variants(tmp_path):
    """Attack variants differ in scale only; nothing else varies: one unlabelled group, no detection plot."""
    records = [
        make_record(make_params(aggregator, attack, scale=scale, seed=seed), accuracy)
        for attack, scale, accuracy in (("sign_flip", 4.0, 0.5), ("sign_flip", 1.0, 0.7), ("none", 4.0, 0.9))
        for aggregator in ("median", "fedavg")
        for seed in (0, 1)
    ]
    grid = build_grid(records)
    assert grid.group_keys == [] and [grid.text(g) for g in grid.groups] == [""]
    assert [grid.text(a) for a in grid.attacks[grid.groups[0]]] == [
        "none", "sign_flip (scale=1)", "sign_flip (scale=4)"
    ]
    assert [grid.text(d) for d in grid.defenses] == ["fedavg", "median"]

    written = write_report(records, tmp_path)
    assert [p.name for p in written] == [
        "table.md", "table.tex", "table.csv", "accuracy_all.png", "heatmap_all.png"
    ]
    markdown = (tmp_path / "table.md").read_text()
    assert "###" not in markdown
    assert "| fedavg | **90.00 ± 0.00** | **70.00 ± 0.00** | **50.00 ± 0.00** |" in markdown
    assert r"\multicolumn" not in (tmp_path / "table.tex").read_text()
    with (tmp_path / "table.csv").open() as handle:
        assert next(csv.reader(handle)) == ["defense", "attack", "metric", "mean", "std", "seeds", "rank"]


def test_other_varying_key_forms_groups_by_short_name(tmp_path):
    records = [
        make_record(make_params("median", "lie", dataset=dataset), accuracy)
        for dataset, accuracy in (("mnist", 0.9), ("fashion-mnist", 0.8))
    ]
    grid = build_grid(records)
    assert [grid.text(g) for g in grid.groups] == ["dataset=mnist", "dataset=fashion-mnist"]  # first appearance
    written = write_report(records, tmp_path)
    assert {p.name for p in written} >= {"accuracy_dataset-mnist.png", "heatmap_dataset-fashion-mnist.png"}


def test_slugs_stay_distinct_after_sanitising(tmp_path):
    records = [make_record(make_params("median", "lie", dataset=dataset), 0.9) for dataset in ("a b", "a/b")]
    written = write_report(records, tmp_path)
    heatmaps = [p.name for p in written if p.name.startswith("heatmap")]
    assert heatmaps == ["heatmap_dataset-a-b.png", "heatmap_dataset-a-b_2.png"]


def test_empty_section_counts_as_absent():
    """quantity_params is "{}" without a quantity attack and has an alpha_q key with one; the "{}" makes no
    "quantity_params={}" label."""
    records = [
        make_record(make_params("median", "lie", quantity_params=quantity), 0.9)
        for quantity in (None, {"alpha_q": 1.5})
    ]
    grid = build_grid(records)
    assert grid.group_keys == ["threat.quantity_attack", "threat.quantity_params.alpha_q"]
    assert [grid.text(g) for g in grid.groups] == [
        "quantity_attack=none", "quantity_attack=enlarge_quantity, alpha_q=1.5"
    ]
    assert [grid.slug(g) for g in grid.groups] == [
        "quantity_attack-none", "quantity_attack-enlarge_quantity_alpha_q1.5"
    ]


def test_detection_rates_pool_rounds_of_attacked_runs_only():
    def with_detection(aggregator, attack, seed, tpr, fpr):
        record = make_record(make_params(aggregator, attack, seed=seed), 0.9)
        record.curves["detection_tpr"] = list(enumerate(tpr, 1))
        record.curves["detection_fpr"] = list(enumerate(fpr, 1))
        return record

    records = [
        with_detection("median", "lie", 0, [1.0, 0.5], [0.0, 0.25]),
        with_detection("median", "lie", 1, [0.5], []),  # one round with attackers; benign clients never rejected
        with_detection("median", "none", 0, [0.0, 0.0], [1.0, 1.0]),  # no attack: left out
        make_record(make_params("fedavg", "lie"), 0.5),
    ]
    rates = detection_rates(build_grid(records))
    assert [label.name for label in rates] == ["fedavg", "median"]
    fedavg, median = rates.values()
    assert all(np.isnan(fedavg))
    # pooled over rounds: (1 + 0.5 + 0.5) / 3, not the mean of the per-run means (0.75 + 0.5) / 2
    assert median == pytest.approx((2 / 3, 0.125))


def test_build_grid_rejects_no_records():
    with pytest.raises(ValueError, match="no records"):
        build_grid([])


# ---------------------------------------------------------------------------------------------- loaders


def _config(aggregator, seed):
    return build_config({}, [f"server.aggregator={aggregator}", "threat.attack=sign_flip", "threat.fraction=0.2",
                             f"run.seed={seed}", "run.rounds=3"]).to_dict()


def _write_run(runs, name, config, state, metrics):
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "run.json").write_text(json.dumps(state))
    pq.write_table(pa.table(metrics), run / "metrics.parquet")


SUMMARY = {"acc_last5_mean": 0.6, "acc_best": 0.7, "acc_final": 0.7}


def test_records_from_sweep_dir_reads_finished_runs(tmp_path):
    runs = tmp_path / "runs"
    metrics = {
        "round": [1, 2, 3],
        "test_accuracy": [None, 0.5, 0.7],
        "detection_tpr": [1.0, None, 0.5],
        "train_loss": [1.0, 0.9, 0.8],
    }
    _write_run(runs, "bbb", _config("lasa", 0), {"status": "finished", "created": "2024-01-01T00:00:00",
                                                  "summary": SUMMARY}, metrics)
    _write_run(runs, "aaa", _config("median", 1), {"status": "finished", "created": "2024-01-01T00:00:05",
                                                    "summary": {**SUMMARY, "acc_last5_mean": 0.2}}, metrics)
    _write_run(runs, "ccc", _config("krum", 0), {"status": "running", "created": "2024-01-01T00:00:01"}, metrics)

    records = records_from_sweep_dir(tmp_path)
    assert [r.params["server.aggregator"] for r in records] == ["lasa", "median"]  # by creation; krum unfinished
    lasa = records[0]
    assert lasa.params == {key: str(value) for key, value in flatten(_config("lasa", 0)).items()}
    assert lasa.params["threat.fraction"] == "0.2" and lasa.params["server.aggregator_params.norm_clip"] == "True"
    assert lasa.summary == SUMMARY
    assert lasa.curves == {
        "test_accuracy": [(2, 0.5), (3, 0.7)],
        "detection_tpr": [(1, 1.0), (3, 0.5)],
        "detection_fpr": [],
        "backdoor_asr": [],
    }


def test_records_from_sweep_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="not a sweep directory"):
        records_from_sweep_dir(tmp_path / "missing")
    _write_run(tmp_path / "runs", "ccc", _config("krum", 0), {"status": "interrupted"}, {"round": [1]})
    with pytest.raises(ValueError, match="no finished runs"):
        records_from_sweep_dir(tmp_path)


def _log_child(client, experiment_id, parent_id, byzlab_run_id, config, accuracies, start_time):
    run_id = client.create_run(
        experiment_id, start_time=start_time,
        tags={"byzlab.run_id": byzlab_run_id, "mlflow.parentRunId": parent_id},
    ).info.run_id
    metrics = [Metric("test_accuracy", value, start_time, step) for step, value in enumerate(accuracies, 1)]
    metrics += [Metric(key, value, start_time, 0) for key, value in SUMMARY.items()]
    params = [Param(key, str(value)) for key, value in flatten(config).items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    return run_id


def test_records_from_mlflow_finished_children_and_parent(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("sweep")
    parent_id = client.create_run(experiment_id, start_time=1000).info.run_id
    children = [
        _log_child(client, experiment_id, parent_id, "r-lasa", _config("lasa", 0), [0.1, 0.2], 1001),
        _log_child(client, experiment_id, parent_id, "r-median", _config("median", 0), [0.3, 0.4], 1002),
        # a rerun of r-lasa: the later finished run replaces the first
        _log_child(client, experiment_id, parent_id, "r-lasa", _config("lasa", 0), [0.5, 0.6], 1003),
    ]
    _log_child(client, experiment_id, parent_id, "r-krum", _config("krum", 0), [0.9], 1004)  # still RUNNING
    for run_id in [parent_id, *children]:
        client.set_terminated(run_id, "FINISHED")

    records, parent = records_from_mlflow("sweep", uri)
    assert parent == parent_id
    assert [r.params["server.aggregator"] for r in records] == ["lasa", "median"]
    assert records[0].params == {key: str(value) for key, value in flatten(_config("lasa", 0)).items()}
    assert records[0].curves == {"test_accuracy": [(1, 0.5), (2, 0.6)], "detection_tpr": [], "detection_fpr": [],
                                 "backdoor_asr": []}
    assert records[1].summary == SUMMARY

    with pytest.raises(ValueError, match="does not exist"):
        records_from_mlflow("no-such-sweep", uri)
    client.create_experiment("empty")
    with pytest.raises(ValueError, match="no finished byzlab runs"):
        records_from_mlflow("empty", uri)


def test_records_from_sweep_dir_follow_the_sweep_files_trial_order(tmp_path):
    """Concurrent trials start in any order: a directory that keeps its sweep file reports in its order."""
    from byzlab.sweeps.spec import load_saved_sweep

    spec = {"name": "order", "base": {"run": {"rounds": 3}, "threat": {"fraction": 0.2}},
            "defenses": {"median": {}, "lasa": {}, "krum": {}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trials = load_saved_sweep(tmp_path).trials
    metrics = {"round": [1, 2, 3], "test_accuracy": [0.1, 0.2, 0.3]}
    for trial, created in zip(trials, ["2024-01-01T00:00:09", "2024-01-01T00:00:05", "2024-01-01T00:00:01"]):
        _write_run(tmp_path / "runs", trial.run_id, trial.config.to_dict(),
                   {"status": "finished", "created": created, "summary": SUMMARY}, metrics)
    records = records_from_sweep_dir(tmp_path)
    assert [r.params["server.aggregator"] for r in records] == ["median", "lasa", "krum"]


def test_records_from_mlflow_order_sweep_trials_by_trial_id(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("sweep")
    parent_id = client.create_run(experiment_id, start_time=1000).info.run_id
    for name, trial_id, start in [("krum", "ab_00002", 1001), ("median", "ab_00000", 1002), ("lasa", "ab_00001", 1003)]:
        run_id = _log_child(client, experiment_id, parent_id, f"r-{name}", _config(name, 0), [0.5], start)
        client.set_tag(run_id, "byzlab.trial_id", trial_id)
        client.set_terminated(run_id, "FINISHED")
    records, _ = records_from_mlflow("sweep", f"sqlite:///{tmp_path}/mlflow.db")
    assert [r.params["server.aggregator"] for r in records] == ["median", "lasa", "krum"]


def test_a_report_shows_the_metric_it_is_asked_for(records, tmp_path):
    """LASA's tables report the best accuracy: the same records with acc_best 5 points above acc_last5_mean."""
    best = [TrialRecord(r.params, {**r.summary, "acc_best": r.summary["acc_last5_mean"] + 0.05}, r.curves)
            for r in records]
    write_report(best, tmp_path, metric="acc_best")
    caption, tables = (tmp_path / "table.md").read_text().split("\n\n", 1)
    assert "of the best evaluation (acc_best)" in caption
    assert "| lasa (sparsity=0.5) | <u>56.00 ± 1.00</u> | **81.00 ± 2.00** |" in tables  # 51.00 and 76.00 + 5
    with (tmp_path / "table.csv").open() as handle:
        assert {row["metric"] for row in csv.DictReader(handle)} == {"acc_best"}
    assert "of the best evaluation (acc\\_best)" in (tmp_path / "table.tex").read_text()
    with pytest.raises(ValueError, match="report metric 'accuracy' is not one of: acc_last5_mean, acc_best, "
                                         "acc_final, backdoor_asr"):
        build_grid(records, "accuracy")


def test_an_authors_code_variant_is_named_in_the_attack_label_even_when_it_does_not_vary():
    records = [
        make_record({**make_params("median", "lie"), "threat.attack_params.variant": "lasa_code"}, 0.8),
        make_record({**make_params("median", "sign_flip"), "threat.attack_params.scale": "4"}, 0.7),
    ]
    grid = build_grid(records)
    assert [grid.text(a) for a in grid.attacks[grid.groups[0]]] == ["lie (variant=lasa_code)", "sign_flip"]
    paper = build_grid([make_record({**make_params("median", "lie"), "threat.attack_params.variant": "paper"}, 0.8)])
    assert [paper.text(a) for a in paper.attacks[paper.groups[0]]] == ["lie"]  # the text's: nothing to say


def test_an_authors_code_variant_is_named_in_the_defense_label_too():
    records = [
        make_record({**make_params("median", "lie"), "server.aggregator_params.variant": "residual_code"}, 0.8),
        make_record(make_params("fedavg", "lie"), 0.7),
    ]
    grid = build_grid(records)
    assert sorted(grid.text(d) for d in grid.defenses) == ["fedavg", "median (variant=residual_code)"]


def test_a_backdoor_table_shows_the_success_rate_of_the_last_five_evaluations_lowest_best(tmp_path):
    """backdoor_asr over rounds 1..6: the mean of rounds 2..6. fedavg (0.9 each) loses to median (rates
    0.5, 0.1, 0.1, 0.1, 0.1 -> 0.18); a run without a backdoor has no rate, and its cell reads –."""
    def record(aggregator, attack, rates):
        made = make_record(make_params(aggregator, attack), 0.8)
        made.curves["backdoor_asr"] = list(enumerate(rates, start=1))
        return made

    records = [
        record("fedavg", "lie", [0.9] * 6),
        record("median", "lie", [0.99, 0.5, 0.1, 0.1, 0.1, 0.1]),
        record("median", "sign_flip", []),
    ]
    grid = build_grid(records, "backdoor_asr")
    cells = table_cells(grid)
    lie, flip = grid.attacks[grid.groups[0]]
    fedavg, median = grid.defenses
    assert cells[grid.groups[0], median, lie].mean == pytest.approx(0.18)
    assert (cells[grid.groups[0], median, lie].rank, cells[grid.groups[0], fedavg, lie].rank) == (1, 2)
    assert (grid.groups[0], median, flip) not in cells
    write_report(records, tmp_path, metric="backdoor_asr")
    caption, tables = (tmp_path / "table.md").read_text().split("\n\n", 1)
    assert caption.startswith("Backdoor success rate (%)") and "lowest per column in bold" in caption
    assert "| median | **18.00** | – |" in tables


def test_keys_a_sweep_ties_to_the_defense_or_attack_are_named_with_it_not_as_column_groups():
    # The LASA authors' engine clips client updates for FedAvg but not for LASA (clients.update_clip), and a
    # model replacement attacks from round 6 (threat.start_round): left as column groups they would split one
    # table into two half-empty ones.
    made = []
    for aggregator in ("fedavg", "lasa"):
        for attack in ("none", "sign_flip"):
            params = make_params(aggregator, attack)
            if aggregator == "fedavg":
                params["clients.update_clip"] = "1.0"
            if attack == "sign_flip":
                params["threat.start_round"] = "6"
            made.append(make_record(params, 0.5))
    split = build_grid(made)
    assert set(split.group_keys) == {"threat.start_round", "clients.update_clip"}
    assert len(split.groups) == 4
    grid = build_grid(made, defense_keys=["clients.update_clip"], attack_keys=["threat.start_round"])
    assert grid.group_keys == [] and len(grid.groups) == 1
    assert [grid.text(d) for d in grid.defenses] == ["fedavg (update_clip=1)", "lasa"]
    assert [grid.text(a) for a in grid.attacks[grid.groups[0]]] == ["none", "sign_flip (start_round=6)"]


def test_a_groups_table_lists_only_the_defenses_run_in_it(tmp_path):
    # LASA runs only on mnist: the digits table has no LASA row of dashes, the mnist one has it.
    made = [make_record(make_params("fedavg", "lie", dataset=dataset), 0.5) for dataset in ("digits", "mnist")]
    made.append(make_record(make_params("lasa", "lie", dataset="mnist"), 0.6))
    table = write_report(made, tmp_path)[0].read_text()
    digits, mnist = table.split("### dataset=mnist")
    assert "| fedavg |" in digits and "lasa" not in digits
    assert "| fedavg |" in mnist and "| lasa |" in mnist
