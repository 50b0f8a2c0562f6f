import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzlab.orchestrator.config import ExperimentConfig
from byzlab.orchestrator.data.datasets import Dataset
from byzlab.orchestrator.learning.models import MODEL_NAMES, MODELS, TEXT_MODEL_NAMES, build_model
from byzlab.orchestrator.specs.roles import ModelSpec, model_spec

VOCABULARY = ("<pad>", "<unk>", "the", "cat", "dog", "sat", *(f"w{i}" for i in range(24)))  # 30 tokens
SMALL = {"fasttext": {"embedding_dim": 6}, "text_cnn": {"embedding_dim": 6, "num_filters": 3},
         "char_lstm": {"hidden_size": 10}}


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tokens(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, len(VOCABULARY), (rows, length), generator=torch.Generator().manual_seed(seed))


def test_the_text_models_are_listed_apart_from_the_image_and_row_models():
    assert TEXT_MODEL_NAMES == ("fasttext", "text_cnn", "char_lstm")
    assert MODEL_NAMES == ("mlp", "cnn", "cifar_cnn", "resnet18", "residual_cnn", "pawbrofl_cnn")
    assert all(len(MODELS.describe(name).splitlines()[0]) > 20 for name in TEXT_MODEL_NAMES)
    assert MODELS.describe("char_lstm").splitlines()[1:] == [
        "embedding_dim=8: width of the token embeddings",
        "hidden_size=256: units of each LSTM layer (LEAF's Shakespeare model: 256)",
        "num_layers=2: stacked LSTM layers (LASA App. 7.2: 2)",
    ]


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
@pytest.mark.parametrize("length", [1, 7, 40])
def test_forward_gives_one_score_per_class(name, length):
    model = build_model(name, (length,), 5, vocabulary=VOCABULARY).eval()
    with torch.no_grad():
        assert model(_tokens(3, length)).shape == (3, 5)


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
def test_same_seed_gives_identical_parameters(name):
    torch.manual_seed(3)
    first = build_model(name, (12,), 5, vocabulary=VOCABULARY, **SMALL[name]).state_dict()
    torch.manual_seed(3)
    again = build_model(name, (12,), 5, vocabulary=VOCABULARY, **SMALL[name]).state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)


def test_layers_carry_readable_names():
    names = {name: [key.rsplit(".", 1)[0] for key in build_model(name, (12,), 5, vocabulary=VOCABULARY,
                                                                  **SMALL[name]).state_dict()]
             for name in TEXT_MODEL_NAMES}
    assert names["fasttext"] == ["embedding", "fc", "fc"]
    assert names["text_cnn"] == ["embedding", *["conv.width3"] * 2, *["conv.width4"] * 2, *["conv.width5"] * 2,
                                 "fc", "fc"]
    assert names["char_lstm"] == ["embedding", *["lstm"] * 8, "fc", "fc"]


def test_parameter_counts():
    vocabulary = tuple(f"t{i}" for i in range(50))
    fasttext = build_model("fasttext", (20,), 2, vocabulary=vocabulary)
    assert _num_parameters(fasttext) == 50 * 100 + 100 * 2 + 2
    # embedding 50x10, convolutions 4 maps of width 2 and 3 over 10 channels, fc from 2*4 pooled features
    text_cnn = build_model("text_cnn", (20,), 3, vocabulary=vocabulary, embedding_dim=10, filter_sizes=[2, 3],
                           num_filters=4)
    assert _num_parameters(text_cnn) == 50 * 10 + (4 * 10 * 2 + 4) + (4 * 10 * 3 + 4) + (8 * 3 + 3)
    # per LSTM layer: 4 gates x hidden x (inputs + hidden) weights and two biases of 4 x hidden
    char_lstm = build_model("char_lstm", (20,), 50, vocabulary=vocabulary, hidden_size=16)
    assert _num_parameters(char_lstm) == (50 * 8 + 4 * 16 * (8 + 16) + 2 * 4 * 16 + 4 * 16 * (16 + 16)
                                          + 2 * 4 * 16 + 16 * 50 + 50)
    defaults = build_model("text_cnn", (20,), 18, vocabulary=vocabulary)  # Kim's sizes, 300-d embeddings
    assert _num_parameters(defaults) == 50 * 300 + sum(100 * 300 * k + 100 for k in (3, 4, 5)) + 300 * 18 + 18


def test_fasttext_averages_the_tokens_and_ignores_padding():
    model = build_model("fasttext", (8,), 2, vocabulary=VOCABULARY)
    text = torch.tensor([[2, 3, 1, 4, 5]])
    padded = F.pad(text, (0, 3))  # trailing padding tokens (id 0)
    with torch.no_grad():
        assert torch.allclose(model(padded), model(text))
        assert torch.allclose(model(text), model.fc(model.embedding.weight[text[0]].mean(0, keepdim=True)))
        assert torch.allclose(model(torch.zeros(1, 8, dtype=torch.long)), model.fc.bias)  # all padding: zeros


def test_text_cnn_pads_texts_shorter_than_its_widest_filter():
    model = build_model("text_cnn", (2,), 4, vocabulary=VOCABULARY, **SMALL["text_cnn"]).eval()
    short = torch.tensor([[3, 4], [5, 1]])
    with torch.no_grad():
        assert torch.equal(model(short), model(F.pad(short, (0, 3))))


