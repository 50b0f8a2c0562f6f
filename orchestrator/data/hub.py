"""Data through Hugging Face ``datasets``: a hub dataset, a copy saved with ``save_to_disk``, or Parquet /
CSV / JSON files, with the input, label and natural-partition columns named in the config and the inputs
encoded by modality (``input_kind``):

- ``image``: an image column (``datasets.Image``, or nested lists of pixels) as NCHW float32, resized to
  the first image's size (or ``image_size``), grey or colour by the first image (or ``channels``), scaled
  to [0, 1] and standardised per channel with the training images' statistics;
- ``tabular``: numeric columns standardised, categorical ones one-hot encoded (``tabular.encode_rows``);
- ``words``: one or more text columns (joined by a space) as word ids, for classification;
- ``characters``: a text column as character ids and a one-character label column as the class to
  predict (next-character prediction).

Every encoder is fitted on the training rows only. Labels of a ``ClassLabel`` column keep the dataset's own
ids; other label values become ids 0..C-1 in sorted order. ``label_map`` renames label values and drops
rows whose value it does not list (Amazon star ratings -> sentiment).

Where a hub dataset lives: ``<data_root>/huggingface/<owner>___<name>[___<config>]``, a ``save_to_disk``
copy written by the first run with ``data.download: true`` (the download itself goes through
``datasets.load_dataset`` with its cache under ``<data_root>/huggingface/cache``). Runs read that copy
with ``load_from_disk`` and need no network; a shared filesystem can hold it for a whole cluster.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from byzlab.orchestrator.core.errors import DatasetNotFoundError
from byzlab.orchestrator.data import text
from byzlab.orchestrator.data.datasets import DATASETS, Dataset, SplitSeed
from byzlab.orchestrator.data.tabular import check_columns, encode_rows, group_ids, split_table, table_labels

InputKind = Literal["image", "tabular", "words", "characters"]
DEFAULT_MODELS: dict[str, str] = {"image": "cnn", "tabular": "mlp", "words": "fasttext", "characters": "char_lstm"}
_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


class SizeParams(BaseModel):
    """What every hub dataset takes: how the test rows are drawn and an optional cap on the rows."""

    model_config = ConfigDict(extra="forbid")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share held out for testing (without a test split)")
    split_seed: SplitSeed = Field(0, description="seed of the train/test split and of the max_rows sample "
                                                 "(0 <= seed < 2^32)")
    max_rows: int | None = Field(
        None, ge=2, description="use a seeded sample of this many training-split rows, drawn before label_map (None = all)")


class TextParams(SizeParams):
    max_length: int = Field(100, ge=1, description="tokens per text (characters of a next-character context)")
    truncate: bool = Field(True, description="cut longer texts to max_length (false: a longer text is an error)")
    vocab_size: int = Field(20000, ge=3, description="word vocabulary size, the 2 reserved ids included")
    min_count: int = Field(1, ge=1, description="a word enters the vocabulary if this many training texts hold it")


class HubParams(TextParams):
    hf_path: str = Field(description="hub id (owner/name), a save_to_disk directory, or Parquet/CSV/JSON file(s)")
    hf_config: str | None = Field(None, description="the hub dataset's configuration (subset) name")
    hf_data_files: list[str] | None = Field(None, description="files of the hub repository to load (hf_path's data_files)")
    input_kind: InputKind = Field(description="image, tabular, words (classification) or characters (next character)")
    input_columns: list[str] | None = Field(
        None, description="the image column, the text column(s), or the feature columns (None: all but label, group)"
    )
    label_column: str = Field("label", description="the column to predict")
    label_map: dict[str, str] | None = Field(None, description="label value -> class name; rows of unlisted values are dropped")
    group_column: str | None = Field(None, description="natural-partition column (one client per value)")
    train_split: str = Field("train", description="the split the clients train on")
    test_split: str | None = Field(None, description="the test split; None = hold test_fraction of train_split out")
    categorical_columns: list[str] | None = Field(None, description="tabular: one-hot encoded; None = the non-numeric ones")
    drop_columns: list[str] = Field(default_factory=list, description="tabular: columns that are not features")
    image_size: int | None = Field(None, ge=4, description="images: resize to image_size x image_size (None = the first image's size)")
    channels: Literal[1, 3] | None = Field(None, description="images: 1 grey or 3 colour (None = as the first image)")


@DATASETS.register_function("huggingface", HubParams, default_model=DEFAULT_MODELS, modality="any",
                            record_defaults=False)
def _load_huggingface(root: Path, download: bool, params: HubParams) -> Dataset:
    """Any dataset readable by Hugging Face datasets (hub, save_to_disk copy, Parquet/CSV/JSON files): images,
    tabular rows, word or character sequences, columns named in the config.

    The default model follows ``input_kind``: cnn, mlp, fasttext or char_lstm."""
    return load_hub_dataset("huggingface", root, download, params)


def load_hub_dataset(name: str, root: Path, download: bool, params: HubParams, source=None) -> Dataset:
    """Read the configured splits (of ``source``, a ``datasets`` dataset already read, if given), check the
    named columns, then encode them by ``input_kind``."""
    splits, features = _splits(source if source is not None else _open(root, download, params), params)
    train = splits[params.train_split]
    test = splits[params.test_split] if params.test_split is not None else None
    named = [params.label_column, *(params.input_columns or []), *([params.group_column] if params.group_column else []),
             *(params.categorical_columns or []), *params.drop_columns]
    check_columns(train, named, f"{params.hf_path} ({params.train_split})")
    if params.input_kind in ("image", "characters") and len(params.input_columns or []) != 1:
        raise ValueError(f"input_columns: name the one {params.input_kind} column; the columns: {', '.join(train.column_names)}")
    if params.input_kind == "words" and not params.input_columns:
        raise ValueError(f"input_columns: name the text column(s); the columns: {', '.join(train.column_names)}")
    if params.max_rows is not None and train.num_rows > params.max_rows:
        chosen = np.random.default_rng(params.split_seed).choice(train.num_rows, params.max_rows, replace=False)
        train = train.take(np.sort(chosen))
    train, test = (_relabelled(table, params) if table is not None else None for table in (train, test))
    if test is None:
        train, test = split_table(train, params.label_column, params.test_fraction, params.split_seed)
    if params.input_kind == "tabular":
        return encode_rows(name, train, test, label_column=params.label_column, group_column=params.group_column,
                           categorical_columns=params.categorical_columns, drop_columns=params.drop_columns,
                           feature_columns=params.input_columns)
    groups = group_ids(train, params.group_column)
    if params.input_kind == "characters":
        return _characters(name, train, test, params, groups)
    train_y, test_y, num_classes = _labels(train, test, params.label_column,
                                           None if params.label_map else features.get(params.label_column))
    if params.input_kind == "image":
        train_x, test_x = _images(train, test, params)
        return Dataset(name, train_x, train_y, test_x, test_y, num_classes, train_groups=groups)
    texts = [_joined(table, params.input_columns) for table in (train, test)]
    vocabulary = text.word_vocabulary(texts[0], params.vocab_size, params.min_count)
    column = "+".join(params.input_columns)
    train_x, test_x = (text.encode_words(t, vocabulary, params.max_length, params.truncate, column) for t in texts)
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes, train_groups=groups, vocabulary=vocabulary)


def saved_copy_dir(root: Path, hf_path: str, config: str | None) -> Path:
    """Where a hub dataset's ``save_to_disk`` copy lives under the data root."""
    return root / "huggingface" / "___".join([*hf_path.split("/"), *([config] if config else [])])


