"""Hub data (orchestrator/data/hub.py, hub_catalog.py): every public copy loads from a copy written in its
real format with its real columns, natural partitions put each group on one client, encoders see only the
training rows, and bad input is one line before anything is written."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import hub_fixtures
from byzlab.orchestrator import cli
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.errors import DatasetNotFoundError
from byzlab.orchestrator.data.datasets import DATASETS, dataset_names, load_dataset
from byzlab.orchestrator.data.hub import saved_copy_dir
from byzlab.orchestrator.specs.inputs import load_configured_dataset, make_partition


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    for write in hub_fixtures.WRITERS.values():
        write(root)
    return root


@pytest.mark.parametrize("name, shape, classes, groups, dtype", [
    ("femnist", (1, 28, 28), 62, 12, np.float32),
    ("shakespeare", (80,), None, 8, np.int64),
    ("adult", None, 2, None, np.float32),
    ("amazon-kindle", (200,), 2, None, np.int64),
    ("lending-club", None, 3, 6, np.float32),
    ("tiny-imagenet", (3, 64, 64), 200, None, np.float32),
    ("mind", (64,), 4, None, np.int64),
])
def test_every_public_copy_loads_from_its_real_format(hub_root, name, shape, classes, groups, dtype):
    data = load_dataset(name, hub_root)
    assert data.train_x.dtype == dtype and len(data.train_x) == len(data.train_y) > 0 and len(data.test_y) > 0
    if shape is not None:
        assert data.input_shape == shape
    if classes is not None:
        assert data.num_classes == classes
    assert (None if data.train_groups is None else len(np.unique(data.train_groups))) == groups
    assert set(np.unique(data.train_y)) <= set(range(data.num_classes))
    if data.is_text:
        assert data.vocabulary[:2] == ("<pad>", "<unk>") and data.train_x.max() < len(data.vocabulary)


def test_the_public_copies_are_listed_with_columns_and_terms():
    terms = {"femnist": "BSD-2-Clause", "shakespeare": "BSD-2-Clause", "adult": "CC0-1.0", "amazon-kindle": "no licence",
             "lending-club": "licence not stated", "tiny-imagenet": "ImageNet terms",
             "mind": "Microsoft Research License Terms"}
    for name, term in terms.items():
        assert term in DATASETS.describe(name).splitlines()[0], name
    assert "writer_id" in DATASETS.describe("femnist") and "character_id" in DATASETS.describe("shakespeare")
    assert {"femnist", "tiny-imagenet"} <= set(dataset_names("image"))  # so they can be server data too


def test_class_labels_keep_the_datasets_own_ids(hub_root):
    """FEMNIST's ClassLabel puts digits at 0-9 of 62 classes; the fixture only holds digits."""
    data = load_dataset("femnist", hub_root)
    assert data.num_classes == 62 and data.train_y.max() <= 9


def test_tiny_imagenet_uses_its_valid_split_and_makes_grey_images_colour(hub_root):
    data = load_dataset("tiny-imagenet", hub_root)
    assert (len(data.train_y), len(data.test_y)) == (120, 24)
    assert data.input_shape == (3, 64, 64)


@pytest.mark.parametrize("dataset, column, clients", [
    ("femnist", "writer_id", 12), ("shakespeare", "character_id", 8), ("lending-club", "addr_state", 6),
])
def test_a_natural_partition_puts_each_group_on_exactly_one_client(hub_root, dataset, column, clients):
    cfg = build_config({}, [f"data.dataset={dataset}", f"data.data_root={hub_root}", "partition.scheme=natural",
                            f"clients.num_clients={clients}"])
    data = load_configured_dataset(cfg)
    parts = make_partition(cfg, data)
    owners = [set(data.train_groups[part].tolist()) for part in parts]
    assert all(len(owner) == 1 for owner in owners) and len(set().union(*owners)) == clients
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(data.train_y)))


