"""Dataset loading: the embedded digits, Debian's Fashion-MNIST, and tiny fixture files written in the
on-disk formats of MNIST, EMNIST, CIFAR-10/100 and SVHN."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from byzlab.orchestrator.data import datasets
from byzlab.orchestrator.data.datasets import (
    dataset_names,
    EMNIST_SPLITS,
    Dataset,
    DatasetNotFoundError,
    DATASETS,
    load_dataset,
)

# The published per-channel constants, written out here so the test checks them independently.
MNIST_STATS = ([0.1307], [0.3081])
EMNIST_STATS = ([0.1751], [0.3332])
CIFAR10_STATS = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
CIFAR100_STATS = ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
SVHN_STATS = ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970])

N_TRAIN, N_TEST = 20, 10


def assert_well_formed(dataset: Dataset, n_train: int, n_test: int, input_shape: tuple[int, int, int]) -> None:
    assert dataset.train_x.shape == (n_train, *input_shape)
    assert dataset.test_x.shape == (n_test, *input_shape)
    assert dataset.train_y.shape == (n_train,)
    assert dataset.test_y.shape == (n_test,)
    assert dataset.input_shape == input_shape
    for images in (dataset.train_x, dataset.test_x):
        assert images.dtype == np.float32 and images.flags.c_contiguous
    for labels in (dataset.train_y, dataset.test_y):
        assert labels.dtype == np.int64 and labels.flags.c_contiguous
        assert labels.min() >= 0 and labels.max() < dataset.num_classes


def denormalised(images: np.ndarray, stats: tuple[list[float], list[float]]) -> np.ndarray:
    """Undo per-channel standardisation, back to [0, 255] pixel values."""
    mean, std = (np.array(values, dtype=np.float64).reshape(-1, 1, 1) for values in stats)
    return (images * std + mean) * 255.0


def uint8_images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random images whose first is all black and second all white."""
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)


MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_arrays(rng: np.random.Generator, num_classes: int = 10) -> list[np.ndarray]:
    """Train images, train labels, test images, test labels as stored in IDX files."""
    return [
        uint8_images(rng, (N_TRAIN, 28, 28)),
        rng.integers(0, num_classes, size=N_TRAIN).astype(np.uint8),
        uint8_images(rng, (N_TEST, 28, 28)),
        rng.integers(0, num_classes, size=N_TEST).astype(np.uint8),
    ]


def write_mnist_layout(raw_dir: Path, rng: np.random.Generator) -> list[np.ndarray]:
    """MNIST-style IDX files in raw_dir, train files gzipped and test files plain; returns the arrays."""
    arrays = idx_arrays(rng)
    for name, array in zip(MNIST_FILES, arrays):
        write_idx(raw_dir / name, array)
    return arrays


# --- digits -----------------------------------------------------------------------------------------


def test_digits_shapes_and_normalisation():
    dataset = load_dataset("digits")
    n_test = dataset.test_y.size
    assert dataset.train_y.size + n_test == 1797
    assert abs(n_test - 0.25 * 1797) <= 1
    assert_well_formed(dataset, 1797 - n_test, n_test, (1, 8, 8))
    assert dataset.num_classes == 10
    assert abs(float(dataset.train_x.mean())) < 1e-5
    assert float(dataset.train_x.std()) == pytest.approx(1.0, abs=1e-5)


def test_digits_split_is_stratified():
    dataset = load_dataset("digits", test_fraction=0.3)
    all_labels = np.concatenate([dataset.train_y, dataset.test_y])
    per_class = np.bincount(all_labels, minlength=10)
    test_per_class = np.bincount(dataset.test_y, minlength=10)
    assert np.all(np.abs(test_per_class - 0.3 * per_class) <= 1)