def _open(root: Path, download: bool, params: HubParams):
    """The source as ``datasets`` reads it: a local copy or files, else the hub dataset's saved copy."""
    import datasets  # here: importing datasets takes a second and only hub data needs it

    datasets.disable_progress_bars()
    local = _local_path(root, params.hf_path)
    if local is not None and local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(local))
    elif local is not None:
        loaded = _load_files(root, local)
    else:
        copy = saved_copy_dir(root, params.hf_path, params.hf_config)
        if not copy.is_dir():
            if not download:
                raise DatasetNotFoundError(
                    f"{params.hf_path} not found: no saved copy at {copy} and no such local path; set "
                    "data.download=true to fetch it from the Hugging Face hub (once, into that copy), or "
                    f"save it there with datasets.load_dataset('{params.hf_path}').save_to_disk('{copy}')"
                )
            _download(root, params).save_to_disk(str(copy))
        loaded = datasets.load_from_disk(str(copy))
    return loaded


def _splits(loaded, params: HubParams) -> tuple[dict[str, pa.Table], dict]:
    """The splits as Arrow tables, and the ``datasets`` features of the training split by column."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({params.train_split: loaded})
    for split in (params.train_split, params.test_split):
        if split is not None and split not in loaded:
            raise ValueError(f"split '{split}' is not in {params.hf_path}; its splits: {', '.join(loaded)}")
    features = dict(loaded[params.train_split].features)
    return {split: part.with_format("arrow")[:] for split, part in loaded.items()}, features


def _download(root: Path, params: HubParams):
    """The hub dataset as ``load_dataset`` gives it; named repository files go through the packaged builder
    of their format (a repository with a loading script, which ``datasets`` no longer runs, still works)."""
    import datasets

    cache = str(root / "huggingface" / "cache")
    if not params.hf_data_files:
        return datasets.load_dataset(params.hf_path, params.hf_config, cache_dir=cache)
    urls = [f"hf://datasets/{params.hf_path}/{file}" for file in params.hf_data_files]
    builder = _FILE_BUILDERS.get(Path(params.hf_data_files[0]).suffix)
    if builder is None:
        raise ValueError(f"hf_data_files: {params.hf_data_files[0]} is not a Parquet, CSV or JSON file")
    return datasets.load_dataset(builder, data_files=urls, cache_dir=cache)


def _local_path(root: Path, path: str) -> Path | None:
    """``path`` as a local file, glob or directory (as given, or under the data root), else None (a hub id)."""
    for base in (Path.cwd(), root):
        candidate = base / Path(path).expanduser()
        if candidate.exists() or (any(ch in path for ch in "*?[") and any(candidate.parent.glob(candidate.name))):
            return candidate
    return None


def _load_files(root: Path, path: Path):
    """Parquet, CSV or JSON (lines) files: one file, a glob, or a directory of them (one split, "train")."""
    import datasets

    files = sorted(path.parent.glob(path.name)) if not path.exists() else (
        sorted(f for f in path.iterdir() if f.suffix in _FILE_BUILDERS) if path.is_dir() else [path])
    builders = {_FILE_BUILDERS.get(f.suffix) for f in files}
    if not files or len(builders) != 1 or None in builders:
        raise ValueError(f"{path}: expected a save_to_disk directory or Parquet/CSV/JSON files of one format, "
                         f"found {', '.join(f.name for f in files) or 'nothing'}")
    return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files],
                                 cache_dir=str(root / "huggingface" / "cache"))


def _relabelled(table: pa.Table, params: HubParams) -> pa.Table:
    """The rows whose label ``label_map`` lists (label values compared as Python writes them: ``5.0``,
    ``True``), their labels renamed; unchanged without a map."""
    if params.label_map is None:
        return table
    values = [str(value) for value in table[params.label_column].to_pylist()]
    keep = np.fromiter((value in params.label_map for value in values), dtype=bool, count=len(values))
    if not keep.any():
        raise ValueError(f"label_map keeps no row: column '{params.label_column}' holds values such as "
                         f"{', '.join(sorted(set(values))[:5])}")
    mapped = pa.array([params.label_map[value] for value, kept in zip(values, keep) if kept])
    kept = table.filter(pa.array(keep))
    return kept.set_column(kept.schema.get_field_index(params.label_column), params.label_column, mapped)


def _labels(train: pa.Table, test: pa.Table, column: str, feature) -> tuple[np.ndarray, np.ndarray, int]:
    """A ``ClassLabel`` column's own ids and class count; otherwise ids of the sorted training values."""
    names = getattr(feature, "names", None)
    if names is None:
        return table_labels(train, test, column)
    train_y, test_y = (np.asarray(t[column].to_numpy(zero_copy_only=False), dtype=np.int64) for t in (train, test))
    if len(np.unique(train_y)) < 2:
        raise ValueError(f"label column '{column}' has one class: nothing to learn")
    return train_y, test_y, len(names)


