"""Image classification datasets as normalised in-memory numpy arrays.

``load_dataset(name)`` returns float32 NCHW images standardised per channel and int64 labels. The files
are read directly (IDX, CIFAR pickles, SVHN ``.mat``) from torchvision's on-disk layout under the data
root rather than through torchvision's dataset classes, which verify MD5 sums and so reject the tiny
fixtures the tests write. torchvision is only used to download missing files when asked to.
``digits`` ships with scikit-learn and works offline; Fashion-MNIST is also read from Debian's
``dataset-fashion-mnist`` package when it is installed.

Each dataset is one registered loader (docs/architecture.md, "Registries"): a function
``(root, download, params) -> Dataset`` with a ``Params`` schema (its config keys under ``data.``), the
model it trains by default (``model.name: auto``) and a one-line docstring for ``byzlab list datasets``.
Adding a dataset is one such function.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from byzlab.orchestrator.core.errors import DatasetNotFoundError
from byzlab.orchestrator.core.registry import NoParams, Registry

EMNIST_SPLITS: tuple[str, ...] = ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")

DEFAULT_DATA_ROOT = "~/.cache/byzlab/data"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Per-channel (mean, std) of the training images scaled to [0, 1]: the usual published constants.
_CHANNEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "emnist": ((0.1751,), (0.3332,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

# EMNIST "letters" labels are 1..26 in the files; they are shifted to 0..25 so every class is populated.
_EMNIST_NUM_CLASSES = {"balanced": 47, "byclass": 62, "bymerge": 47, "digits": 10, "letters": 26, "mnist": 10}

# The IDX file names shared by MNIST, Fashion-MNIST and Debian's package (plain or with ".gz").
_MNIST_FILE_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
_CIFAR100_BATCHES = ("train", "test")
_CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")

@dataclass(frozen=True, eq=False)  # eq=False: comparing by array contents would be ambiguous
class Dataset:
    """A train/test pair of inputs with int64 labels: normalised float32 NCHW images, float32 (N, F) feature
    rows of tabular data, or int64 (N, L) token ids of text (``vocabulary[i]`` is token i; 0 pads, 1 stands
    for a token outside the vocabulary). ``train_groups``: an int64 group id per training sample (a
    natural-partition column, e.g. a writer or a US state), or None."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    train_groups: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None  # tabular rows: the encoded features' names
    # tabular rows: (mean, scale) of each encoded feature, so a raw value v is encoded as (v - mean) / scale
    feature_scaling: tuple[tuple[float, float], ...] | None = None
    vocabulary: tuple[str, ...] | None = None  # text: the tokens, by id

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: (channels, height, width) of an image, (features,) of a tabular row."""
        return tuple(self.train_x.shape[1:])

    @property
    def is_images(self) -> bool:
        return self.train_x.ndim == 4

    @property
    def is_text(self) -> bool:
        return self.vocabulary is not None


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset", keep_order=True)
MODALITIES = ("image", "tabular", "text", "any")  # what a dataset's inputs are; set where it is registered


def dataset_names(modality: str | None = None) -> list[str]:
    """The registered datasets, in registration order; only those of ``modality`` when given."""
    return DATASETS.names(lambda loader: modality is None or loader.modality == modality)


# scikit-learn's random_state takes 0 <= seed < 2^32; the range is checked on the field, before any data is read.
SplitSeed = Annotated[int, Field(ge=0, lt=2**32)]


class DigitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="share held out for testing")
    split_seed: SplitSeed = Field(0, description="seed of the stratified train/test split (0 <= seed < 2^32)")


class EmnistParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emnist_split: Literal[EMNIST_SPLITS] = Field("balanced", description="which EMNIST split")


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False, **params) -> Dataset:
    """Load dataset ``name`` into memory, normalised.

    ``data_root`` (default ``~/.cache/byzlab/data``) holds the files in torchvision's layout; with
    ``download`` missing files are fetched there through torchvision. ``params`` are the dataset's own
    (``byzlab list datasets``), e.g. ``test_fraction`` and ``split_seed`` for ``digits``, the one dataset
    without a fixed test set.
    """
    loader = DATASETS.get(name)
    parsed = DATASETS.validate_params(name, params)
    return loader(Path(DEFAULT_DATA_ROOT if data_root is None else data_root).expanduser(), download, parsed)


def default_model(dataset: str, parameters: dict | None = None) -> str:
    """The model a dataset trains when the config says ``model.name: auto`` (set where it is registered; a
    dataset of any modality registers one per ``input_kind`` parameter)."""
    if dataset not in DATASETS.names():
        raise ValueError(f"no default model for dataset '{dataset}'; known: {', '.join(DATASETS.names())}")
    default = DATASETS.get(dataset).default_model
    return default[(parameters or {}).get("input_kind")] if isinstance(default, dict) else default


@DATASETS.register_function("digits", DigitsParams, default_model="mlp", modality="image")
def _load_digits(root: Path, download: bool, params: DigitsParams) -> Dataset:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grey images, 10 classes, seeded stratified
    train/test split (embedded, works offline).

    Standardised with the train split's statistics."""
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images[:, None] / 16.0).astype(np.float32)  # values 0..16 -> [0, 1]
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=params.test_fraction, stratify=digits.target,
        random_state=params.split_seed,
    )
    mean, std = train_x.mean(), train_x.std()
    return _dataset("digits", (train_x - mean) / std, train_y, (test_x - mean) / std, test_y, num_classes=10)