def test_digits_split_follows_the_seed():
    first, again, other = (load_dataset("digits", split_seed=seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first.train_x, again.train_x)
    np.testing.assert_array_equal(first.test_y, again.test_y)
    assert not np.array_equal(first.test_x, other.test_x)


# --- fashion-mnist --------------------------------------------------------------------------------------


def test_fashion_mnist_from_debian_package():
    if not (datasets.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({datasets.DEBIAN_FASHION_MNIST_DIR})")
    dataset = load_dataset("fashion-mnist")
    assert_well_formed(dataset, 60000, 10000, (1, 28, 28))
    assert dataset.num_classes == 10
    np.testing.assert_array_equal(np.unique(dataset.train_y), np.arange(10))
    np.testing.assert_array_equal(np.unique(dataset.test_y), np.arange(10))
    # The published constants are the train set's statistics, so standardised train images are ~N(0, 1).
    assert abs(float(dataset.train_x.mean())) < 0.01
    assert float(dataset.train_x.std()) == pytest.approx(1.0, abs=0.01)


def test_fashion_mnist_falls_back_to_data_root(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    train_images, train_labels, _, test_labels = write_mnist_layout(
        tmp_path / "FashionMNIST" / "raw", np.random.default_rng(0)
    )
    dataset = load_dataset("fashion-mnist", tmp_path)
    assert_well_formed(dataset, N_TRAIN, N_TEST, (1, 28, 28))
    np.testing.assert_array_equal(dataset.train_y, train_labels)
    np.testing.assert_array_equal(dataset.test_y, test_labels)
    np.testing.assert_allclose(denormalised(dataset.train_x, ([0.2860], [0.3530]))[:, 0], train_images, atol=1e-3)


def test_fashion_mnist_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion-mnist", tmp_path / "empty-root", download=False)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.download=true" in message
    assert str(tmp_path / "empty-root" / "FashionMNIST" / "raw") in message


# --- mnist, emnist --------------------------------------------------------------------------------------------


def test_mnist_from_idx_files(tmp_path):
    train_images, train_labels, test_images, test_labels = write_mnist_layout(
        tmp_path / "MNIST" / "raw", np.random.default_rng(1)
    )
    dataset = load_dataset("mnist", tmp_path)
    assert_well_formed(dataset, N_TRAIN, N_TEST, (1, 28, 28))
    assert dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.train_y, train_labels)
    np.testing.assert_array_equal(dataset.test_y, test_labels)
    np.testing.assert_allclose(dataset.train_x[0], -0.1307 / 0.3081, rtol=1e-5)
    np.testing.assert_allclose(dataset.train_x[1], (1 - 0.1307) / 0.3081, rtol=1e-5)
    np.testing.assert_allclose(denormalised(dataset.train_x, MNIST_STATS)[:, 0], train_images, atol=1e-3)
    np.testing.assert_allclose(denormalised(dataset.test_x, MNIST_STATS)[:, 0], test_images, atol=1e-3)


def test_mnist_download_fetches_then_reads(tmp_path, monkeypatch):
    fetched = []

    def fake_download(class_name, root, **kwargs):
        fetched.append(class_name)
        write_mnist_layout(root / "MNIST" / "raw", np.random.default_rng(2))

    monkeypatch.setattr(datasets, "_download_with_torchvision", fake_download)
    dataset = load_dataset("mnist", tmp_path, download=True)
    assert fetched == ["MNIST"]
    assert dataset.train_x.shape == (N_TRAIN, 1, 28, 28)
    load_dataset("mnist", tmp_path, download=True)
    assert fetched == ["MNIST"], "files already on disk must not be fetched again"


def test_emnist_images_are_turned_upright(tmp_path):
    train_images, train_labels, test_images, test_labels = idx_arrays(np.random.default_rng(3), num_classes=47)
    train_images[2] = 0
    train_images[2, 0, :] = 255  # the stored first row, which is the upright image's first column
    raw_dir = tmp_path / "EMNIST" / "raw"
    write_idx(raw_dir / "emnist-balanced-train-images-idx3-ubyte.gz", train_images)
    write_idx(raw_dir / "emnist-balanced-train-labels-idx1-ubyte.gz", train_labels)
    write_idx(raw_dir / "emnist-balanced-test-images-idx3-ubyte", test_images)
    write_idx(raw_dir / "emnist-balanced-test-labels-idx1-ubyte", test_labels)

    dataset = load_dataset("emnist", tmp_path, emnist_split="balanced")
    assert_well_formed(dataset, N_TRAIN, N_TEST, (1, 28, 28))
    assert dataset.num_classes == 47
    np.testing.assert_array_equal(dataset.train_y, train_labels)
    np.testing.assert_array_equal(dataset.test_y, test_labels)
    white, black = (1 - 0.1751) / 0.3332, -0.1751 / 0.3332
    np.testing.assert_allclose(dataset.train_x[2, 0, :, 0], white, rtol=1e-5)
    np.testing.assert_allclose(dataset.train_x[2, 0, :, 1:], black, rtol=1e-5)
    upright_test = test_images.transpose(0, 2, 1)
    np.testing.assert_allclose(denormalised(dataset.test_x, EMNIST_STATS)[:, 0], upright_test, atol=1e-3)


def test_emnist_letters_labels_start_at_zero(tmp_path):
    raw_dir = tmp_path / "EMNIST" / "raw"
    rng = np.random.default_rng(4)
    labels = {"train": np.arange(1, N_TRAIN + 1) % 26 + 1, "test": np.arange(N_TEST) % 26 + 1}
    for part, part_labels in labels.items():
        write_idx(raw_dir / f"emnist-letters-{part}-images-idx3-ubyte", uint8_images(rng, (part_labels.size, 28, 28)))
        write_idx(raw_dir / f"emnist-letters-{part}-labels-idx1-ubyte", part_labels.astype(np.uint8))
    dataset = load_dataset("emnist", tmp_path, emnist_split="letters")
    assert dataset.num_classes == 26
    np.testing.assert_array_equal(dataset.train_y, labels["train"] - 1)
    np.testing.assert_array_equal(dataset.test_y, labels["test"] - 1)


def test_emnist_unknown_split(tmp_path):
    assert "balanced" in EMNIST_SPLITS
    with pytest.raises(ValueError, match="balanced"):
        load_dataset("emnist", tmp_path, emnist_split="kanji")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\x00\x09\x03" + struct.pack(">3I", 1, 28, 28) + bytes(784), "magic number"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(784), "header says"),
    ],
    ids=["not-uint8", "truncated"],
)
def test_malformed_idx_file_is_rejected(tmp_path, content, problem):
    write_mnist_layout(tmp_path / "MNIST" / "raw", np.random.default_rng(5))
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        load_dataset("mnist", tmp_path)