def _joined(table: pa.Table, columns: list[str]) -> list[str]:
    parts = [[value or "" for value in table[c].to_pylist()] for c in columns]
    return [" ".join(row) for row in zip(*parts)]


def _characters(name: str, train: pa.Table, test: pa.Table, params: HubParams, groups) -> Dataset:
    """Next-character prediction: the context column as character ids, the label as a character's id; the
    classes are the vocabulary (its two reserved ids never occur as a training label)."""
    column, label = params.input_columns[0], params.label_column
    contexts = [[value or "" for value in t[column].to_pylist()] for t in (train, test)]
    targets = [[value or "" for value in t[label].to_pylist()] for t in (train, test)]
    vocabulary = text.character_vocabulary([*contexts[0], *targets[0]])
    train_x, test_x = (text.encode_characters(c, vocabulary, params.max_length, params.truncate, column) for c in contexts)
    train_y, test_y = (text.character_labels(t, vocabulary, label) for t in targets)
    return Dataset(name, train_x, train_y, test_x, test_y, len(vocabulary), train_groups=groups, vocabulary=vocabulary)


def _images(train: pa.Table, test: pa.Table, params: HubParams) -> tuple[np.ndarray, np.ndarray]:
    """Both splits' images as float32 NCHW, standardised per channel with the training images' statistics."""
    column = params.input_columns[0]
    first = _pil(train[column][0].as_py())
    channels = params.channels or (1 if first.mode in ("L", "1", "I", "I;16", "F") else 3)
    size = (params.image_size, params.image_size) if params.image_size else first.size
    train_x, test_x = (_decoded(t[column], channels, size) for t in (train, test))
    mean = train_x.mean(axis=(0, 2, 3), keepdims=True)
    std = train_x.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return (train_x - mean) / std, (test_x - mean) / std


def _decoded(values: pa.ChunkedArray, channels: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(values), channels, size[1], size[0]), dtype=np.float32)
    for row, value in enumerate(values.to_pylist()):
        image = _pil(value).convert(mode)
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        out[row] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def _pil(value):
    """One image cell: a ``datasets.Image`` struct (bytes or path) or nested lists of 0..255 pixels."""
    from PIL import Image

    if isinstance(value, dict):
        return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    return Image.fromarray(np.asarray(value, dtype=np.uint8))
