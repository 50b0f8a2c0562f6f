"""Tabular data from CSV files: income prediction on Adult (FedRA §5.1), loan status on Lending Club
(residual reweighting §4.1 and App. A.2, one client per US state).

The file is read with pyarrow; the label column is encoded with scikit-learn's ``LabelEncoder``, numeric
features are imputed (median) and standardised, categorical ones imputed ("missing") and one-hot encoded,
all fitted on the training rows only (the test rows are transformed with the training statistics; an
unseen category encodes as all zeros). An optional group column gives every training row a group id for the
``natural`` partition scheme. Registered as the dataset ``csv`` (docs/architecture.md, "Registries").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
from pydantic import BaseModel, ConfigDict, Field

from byzlab.orchestrator.core.errors import DatasetNotFoundError
from byzlab.orchestrator.data.datasets import DATASETS, Dataset, SplitSeed


class CsvParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv_path: str = Field(description="the CSV file (header row first) of the training rows, or of all rows")
    csv_test_path: str | None = Field(None, description="a CSV of test rows; None = split test_fraction off")
    label_column: str = Field("label", description="the column to predict")
    group_column: str | None = Field(None, description="natural-partition column (one client per value)")
    categorical_columns: list[str] | None = Field(None, description="one-hot encoded; None = the non-numeric ones")
    drop_columns: list[str] = Field(default_factory=list, description="columns that are not features (ids, ...)")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share held out for testing")
    split_seed: SplitSeed = Field(0, description="seed of the stratified train/test split (0 <= seed < 2^32)")


@DATASETS.register_function("csv", CsvParams, default_model="mlp", modality="tabular", record_defaults=False)
def _load_csv(root: Path, download: bool, params: CsvParams) -> Dataset:
    """Tabular rows from CSV files: numeric columns standardised, categorical ones one-hot encoded (fitted on
    the training rows only), an optional natural-partition column.

    A relative ``csv_path`` is looked for under the data root."""
    train = _read(_resolve(root, params.csv_path))
    named = [params.label_column, *([params.group_column] if params.group_column else []),
             *(params.categorical_columns or []), *params.drop_columns]
    check_columns(train, named, "the CSV file")
    if params.csv_test_path is None:
        train, test = split_table(train, params.label_column, params.test_fraction, params.split_seed)
    else:
        test = _read(_resolve(root, params.csv_test_path))
        missing = sorted(set(train.column_names) - set(test.column_names))
        if missing:
            raise ValueError(f"data.csv_test_path lacks the training file's column(s) {', '.join(missing)}")
    return encode_rows("csv", train, test, label_column=params.label_column, group_column=params.group_column,
                       categorical_columns=params.categorical_columns, drop_columns=params.drop_columns)


def encode_rows(name: str, train: pa.Table, test: pa.Table, *, label_column: str, group_column: str | None,
                categorical_columns: list[str] | None, drop_columns: list[str],
                feature_columns: list[str] | None = None) -> Dataset:
    """A tabular Dataset from train and test tables: the feature columns (``feature_columns``, else every
    column but the label, group and dropped ones) encoded with transformers fitted on ``train`` only.
    Columns that are not numbers are categorical unless ``categorical_columns`` names them."""
    features = feature_columns or [c for c in train.column_names if c not in {label_column, group_column, *drop_columns}]
    categorical = categorical_columns
    if categorical is None:
        categorical = [c for c in features if not pa.types.is_integer(train[c].type) and not pa.types.is_floating(train[c].type)]
    encoder = _feature_encoder([features.index(c) for c in features if c not in categorical],
                               [features.index(c) for c in categorical])
    train_x = encoder.fit_transform(_columns(train, features)).astype(np.float32)
    test_x = encoder.transform(_columns(test, features)).astype(np.float32)
    train_y, test_y, num_classes = table_labels(train, test, label_column)
    return Dataset(name, np.ascontiguousarray(train_x), train_y, np.ascontiguousarray(test_x), test_y, num_classes,
                   train_groups=group_ids(train, group_column), feature_names=_feature_names(encoder, features),
                   feature_scaling=_feature_scaling(encoder, train_x.shape[1]))


def group_ids(table: pa.Table, column: str | None) -> np.ndarray | None:
    """An int64 id per row: the rank of its value of ``column`` among the values (None without a column)."""
    if column is None:
        return None
    return np.unique(_columns(table, [column])[:, 0].astype(str), return_inverse=True)[1].astype(np.int64)


def _resolve(root: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    found = candidate if candidate.is_absolute() or candidate.is_file() else root / candidate
    if not found.is_file():
        raise DatasetNotFoundError(f"CSV file '{path}' not found (looked in the working directory and {root})")
    return found


def _read(path: Path) -> pa.Table:
    try:
        return pyarrow.csv.read_csv(path)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path} is not a readable CSV file: {str(err).splitlines()[0]}") from None


def check_columns(table: pa.Table, named: list[str], source: str) -> None:
    """Every column in ``named`` exists (the message lists ``source``'s columns)."""
    unknown = [c for c in named if c not in table.column_names]
    if unknown:
        raise ValueError(f"column '{unknown[0]}' is not in {source}; its columns: {', '.join(table.column_names)}")


def split_table(table: pa.Table, label_column: str, test_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Seeded, stratified by label where every class has two rows or more (else uniform: next-character
    labels include rare characters); row order kept within each part."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(table.num_rows)
    labels = _columns(table, [label_column])[:, 0].astype(str)
    stratify = labels if np.unique(labels, return_counts=True)[1].min(initial=2) >= 2 else None
    try:
        train_rows, test_rows = train_test_split(rows, test_size=test_fraction, stratify=stratify, random_state=seed)
    except ValueError:  # a test share smaller than the number of classes cannot be stratified
        train_rows, test_rows = train_test_split(rows, test_size=test_fraction, random_state=seed)
    return table.take(np.sort(train_rows)), table.take(np.sort(test_rows))


def _columns(table: pa.Table, names: list[str]) -> np.ndarray:
    """The columns as one (rows, columns) object array (nulls as None): what the encoders take."""
    return np.column_stack([np.asarray(table[c].to_pylist(), dtype=object) for c in names]) if names else (
        np.empty((table.num_rows, 0), dtype=object))


def _feature_encoder(numeric: list[int], categorical: list[int]):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer(verbose_feature_names_out=False, transformers=[
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("categorical", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                      OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical),
    ])


def _feature_scaling(encoder, width: int) -> tuple[tuple[float, float], ...]:
    """(mean, scale) of each encoded column: the numeric columns' StandardScaler statistics (they come first,
    in the ColumnTransformer's order), then (0, 1) for every one-hot column, whose values are not rescaled."""
    numeric = encoder.named_transformers_.get("numeric")
    scaler = numeric[-1] if numeric is not None and hasattr(numeric[-1], "mean_") else None
    stats = [] if scaler is None else [(float(m), float(s)) for m, s in zip(scaler.mean_, scaler.scale_)]
    return tuple(stats + [(0.0, 1.0)] * (width - len(stats)))


def _feature_names(encoder, features: list[str]) -> tuple[str, ...]:
    """The encoded columns' names: a numeric column's own name, ``<column>_<category>`` for a one-hot one.
    (scikit-learn names the columns of an array input x0, x1, ...; they are mapped back to the CSV's names.)"""
    names = []
    for name in encoder.get_feature_names_out():
        index, rest = re.fullmatch(r"x(\d+)(.*)", str(name)).groups()
        names.append(features[int(index)] + rest)
    return tuple(names)


def table_labels(train: pa.Table, test: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Class ids 0..C-1 from the training labels; a test label never seen in training is an error."""
    from sklearn.preprocessing import LabelEncoder

    train_labels, test_labels = (_columns(t, [column])[:, 0].astype(str) for t in (train, test))
    encoder = LabelEncoder().fit(train_labels)
    if len(encoder.classes_) < 2:
        raise ValueError(f"label column '{column}' has one class ({encoder.classes_[0]}): nothing to learn")
    unseen = sorted(set(test_labels) - set(encoder.classes_))
    if unseen:
        raise ValueError(f"label column '{column}': test label(s) {', '.join(unseen)} never occur in training")
    return (encoder.transform(train_labels).astype(np.int64), encoder.transform(test_labels).astype(np.int64),
            len(encoder.classes_))
