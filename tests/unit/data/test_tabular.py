"""Tabular data from CSV (Adult, Lending Club): encoders fitted on the training rows only, labels, groups
for the natural partition, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.data.datasets import load_dataset
from byzlab.orchestrator.data.partition import natural
from byzlab.orchestrator.specs.inputs import make_partition

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income"]


def _write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in row) for row in rows]) + "\n")
    return path


def _adult_rows(count, seed, workclasses=("Private", "State-gov")):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        age, hours = int(rng.integers(18, 70)), int(rng.integers(10, 60))
        rows.append([age, rng.choice(workclasses), 100_000, "Bachelors", 13, "Never-married", "Sales",
                     "Not-in-family", "White", rng.choice(["Male", "Female"]), 0, 0, hours, "United-States",
                     ">50K" if age + hours > 80 else "<=50K"])
    return rows


def test_adult_columns_are_standardised_and_one_hot_encoded_on_the_training_rows_only(tmp_path):
    train = _write(tmp_path / "adult.data.csv", ADULT_COLUMNS, _adult_rows(80, 0))
    test = _write(tmp_path / "adult.test.csv", ADULT_COLUMNS, _adult_rows(20, 1, workclasses=("Never-worked",)))
    data = load_dataset("csv", csv_path=str(train), csv_test_path=str(test), label_column="income")
    # 6 numeric columns, then one-hot: workclass 2, education 1, marital 1, occupation 1, relationship 1, race 1,
    # sex 2, native-country 1
    assert data.input_shape == (6 + 10,) and data.num_classes == 2 and not data.is_images
    numeric = data.train_x[:, :6]
    assert np.allclose(numeric[:, 0].mean(), 0, atol=1e-6) and np.isclose(numeric[:, 0].std(), 1, atol=1e-5)
    # the test rows use the training statistics: a test age is (age - train mean) / train std
    train_ages = np.array([row[0] for row in _adult_rows(80, 0)], dtype=float)
    test_ages = np.array([row[0] for row in _adult_rows(20, 1, workclasses=("Never-worked",))], dtype=float)
    assert np.allclose(data.test_x[:, 0], (test_ages - train_ages.mean()) / train_ages.std(), atol=1e-5)
    # a workclass never seen in training encodes as all zeros in its one-hot block
    assert np.all(data.test_x[:, 6:8] == 0) and np.all(data.train_x[:, 6:8].sum(axis=1) == 1)
    labels = np.array([row[-1] for row in _adult_rows(80, 0)])
    assert np.array_equal(data.train_y, (labels == ">50K").astype(np.int64))  # classes sorted: "<=50K", ">50K"
    # the encoding of each column, for raw trigger values: (mean, std) of a numeric one, (0, 1) of a one-hot one
    assert len(data.feature_scaling) == data.input_shape[0]
    mean, scale = data.feature_scaling[0]
    assert np.isclose(mean, train_ages.mean()) and np.isclose(scale, train_ages.std())
    assert set(data.feature_scaling[6:]) == {(0.0, 1.0)}


def test_split_is_stratified_and_groups_are_kept(loan_csv):
    data = load_dataset("csv", csv_path=str(loan_csv()), label_column="loan_status", group_column="addr_state",
                        drop_columns=["id"], test_fraction=0.25)
    assert len(data.train_y) + len(data.test_y) == 600 and abs(len(data.test_y) - 150) <= 1
    assert data.num_classes == 3 and sorted(np.unique(data.train_groups)) == list(range(6))
    train_share, test_share = (np.bincount(y, minlength=3) / len(y) for y in (data.train_y, data.test_y))
    assert np.allclose(train_share, test_share, atol=0.02)


def test_natural_partition_puts_each_group_on_exactly_one_client():
    groups = np.array([2, 0, 2, 1, 0, 2, 1, 1, 1])
    parts = natural(np.zeros(9, dtype=np.int64), 3, np.random.default_rng(0), groups=groups)
    assert [p.tolist() for p in parts] == [[1, 4], [3, 6, 7, 8], [0, 2, 5]]
    assert [p.tolist() for p in natural(np.zeros(9, dtype=np.int64), 2, None, groups=groups, min_group_size=3)] == [
        [3, 6, 7, 8], [0, 2, 5]]
    with pytest.raises(ValueError, match=r"the data has 3 groups .* fewer than clients.num_clients \(4\); set "
                       r"clients.num_clients to at most 3"):
        natural(np.zeros(9, dtype=np.int64), 4, None, groups=groups)


def test_natural_partition_with_fewer_clients_samples_whole_groups_by_seed():
    """LEAF's user sampling: a seeded draw of whole groups, each still on exactly one client."""
    groups = np.repeat(np.arange(20), 3)
    labels = np.zeros(60, dtype=np.int64)
    draws = [natural(labels, 5, np.random.default_rng(seed), groups=groups) for seed in (0, 0, 1)]
    chosen = [[int(groups[p[0]]) for p in parts] for parts in draws]
    assert chosen[0] == chosen[1] != chosen[2]
    assert all(c == sorted(c) and len(set(c)) == 5 for c in chosen)
    for parts in draws:
        assert all(np.array_equal(p, np.flatnonzero(groups == groups[p[0]])) for p in parts)


def test_configured_csv_with_a_natural_partition(loan_csv):
    path = loan_csv()
    cfg = build_config({}, ["data.dataset=csv", f"data.csv_path={path}", "data.label_column=loan_status",
                            "data.group_column=addr_state", "data.drop_columns=[id]", "partition.scheme=natural",
                            "clients.num_clients=6"])
    assert cfg.model.name == "mlp" and cfg.to_dict()["data"]["group_column"] == "addr_state"
    from byzlab.orchestrator.specs.inputs import load_configured_dataset

    dataset = load_configured_dataset(cfg)
    parts = make_partition(cfg, dataset)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(dataset.train_y)))
    assert all(len(np.unique(dataset.train_groups[p])) == 1 for p in parts)


@pytest.mark.parametrize("overrides, message", [
    (["data.label_column=status"], "data: column 'status' is not in the CSV file; its columns: id, loan_amnt"),
    (["data.label_column=loan_status", "partition.scheme=natural"], "partition: scheme 'natural' needs a group column"),
    (["data.label_column=loan_status", "data.group_column=addr_state", "partition.scheme=natural"],
     "set clients.num_clients to at most 6"),
    (["data.label_column=loan_status", "threat.fraction=0.2", "threat.attack=backdoor"],
     "threat.attack 'backdoor' sets a pixel trigger and needs images; csv holds tabular rows"),
    (["data.label_column=loan_status", "server.aggregator=sdea"], "its server data is images"),
])
def test_bad_tabular_settings_are_one_line(loan_csv, overrides, message):
    from byzlab.orchestrator.specs.inputs import resolve_inputs

    cfg = build_config({}, ["data.dataset=csv", f"data.csv_path={loan_csv()}", "data.drop_columns=[id]", *overrides])
    with pytest.raises(ConfigError, match=message):
        resolve_inputs(cfg)


def test_a_label_column_with_one_class_is_refused(tmp_path):
    path = _write(tmp_path / "one.csv", ["x", "y"], [[i, "a"] for i in range(10)])
    with pytest.raises(ValueError, match="label column 'y' has one class"):
        load_dataset("csv", csv_path=str(path), csv_test_path=str(path), label_column="y")