# --- cifar ----------------------------------------------------------------------------------------------------


def write_pickle(path: Path, batch: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(batch, file)


def test_cifar10_from_pickle_batches(tmp_path):
    rng = np.random.default_rng(6)
    directory = tmp_path / "cifar-10-batches-py"
    train_images, train_labels = [], []
    for index in range(1, 6):
        images = uint8_images(rng, (N_TRAIN // 5, 3 * 32 * 32))
        labels = rng.integers(0, 10, size=N_TRAIN // 5).tolist()
        write_pickle(directory / f"data_batch_{index}", {b"data": images, b"labels": labels})
        train_images.append(images)
        train_labels += labels
    test_images = uint8_images(rng, (N_TEST, 3 * 32 * 32))
    test_labels = rng.integers(0, 10, size=N_TEST).tolist()
    write_pickle(directory / "test_batch", {b"data": test_images, b"labels": test_labels})

    dataset = load_dataset("cifar10", tmp_path)
    assert_well_formed(dataset, N_TRAIN, N_TEST, (3, 32, 32))
    assert dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.train_y, train_labels)
    np.testing.assert_array_equal(dataset.test_y, test_labels)
    mean, std = (np.array(values) for values in CIFAR10_STATS)
    np.testing.assert_allclose(dataset.train_x[0].mean(axis=(1, 2)), -mean / std, rtol=1e-5)
    expected = np.concatenate(train_images).reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(denormalised(dataset.train_x, CIFAR10_STATS), expected, atol=1e-3)
    np.testing.assert_allclose(
        denormalised(dataset.test_x, CIFAR10_STATS), test_images.reshape(-1, 3, 32, 32), atol=1e-3
    )


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(7)
    directory = tmp_path / "cifar-100-python"
    parts = {}
    for name, size in (("train", N_TRAIN), ("test", N_TEST)):
        parts[name] = {
            b"data": uint8_images(rng, (size, 3 * 32 * 32)),
            b"fine_labels": rng.integers(20, 100, size=size).tolist(),
            b"coarse_labels": rng.integers(0, 20, size=size).tolist(),
        }
        write_pickle(directory / name, parts[name])

    dataset = load_dataset("cifar100", tmp_path)
    assert_well_formed(dataset, N_TRAIN, N_TEST, (3, 32, 32))
    assert dataset.num_classes == 100
    np.testing.assert_array_equal(dataset.train_y, parts["train"][b"fine_labels"])
    np.testing.assert_array_equal(dataset.test_y, parts["test"][b"fine_labels"])
    mean, std = (np.array(values) for values in CIFAR100_STATS)
    np.testing.assert_allclose(dataset.test_x[1].mean(axis=(1, 2)), (1 - mean) / std, rtol=1e-5)


# --- svhn ----------------------------------------------------------------------------------------------------------


def test_svhn_from_mat_files(tmp_path):
    rng = np.random.default_rng(8)
    stored = {}
    for name, size in (("train", N_TRAIN), ("test", N_TEST)):
        images = rng.integers(0, 256, size=(32, 32, 3, size), dtype=np.uint8)  # (H, W, C, N) as in the files
        labels = (np.arange(size) % 10 + 1).astype(np.uint8).reshape(-1, 1)  # digits 1..9, and 10 for zero
        savemat(tmp_path / f"{name}_32x32.mat", {"X": images, "y": labels})
        stored[name] = (images, labels)
    train_images, _ = stored["train"]
    train_images[...] = 0
    train_images[2, 5, 1, 0] = 255  # row 2, column 5, green, first image
    savemat(tmp_path / "train_32x32.mat", {"X": train_images, "y": stored["train"][1]})

    dataset = load_dataset("svhn", tmp_path)
    assert_well_formed(dataset, N_TRAIN, N_TEST, (3, 32, 32))
    assert dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.train_y, (np.arange(N_TRAIN) % 10 + 1) % 10)
    assert set(dataset.test_y.tolist()) == set(range(10))
    mean, std = (np.array(values) for values in SVHN_STATS)
    np.testing.assert_allclose(dataset.train_x[1].mean(axis=(1, 2)), -mean / std, rtol=1e-5)
    assert dataset.train_x[0, 1, 2, 5] == pytest.approx((1 - mean[1]) / std[1], rel=1e-5)
    assert dataset.train_x[0, 1, 5, 2] == pytest.approx(-mean[1] / std[1], rel=1e-5)
    test_images = stored["test"][0].transpose(3, 2, 0, 1)
    np.testing.assert_allclose(denormalised(dataset.test_x, SVHN_STATS), test_images, atol=1e-3)


# --- missing files, names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "searched"),
    [
        ("mnist", "MNIST/raw"),
        ("emnist", "EMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", ""),
    ],
)
def test_missing_files_without_download(tmp_path, name, searched):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / searched) in message
    assert "data.download=true" in message
    assert isinstance(error.value, FileNotFoundError)


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        load_dataset("imagenet")
    message = str(error.value)
    assert "'imagenet'" in message
    assert all(name in message for name in dataset_names("image"))


def test_every_dataset_describes_itself_and_its_parameters():
    assert tuple(dataset_names("image")) == ("digits", "fashion-mnist", "mnist", "emnist", "cifar10", "cifar100", "svhn",
                                             "femnist", "tiny-imagenet")
    assert tuple(dataset_names("text")) == ("shakespeare", "amazon-kindle", "mind")
    assert tuple(dataset_names("tabular")) == ("csv", "adult", "lending-club")
    assert all(len(DATASETS.describe(name).splitlines()[0]) > 20 for name in DATASETS.names())
    assert DATASETS.describe("digits").splitlines()[1:] == [
        "test_fraction=0.25: share held out for testing",
        "split_seed=0: seed of the stratified train/test split (0 <= seed < 2^32)",
    ]