def test_a_natural_partition_with_fewer_clients_samples_writers(hub_root):
    """LEAF's writer sampling (LASA Table 4): 5 of the 12 writers, whole, chosen by the run's seed."""
    cfg = build_config({}, ["data.dataset=femnist", f"data.data_root={hub_root}", "partition.scheme=natural",
                            "clients.num_clients=5"])
    data = load_configured_dataset(cfg)
    parts = make_partition(cfg, data)
    writers = [int(data.train_groups[part[0]]) for part in parts]
    assert len(set(writers)) == 5
    assert all(np.array_equal(part, np.flatnonzero(data.train_groups == w)) for part, w in zip(parts, writers))


def _splits_file(tmp_path, train: dict, test: dict):
    """A save_to_disk copy with explicit train and test splits."""
    import datasets

    path = tmp_path / "copy"
    datasets.DatasetDict(train=datasets.Dataset.from_dict(train), test=datasets.Dataset.from_dict(test)).save_to_disk(str(path))
    return path


def test_word_and_character_vocabularies_come_from_the_training_rows_only(tmp_path):
    path = _splits_file(tmp_path, {"text": ["good book", "bad book"] * 4, "label": [1, 0] * 4},
                        {"text": ["good zebra", "bad book"], "label": [1, 0]})
    words = load_dataset("huggingface", tmp_path, hf_path=str(path), input_kind="words", input_columns=["text"],
                         test_split="test", max_length=3)
    assert words.vocabulary == ("<pad>", "<unk>", "bad", "book", "good")
    assert words.test_x[0].tolist() == [4, 1, 0]  # "zebra" is only in the test rows: unknown
    path = _splits_file(tmp_path / "c", {"x": ["abab", "baba"] * 4, "y": ["a", "b"] * 4},
                        {"x": ["abzb", "baba"], "y": ["z", "b"]})
    chars = load_dataset("huggingface", tmp_path, hf_path=str(path), input_kind="characters", input_columns=["x"],
                         label_column="y", test_split="test", max_length=5)
    assert chars.vocabulary == ("<pad>", "<unk>", "a", "b") and chars.num_classes == 4
    assert chars.test_x[0].tolist() == [0, 2, 3, 1, 3] and chars.test_y.tolist() == [1, 3]  # right-aligned


def test_images_and_rows_are_standardised_with_the_training_statistics(tmp_path):
    rng = np.random.default_rng(0)
    train = {"image": [rng.integers(0, 100, (6, 6)).tolist() for _ in range(20)], "label": [0, 1] * 10}
    test = {"image": [rng.integers(100, 200, (6, 6)).tolist() for _ in range(4)], "label": [0, 1] * 2}
    path = _splits_file(tmp_path, train, test)
    data = load_dataset("huggingface", tmp_path, hf_path=str(path), input_kind="image", input_columns=["image"],
                        test_split="test")
    assert data.input_shape == (1, 6, 6)
    assert abs(data.train_x.mean()) < 1e-5 and abs(data.train_x.std() - 1) < 1e-3
    assert data.test_x.mean() > 1.5  # brighter test images stay brighter: no statistics of their own
    path = _splits_file(tmp_path / "t", {"age": [20.0, 40.0] * 5, "job": ["a", "b"] * 5, "label": [0, 1] * 5},
                        {"age": [100.0], "job": ["c"], "label": [1]})
    rows = load_dataset("huggingface", tmp_path, hf_path=str(path), input_kind="tabular", test_split="test")
    assert rows.feature_names == ("age", "job_a", "job_b")
    assert rows.test_x.tolist() == [[7.0, 0.0, 0.0]]  # (100 - 30) / 10; the unseen category encodes as zeros


