import pytest
import torch
from torch import nn

from byzlab.orchestrator.data.datasets import dataset_names
from byzlab.orchestrator.data.datasets import default_model
from byzlab.orchestrator.learning.models import MODEL_NAMES, MODELS, build_model

INTENDED_INPUTS = {
    "mlp": (1, 8, 8),
    "cnn": (1, 28, 28),
    "cifar_cnn": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "residual_cnn": (1, 28, 28),
    "pawbrofl_cnn": (1, 28, 28),
}


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_gives_one_score_per_class(name):
    model = build_model(name, INTENDED_INPUTS[name], num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, *INTENDED_INPUTS[name]))
    assert logits.shape == (3, 7)


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (1, 17, 23)])
def test_cnn_adapts_to_the_input_size(input_shape):
    model = build_model("cnn", input_shape, num_classes=10)
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


def test_cnn_is_the_fedavg_mnist_cnn():
    model = build_model("cnn", (1, 28, 28), num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    assert [(f.in_features, f.out_features) for f in linears] == [(64 * 7 * 7, 512), (512, 10)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert _num_parameters(model) == 1_663_370  # the count McMahan et al. (2017) report


def test_mlp_has_two_hidden_layers_of_200():
    linears = [m for m in build_model("mlp", (1, 8, 8), 10).modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in linears] == [(64, 200), (200, 200), (200, 10)]


def test_resnet18_has_the_cifar_stem():
    model = build_model("resnet18", (3, 32, 32), num_classes=10)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert _num_parameters(model) == pytest.approx(11.17e6, rel=1e-3)


def test_resnet18_takes_its_input_channels_from_the_shape():
    assert build_model("resnet18", (1, 28, 28), num_classes=10).conv1.in_channels == 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_gives_identical_parameters(name):
    torch.manual_seed(3)
    first = build_model(name, INTENDED_INPUTS[name], 10).state_dict()
    torch.manual_seed(3)
    again = build_model(name, INTENDED_INPUTS[name], 10).state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)


def test_unknown_model_raises_listing_the_known_ones():
    with pytest.raises(ValueError, match="known: mlp, cnn, cifar_cnn, resnet18"):
        build_model("vgg", (3, 32, 32), 10)


def test_default_model_for_every_dataset():
    assert {dataset: default_model(dataset) for dataset in dataset_names("image")} == {
        "digits": "mlp",
        "fashion-mnist": "cnn",
        "mnist": "cnn",
        "emnist": "cnn",
        "cifar10": "cifar_cnn",
        "cifar100": "cifar_cnn",
        "svhn": "cifar_cnn",
        "femnist": "cnn",
        "tiny-imagenet": "resnet18",
    }
    assert [default_model("huggingface", {"input_kind": kind}) for kind in ("image", "tabular", "words", "characters")] == [
        "cnn", "mlp", "fasttext", "char_lstm"]
    with pytest.raises(ValueError, match="no default model"):
        default_model("imagenet")


def test_every_model_describes_itself_and_its_parameters():
    assert MODEL_NAMES == ("mlp", "cnn", "cifar_cnn", "resnet18", "residual_cnn", "pawbrofl_cnn")
    assert all(len(MODELS.describe(name).splitlines()[0]) > 20 for name in MODEL_NAMES)
    assert MODELS.describe("cnn").splitlines()[1:] == [
        "dropout=0.0: dropout rate before the last layer(s) (FedRA §5.1: 0.2)"]


def test_residual_cnn_is_table_5_of_the_residual_paper():
    # conv1 4*1*25 + 4, conv2 8*4*25 + 8, fc1 (8*4*4)*16 + 16, fc2 16*10 + 10
    model = build_model("residual_cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 104 + 808 + 2064 + 170 == 3146
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model[:3](torch.zeros(1, 1, 28, 28)).shape == (1, 4, 12, 12)  # the table's image sizes
    assert build_model("residual_cnn", (3, 17, 31), 5)(torch.zeros(1, 3, 17, 31)).shape == (1, 5)
    with pytest.raises(ValueError, match="at least 16x16"):
        build_model("residual_cnn", (1, 8, 8), 10)


def test_pawbrofl_cnn_is_the_authors_convnet():
    # conv1 30*1*25 + 30, conv2 30*30*25 + 30, fc1 (30*7*7)*200 + 200, fc2 200*10 + 10: 319,520 in all
    model = build_model("pawbrofl_cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 780 + 22530 + 294200 + 2010 == 319520
    assert model[:6](torch.zeros(1, 1, 28, 28)).shape == (1, 30, 7, 7)  # padded convolutions, two 2x2 pools


def test_mlp_widths_and_dropout():
    loan = build_model("mlp", (1, 91, 1), 9, hidden=[46, 23], dropout=0.2)
    assert [m.out_features for m in loan if isinstance(m, nn.Linear)] == [46, 23, 9]
    assert [m.p for m in loan if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    torch.manual_seed(0)
    with_dropout = build_model("cnn", (1, 28, 28), 10, dropout=0.5)
    torch.manual_seed(0)
    without = build_model("cnn", (1, 28, 28), 10)
    # a dropout layer adds no parameter and draws nothing at initialisation
    assert list(with_dropout.state_dict()) == list(without.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(with_dropout.state_dict().values(), without.state_dict().values()))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(with_dropout.eval()(x), without.eval()(x))  # evaluation never drops
    with pytest.raises(ValueError, match="model 'resnet18' parameter 'dropout': Extra inputs"):
        build_model("resnet18", (3, 32, 32), 10, dropout=0.1)