def test_text_cnn_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = build_model("text_cnn", (10,), 4, vocabulary=VOCABULARY, dropout=0.5, **SMALL["text_cnn"])
    x = _tokens(64, 10)
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))
    with pytest.raises(ValueError, match="filter sizes must differ"):
        build_model("text_cnn", (10,), 4, vocabulary=VOCABULARY, filter_sizes=[3, 3])


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_text_cnn_takes_the_listed_words_embeddings_from_a_glove_file(tmp_path):
    glove = _write(tmp_path / "glove.4d.txt", [
        "the 0.1 -0.2 0.3 -0.4",
        "zebra 9 9 9 9",  # not in the vocabulary: skipped
        "dog 1.5 2.5 -3.5 4e-3",
        "<pad> 7 7 7 7",  # the padding row stays zero all the same
    ])
    torch.manual_seed(5)
    plain = build_model("text_cnn", (10,), 3, vocabulary=VOCABULARY, embedding_dim=4)
    torch.manual_seed(5)
    model = build_model("text_cnn", (10,), 3, vocabulary=VOCABULARY, embedding_dim=4, embeddings_path=glove)
    weight = model.embedding.weight.detach()
    assert torch.equal(weight[2], torch.tensor([0.1, -0.2, 0.3, -0.4]))
    assert torch.equal(weight[4], torch.tensor([1.5, 2.5, -3.5, 4e-3]))
    assert torch.equal(weight[0], torch.zeros(4))
    others = [1, 3, *range(5, len(VOCABULARY))]  # <unk>, cat, sat, ...: the random draw, unchanged
    assert torch.equal(weight[others], plain.embedding.weight.detach()[others])
    plain_state, state = plain.state_dict(), model.state_dict()
    assert all(torch.equal(plain_state[key], state[key]) for key in state if key != "embedding.weight")


@pytest.mark.parametrize("lines, problem", [
    (["the 0.1 0.2 0.3"], "line 1 holds 3 numbers"),  # a 3-d file for a 4-d embedding
    (["the 1 2 3 4 5"], "line 1 holds 5 numbers"),
    (["the 1 2 3 4", "cat 1 2"], "line 2 holds 2 numbers"),
    (["the 1 2 x 4"], "could not convert"),
    (["zebra 1 2 3 4"], "holds none of the vocabulary's"),
])
def test_a_bad_glove_file_is_refused_naming_the_path(tmp_path, lines, problem):
    path = _write(tmp_path / "bad.txt", lines)
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + re.escape(problem)):
        build_model("text_cnn", (10,), 3, vocabulary=VOCABULARY, embedding_dim=4, embeddings_path=path)


def test_a_missing_glove_file_is_refused_naming_the_path(tmp_path):
    missing = str(tmp_path / "absent.txt")
    with pytest.raises(ValueError, match=re.escape(missing) + ".*4 space-separated numbers"):
        build_model("text_cnn", (10,), 3, vocabulary=VOCABULARY, embedding_dim=4, embeddings_path=missing)


def test_char_lstm_learns_to_predict_the_next_character():
    # "abac" repeated: after an "a" comes "b" or "c" depending on the character before, so the model has
    # to use more than the last character
    vocabulary = ("<pad>", "<unk>", "a", "b", "c")
    text = np.array([vocabulary.index(c) for c in "abac" * 40])
    length = 6
    starts = np.arange(len(text) - length)
    x = torch.as_tensor(np.stack([text[s:s + length] for s in starts]))
    y = torch.as_tensor(text[starts + length])
    torch.manual_seed(0)
    model = build_model("char_lstm", (length,), len(vocabulary), vocabulary=vocabulary)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = torch.randint(len(y), (150, 32), generator=torch.Generator().manual_seed(0))
    for batch in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
def test_a_text_model_needs_a_vocabulary_and_token_ids(name):
    with pytest.raises(ValueError, match=f"model '{name}' reads token ids and needs text data.*no vocabulary"):
        build_model(name, (12,), 5)
    with pytest.raises(ValueError, match=re.escape("got input_shape (1, 8, 8)")):
        build_model(name, (1, 8, 8), 5, vocabulary=VOCABULARY)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_an_image_or_row_model_refuses_a_vocabulary(name):
    with pytest.raises(ValueError, match=f"model '{name}' takes images or tabular rows, not token ids"):
        build_model(name, (12,), 5, vocabulary=VOCABULARY)


def _text_dataset(length: int = 12) -> Dataset:
    x, y = _tokens(20, length).numpy(), np.arange(20) % len(VOCABULARY)
    return Dataset("toy-text", x, y, x, y, len(VOCABULARY), vocabulary=VOCABULARY)


def test_model_spec_carries_the_vocabulary_and_builds_the_text_model():
    spec = model_spec(ExperimentConfig(), _text_dataset())  # the default config's model: mlp
    assert (spec.name, spec.input_shape, spec.num_classes, spec.vocabulary) == ("mlp", (12,), 30, VOCABULARY)
    with pytest.raises(ValueError, match="not token ids"):
        spec.build()
    spec = pickle.loads(pickle.dumps(dataclasses.replace(spec, name="char_lstm", params={"hidden_size": 10})))
    torch.manual_seed(1)
    built = spec.build()
    torch.manual_seed(1)
    direct = build_model("char_lstm", (12,), 30, vocabulary=VOCABULARY, hidden_size=10)
    assert built.embedding.num_embeddings == len(VOCABULARY)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))
    assert built(_tokens(4, 12)).shape == (4, 30)


def test_model_spec_of_image_data_has_no_vocabulary():
    spec = ModelSpec("cnn", (1, 28, 28), 10)
    assert spec.vocabulary is None and spec.build()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