def test_files_label_maps_and_row_samples(tmp_path):
    table = pa.table({"text": [f"word{i % 5} filler" for i in range(40)], "rating": [1.0, 2.0, 3.0, 4.0, 5.0] * 8})
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(table, tmp_path / "part-1.parquet")
    common = dict(input_kind="words", input_columns=["text"], label_column="rating",
                  label_map={"1.0": "negative", "2.0": "negative", "4.0": "positive", "5.0": "positive"})
    both = load_dataset("huggingface", tmp_path, hf_path=str(tmp_path / "part-*.parquet"), **common)
    assert len(both.train_y) + len(both.test_y) == 64 and both.num_classes == 2  # the 3-star rows are dropped
    sample = load_dataset("huggingface", tmp_path, hf_path=str(tmp_path / "part-0.parquet"), max_rows=20, **common)
    again = load_dataset("huggingface", tmp_path, hf_path=str(tmp_path / "part-0.parquet"), max_rows=20, **common)
    assert len(sample.train_y) + len(sample.test_y) <= 20 and np.array_equal(sample.train_x, again.train_x)


def test_text_longer_than_the_maximum_is_cut_or_refused(tmp_path):
    path = _splits_file(tmp_path, {"text": ["one two three four", "five six"] * 4, "label": [0, 1] * 4},
                        {"text": ["one two"], "label": [0]})
    common = dict(hf_path=str(path), input_kind="words", input_columns=["text"], test_split="test", max_length=2)
    assert load_dataset("huggingface", tmp_path, **common).train_x.shape == (8, 2)
    with pytest.raises(ValueError, match="column 'text' row 0 has 4 words, more than max_length 2; raise max_length"):
        load_dataset("huggingface", tmp_path, truncate=False, **common)


def test_an_offline_missing_hub_dataset_names_where_it_looked_and_how_to_fetch_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("femnist", tmp_path)
    message = str(error.value)
    assert "flwrlabs/femnist not found" in message and str(saved_copy_dir(tmp_path, "flwrlabs/femnist", None)) in message
    assert "data.download=true" in message
    with pytest.raises(DatasetNotFoundError, match="MIND not found at .*news.tsv; set data.download=true"):
        load_dataset("mind", tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=huggingface", "data.hf_path=flwrlabs/femnist", "data.input_kind=image",
      "data.input_columns=[picture]", "data.label_column=character"],
     "data: column 'picture' is not in flwrlabs/femnist (train); its columns: image, writer_id, hsf_id, character"),
    (["data.dataset=huggingface", "data.hf_path=flwrlabs/femnist", "data.input_kind=image",
      "data.input_columns=[image]", "data.label_column=hsf_id", "data.label_map={'3': three}"],
     "label column 'hsf_id' has one class"),
    (["data.dataset=femnist", "partition.scheme=natural", "clients.num_clients=20"],
     "the data has 12 groups with at least 1 training samples, fewer than clients.num_clients (20)"),
    (["data.dataset=shakespeare", "data.max_length=40"], "column 'x' row 0 has 80 characters, more than max_length 40"),
    (["data.dataset=huggingface", "data.hf_path=flwrlabs/femnist", "data.input_kind=image",
      "data.input_columns=[image]", "data.train_split=validation"], "split 'validation' is not in flwrlabs/femnist; its splits: train"),
    (["data.dataset=femnist", "data.vocab_size=10"], "'vocab_size' is not a parameter of dataset 'femnist'"),
])
def test_bad_hub_settings_are_one_line_and_write_nothing(hub_root, tmp_path, overrides, message):
    output = tmp_path / "out"
    args = ["run", "-o", f"data.data_root={hub_root}", "-o", f"run.output_dir={output}", "-o", "tracking.enabled=false"]
    for override in overrides:
        args += ["-o", override]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not output.exists()


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=shakespeare", "model.name=cnn"], "model: model 'cnn' takes images or tabular rows, not token ids"),
    (["data.dataset=femnist", "model.name=fasttext"], "model: model 'fasttext' reads token ids and needs text data"),
    (["data.dataset=mind", "model.embeddings_path=/nonexistent/glove.txt"], "/nonexistent/glove.txt"),
])
def test_a_model_that_cannot_take_the_data_is_one_line_before_anything_is_written(hub_root, tmp_path, overrides, message):
    test_bad_hub_settings_are_one_line_and_write_nothing(hub_root, tmp_path, overrides, message)