@DATASETS.register_function("fashion-mnist", default_model="cnn", modality="image")
def _load_fashion_mnist(root: Path, download: bool, params: NoParams) -> Dataset:
    """Fashion-MNIST (Zalando): 60,000 train / 10,000 test 28x28 grey images, 10 classes (Debian
    dataset-fashion-mnist, or torchvision layout under the data root).

    Read from Debian's package if installed, else from ``<root>/FashionMNIST/raw``."""
    raw_dir = root / "FashionMNIST" / "raw"

    def find() -> list[Path] | None:
        debian_files = _find_files(DEBIAN_FASHION_MNIST_DIR, _MNIST_FILE_STEMS, gzipped_too=True)
        return debian_files if debian_files is not None else _find_files(raw_dir, _MNIST_FILE_STEMS, gzipped_too=True)

    paths = _locate(
        find,
        fetch=lambda: _download_with_torchvision("FashionMNIST", root),
        download=download,
        missing_message=f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST_DIR} or {raw_dir}; install Debian's "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), set data.download=true, "
        f"or put the IDX files under {raw_dir}.",
    )
    return _idx_dataset("fashion-mnist", paths, num_classes=10)


@DATASETS.register_function("mnist", default_model="cnn", modality="image")
def _load_mnist(root: Path, download: bool, params: NoParams) -> Dataset:
    """MNIST handwritten digits: 60,000 train / 10,000 test 28x28 grey images, 10 classes."""
    raw_dir = root / "MNIST" / "raw"
    paths = _locate(
        lambda: _find_files(raw_dir, _MNIST_FILE_STEMS, gzipped_too=True),
        fetch=lambda: _download_with_torchvision("MNIST", root),
        download=download,
        missing_message=_missing_message("MNIST", raw_dir, _MNIST_FILE_STEMS, gzipped_too=True),
    )
    return _idx_dataset("mnist", paths, num_classes=10)


