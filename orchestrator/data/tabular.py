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
from byzlab.orchestrator.data.datasets import DATASETS, Dataset


class CsvParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv_path: str = Field(description="the CSV file (header row first) of the training rows, or of all rows")
    csv_test_path: str | None = Field(None, description="a CSV of test rows; None = split test_fraction off")
    label_column: str = Field("label", description="the column to predict")
    group_column: str | None = Field(None, description="natural-partition column (one client per value)")
    categorical_columns: list[str] | None = Field(None, description="one-hot encoded; None = the non-numeric ones")
    drop_columns: list[str] = Field(default_factory=list, description="columns that are not features (ids, ...)")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share held out for testing")
    split_seed: int = Field(0, description="seed of the stratified train/test split")


@DATASETS.register_function("csv", CsvParams, default_model="mlp", record_defaults=False)
def _load_csv(root: Path, download: bool, params: CsvParams) -> Dataset:
    """Tabular rows from CSV files: numeric columns standardised, categorical ones one-hot encoded (fitted on
    the training rows only), an optional natural-partition column.

    A relative ``csv_path`` is looked for under the data root."""
    train = _read(_resolve(root, params.csv_path))
    _check_columns(train, params)
    if params.csv_test_path is None:
        train, test = _split(train, params)
    else:
        test = _read(_resolve(root, params.csv_test_path))
        missing = sorted(set(train.column_names) - set(test.column_names))
        if missing:
            raise ValueError(f"data.csv_test_path lacks the training file's column(s) {', '.join(missing)}")
    features = [c for c in train.column_names if c not in {params.label_column, params.group_column, *params.drop_columns}]
    categorical = params.categorical_columns
    if categorical is None:
        categorical = [c for c in features if not pa.types.is_integer(train[c].type) and not pa.types.is_floating(train[c].type)]
    encoder = _feature_encoder([features.index(c) for c in features if c not in categorical],
                               [features.index(c) for c in categorical])
    train_x = encoder.fit_transform(_columns(train, features)).astype(np.float32)
    test_x = encoder.transform(_columns(test, features)).astype(np.float32)
    train_y, test_y, num_classes = _labels(train, test, params.label_column)
    groups = None
    if params.group_column is not None:
        groups = np.unique(_columns(train, [params.group_column])[:, 0].astype(str), return_inverse=True)[1]
    return Dataset("csv", np.ascontiguousarray(train_x), train_y, np.ascontiguousarray(test_x), test_y, num_classes,
                   train_groups=None if groups is None else groups.astype(np.int64),
                   feature_names=_feature_names(encoder, features))


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


def _check_columns(table: pa.Table, params: CsvParams) -> None:
    """Every column the parameters name exists (the message lists the file's columns)."""
    named = [params.label_column, *([params.group_column] if params.group_column else []),
             *(params.categorical_columns or []), *params.drop_columns]
    unknown = [c for c in named if c not in table.column_names]
    if unknown:
        raise ValueError(f"column '{unknown[0]}' is not in the CSV file; its columns: {', '.join(table.column_names)}")


def _split(table: pa.Table, params: CsvParams) -> tuple[pa.Table, pa.Table]:
    """Stratified by label, seeded by ``split_seed``; row order kept within each part."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(table.num_rows)
    labels = _columns(table, [params.label_column])[:, 0].astype(str)
    train_rows, test_rows = train_test_split(rows, test_size=params.test_fraction, stratify=labels,
                                             random_state=params.split_seed)
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


def _feature_names(encoder, features: list[str]) -> tuple[str, ...]:
    """The encoded columns' names: a numeric column's own name, ``<column>_<category>`` for a one-hot one.
    (scikit-learn names the columns of an array input x0, x1, ...; they are mapped back to the CSV's names.)"""
    names = []
    for name in encoder.get_feature_names_out():
        index, rest = re.fullmatch(r"x(\d+)(.*)", str(name)).groups()
        names.append(features[int(index)] + rest)
    return tuple(names)


def _labels(train: pa.Table, test: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray, int]:
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