@DATASETS.register_function("emnist", EmnistParams, default_model="cnn", modality="image")
def _load_emnist(root: Path, download: bool, params: EmnistParams) -> Dataset:
    """EMNIST handwritten characters: 28x28 grey images; split set by emnist_split (balanced: 112,800
    train / 18,800 test, 47 classes).

    Images are stored transposed in the files and are turned upright here."""
    split = params.emnist_split
    raw_dir = root / "EMNIST" / "raw"
    stems = tuple(
        f"emnist-{split}-{part}-{kind}-idx{ndim}-ubyte"
        for part in ("train", "test")
        for kind, ndim in (("images", 3), ("labels", 1))
    )
    paths = _locate(
        lambda: _find_files(raw_dir, stems, gzipped_too=True),
        fetch=lambda: _download_with_torchvision("EMNIST", root, split=split),
        download=download,
        missing_message=_missing_message(f"EMNIST ({split})", raw_dir, stems, gzipped_too=True),
    )
    label_offset = 1 if split == "letters" else 0
    return _idx_dataset(
        "emnist", paths, num_classes=_EMNIST_NUM_CLASSES[split], transposed=True, label_offset=label_offset
    )


@DATASETS.register_function("cifar10", default_model="cifar_cnn", modality="image")
def _load_cifar10(root: Path, download: bool, params: NoParams) -> Dataset:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 colour images, 10 classes."""
    return _load_cifar("cifar10", root, "cifar-10-batches-py", _CIFAR10_BATCHES, b"labels", download)


@DATASETS.register_function("cifar100", default_model="cifar_cnn", modality="image")
def _load_cifar100(root: Path, download: bool, params: NoParams) -> Dataset:
    """CIFAR-100: 50,000 train / 10,000 test 32x32 colour images, 100 fine classes."""
    return _load_cifar("cifar100", root, "cifar-100-python", _CIFAR100_BATCHES, b"fine_labels", download)


def _load_cifar(
    name: str, root: Path, folder: str, batch_names: Sequence[str], label_key: bytes, download: bool
) -> Dataset:
    """CIFAR-10/100 from the python pickle batches in ``<root>/<folder>``; the last batch is the test batch."""
    directory = root / folder
    paths = _locate(
        lambda: _find_files(directory, batch_names),
        fetch=lambda: _download_with_torchvision(name.upper(), root),
        download=download,
        missing_message=_missing_message(name.upper(), directory, batch_names),
    )
    batches = [_read_cifar_batch(path, label_key) for path in paths]
    train_images = np.concatenate([images for images, _ in batches[:-1]])
    train_labels = np.concatenate([labels for _, labels in batches[:-1]])
    test_images, test_labels = batches[-1]
    stats = _CHANNEL_STATS[name]
    return _dataset(
        name,
        _normalised(train_images, stats),
        train_labels,
        _normalised(test_images, stats),
        test_labels,
        num_classes=_CIFAR_NUM_CLASSES[name],
    )


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle: uint8 images (N, 3, 32, 32) and int64 labels. Pickles run code: trusted files only."""
    with open(path, "rb") as file:
        batch = pickle.load(file, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch[label_key], dtype=np.int64)


@DATASETS.register_function("svhn", default_model="cifar_cnn", modality="image")
def _load_svhn(root: Path, download: bool, params: NoParams) -> Dataset:
    """SVHN house-number digits: 73,257 train / 26,032 test 32x32 colour images, 10 classes.

    The files label the digit 0 as 10."""
    # Imported here: only this dataset needs scipy.io.
    from scipy.io import loadmat

    def fetch() -> None:
        for split in ("train", "test"):
            _download_with_torchvision("SVHN", root, split=split)

    paths = _locate(
        lambda: _find_files(root, _SVHN_FILES),
        fetch=fetch,
        download=download,
        missing_message=_missing_message("SVHN", root, _SVHN_FILES),
    )
    splits = []
    for path in paths:
        mat = loadmat(path)
        images = mat["X"].transpose(3, 2, 0, 1)  # stored (H, W, C, N)
        labels = mat["y"].astype(np.int64).ravel()
        labels[labels == 10] = 0
        splits.append((_normalised(images, _CHANNEL_STATS["svhn"]), labels))
    (train_x, train_y), (test_x, test_y) = splits
    return _dataset("svhn", train_x, train_y, test_x, test_y, num_classes=10)


def _idx_dataset(
    name: str, paths: Sequence[Path], num_classes: int, *, transposed: bool = False, label_offset: int = 0
) -> Dataset:
    """A dataset from four IDX files: train images, train labels, test images, test labels."""
    train_images, train_labels, test_images, test_labels = (_read_idx(path) for path in paths)
    stats = _CHANNEL_STATS[name]

    def images(raw: np.ndarray) -> np.ndarray:
        upright = raw.transpose(0, 2, 1) if transposed else raw
        return _normalised(upright[:, None], stats)

    def labels(raw: np.ndarray) -> np.ndarray:
        return raw.astype(np.int64) - label_offset

    return _dataset(
        name, images(train_images), labels(train_labels), images(test_images), labels(test_labels), num_classes
    )


def _read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX file (the MNIST family's format, gzipped when named ``*.gz``) as a read-only array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    # Magic number: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] == 0:
        raise ValueError(f"{path} is not a uint8 IDX file (magic number {data[:4].hex()})")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header_size + int(np.prod(shape)):
        raise ValueError(f"{path} holds {len(data) - header_size} bytes of data, its header says shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _normalised(images: np.ndarray, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> np.ndarray:
    """uint8 NCHW images as C-contiguous float32, scaled to [0, 1] then standardised per channel.

    The conversion to float32 is the one copy; the rest happens in place.
    """
    mean, std = (np.asarray(values, dtype=np.float32).reshape(-1, 1, 1) for values in stats)
    floats = images.astype(np.float32, order="C")
    floats *= 1.0 / (255.0 * std)
    floats -= mean / std
    return floats


def _dataset(
    name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int
) -> Dataset:
    """A Dataset with contiguous float32 images and int64 labels, checked for consistent sizes and labels."""
    for x, y in ((train_x, train_y), (test_x, test_y)):
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: labels span {y.min()}..{y.max()}, expected 0..{num_classes - 1}")
    return Dataset(
        name=name,
        train_x=np.ascontiguousarray(train_x, dtype=np.float32),
        train_y=np.ascontiguousarray(train_y, dtype=np.int64),
        test_x=np.ascontiguousarray(test_x, dtype=np.float32),
        test_y=np.ascontiguousarray(test_y, dtype=np.int64),
        num_classes=num_classes,
    )


def _find_files(directory: Path, names: Sequence[str], gzipped_too: bool = False) -> list[Path] | None:
    """The paths of ``names`` in ``directory`` (each also looked for as ``name.gz`` when ``gzipped_too``),
    or None if any is missing."""
    paths = []
    for name in names:
        candidates = [directory / name, directory / f"{name}.gz"] if gzipped_too else [directory / name]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            return None
        paths.append(found)
    return paths


_Found = TypeVar("_Found")


def _locate(
    find: Callable[[], _Found | None], fetch: Callable[[], object], download: bool, missing_message: str
) -> _Found:
    """What ``find`` returns, after fetching the files first if they are missing and ``download`` allows it."""
    found = find()
    if found is None and download:
        fetch()
        found = find()
    if found is None:
        raise DatasetNotFoundError(missing_message)
    return found


def _missing_message(dataset: str, directory: Path, names: Sequence[str], gzipped_too: bool = False) -> str:
    listed = ", ".join(f"{name}[.gz]" if gzipped_too else name for name in names)
    return (
        f"{dataset} not found in {directory}; set data.download=true to fetch it with torchvision, "
        f"or put {listed} there."
    )


def _download_with_torchvision(class_name: str, root: Path, **kwargs: str) -> None:
    """Download a dataset's files into ``root`` in torchvision's layout."""
    # Imported here: torchvision is slow to import and is only needed for downloads.
    import torchvision.datasets

    getattr(torchvision.datasets, class_name)(str(root), download=True, **kwargs)

