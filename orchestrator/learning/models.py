"""The models, built by name: ``build_model("cnn", (1, 28, 28), 10)``.

Each model is one registered builder ``(input_shape, num_classes, params) -> nn.Module`` with a ``Params``
schema (docs/architecture.md, "Registries"); which model a dataset trains by default is the dataset's
registration (``model.name: auto``). Text models, registered with ``takes_vocabulary=True``, read int64
token ids of shape (N, L) and get the dataset's vocabulary as the keyword ``vocabulary`` (token i is
``vocabulary[i]``; 0 pads): ``build_model("fasttext", (L,), 2, vocabulary=dataset.vocabulary)``.

Constructors draw their initial weights from torch's global RNG, so the caller seeds it
(``torch.manual_seed``) to make the initialisation reproducible. Layers carry readable names
(``conv1``, ``fc1``, ...) because layer-wise aggregators and per-layer diagnostics report them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator
from torch import nn

from byzlab.orchestrator.core.registry import NoParams, Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", keep_order=True)


class DropoutParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate before the last layer(s) (FedRA §5.1: 0.2)")


class MlpParams(DropoutParams):
    hidden: tuple[PositiveInt, ...] = Field(
        (200, 200), min_length=1, description="hidden layer widths (residual reweighting's LOAN net: [46, 23])"
    )


def _require_images(model: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{model} takes images (channels, height, width), got inputs of shape {tuple(input_shape)}; "
                         "use mlp for tabular rows")


def _dropout(rate: float, name: str) -> dict[str, nn.Module]:
    """A dropout layer only when asked for: without one, the layers and their names are those of before."""
    return {name: nn.Dropout(rate)} if rate > 0 else {}


@MODELS.register_function("mlp", MlpParams)
def _mlp(input_shape: tuple[int, ...], num_classes: int, params: MlpParams) -> nn.Module:
    """MLP, flatten -> 200 -> 200 -> classes (ReLU); for digits (8x8), any input shape.

    ``hidden`` sets the widths: ``[46, 23]`` with 9 classes is the LOAN network of "Attack-Resistant
    Federated Learning with Residual-based Reweighting" (App. A.2: three fully connected layers of 46, 23
    and 9 channels); FedRA's Adult model is "a three-layer feed-forward network" with dropout 0.2 (§5.1),
    widths unstated. Dropout, when set, follows every hidden ReLU. Takes images or tabular rows."""
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    widths = [math.prod(input_shape), *params.hidden]
    for index, (inputs, outputs) in enumerate(zip(widths, widths[1:]), start=1):
        layers |= {f"fc{index}": nn.Linear(inputs, outputs), f"relu{index}": nn.ReLU()}
        layers |= _dropout(params.dropout, f"drop{index}")
    layers[f"fc{len(widths)}"] = nn.Linear(widths[-1], num_classes)
    return nn.Sequential(OrderedDict(layers))


def _two_conv_net(input_shape: tuple[int, int, int], num_classes: int, kernel_size: int, dropout: float) -> nn.Module:
    """conv(32)-ReLU-maxpool2, conv(64)-ReLU-maxpool2, fc 512-ReLU, [dropout,] fc num_classes.

    Convolutions are zero-padded to keep the spatial size, so only the two poolings shrink the image and
    the flattened size is 64·⌊H/4⌋·⌊W/4⌋; any image of at least 4×4 pixels works.
    """
    _require_images("cnn / cifar_cnn", input_shape)
    channels, height, width = input_shape
    if height < 4 or width < 4:
        raise ValueError(f"this CNN needs images of at least 4x4 pixels, got input_shape {input_shape}")
    padding = kernel_size // 2
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 32, kernel_size, padding=padding),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, kernel_size, padding=padding),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * (height // 4) * (width // 4), 512),
            relu3=nn.ReLU(),
            **_dropout(dropout, "drop1"),
            fc2=nn.Linear(512, num_classes),
        )
    )


@MODELS.register_function("cnn", DropoutParams)
def _cnn(input_shape: tuple[int, int, int], num_classes: int, params: DropoutParams) -> nn.Module:
    """FedAvg MNIST CNN, conv5x5(32)/pool, conv5x5(64)/pool, fc 512, fc classes; MNIST-family 28x28.

    LASA (appendix 7.2) uses "a CNN model composed of two convolutional layers, each followed by max-pooling
    and ReLU ... Two linear layers" and PAwBRoFL (§5.1) "two convolutional layers followed by two fully
    connected layers"; neither gives layer sizes. We therefore take them from the classic FedAvg MNIST CNN
    (McMahan et al., 2017): 5×5 convolutions with 32 and 64 channels, each followed by 2×2 max-pooling, a
    512-unit ReLU layer and the output layer: 1,663,370 parameters on 28×28 MNIST, as that paper reports.
    """
    return _two_conv_net(input_shape, num_classes, kernel_size=5, dropout=params.dropout)


@MODELS.register_function("cifar_cnn", DropoutParams)
def _cifar_cnn(input_shape: tuple[int, int, int], num_classes: int, params: DropoutParams) -> nn.Module:
    """Small CNN, conv3x3(32)/pool, conv3x3(64)/pool, fc 512, fc classes; 32x32 colour images.

    The same layout as ``cnn`` with 3×3 convolutions."""
    return _two_conv_net(input_shape, num_classes, kernel_size=3, dropout=params.dropout)


@MODELS.register_function("resnet18")
def _resnet18(input_shape: tuple[int, int, int], num_classes: int, params: NoParams) -> nn.Module:
    """ResNet-18 with a CIFAR stem (3x3 stride-1 conv1, no max-pool); CIFAR-10/100, SVHN.

    torchvision's ResNet-18 in its CIFAR form (the ResNet-18 of LASA and residual-based reweighting).

    The ImageNet stem (7×7 stride-2 convolution and max-pooling) would shrink a 32×32 image to 8×8 before
    the first block, so the first convolution becomes 3×3 stride 1 without bias (initialised like
    torchvision's own convolutions) and the max-pooling is dropped.
    """
    _require_images("resnet18", input_shape)
    import torchvision.models  # here: importing torchvision costs every actor process about a second

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


@MODELS.register_function("residual_cnn")
def _residual_cnn(input_shape: tuple[int, int, int], num_classes: int, params: NoParams) -> nn.Module:
    """Residual reweighting's MNIST CNN: conv 4@5x5, pool, conv 8@5x5, pool, fc 16, fc classes; 3,146 parameters.

    "Attack-Resistant Federated Learning with Residual-based Reweighting", App. A.2, Table 5. The table's
    image sizes (28 -> 24 -> 12 -> 8 -> 4) fix unpadded convolutions and 2x2 max-pooling; it names no
    activation, so ReLU follows each convolution and fc1 (our choice). Needs images of at least 16x16.
    """
    _require_images("residual_cnn", input_shape)
    channels, height, width = input_shape
    if min(height, width) < 16:
        raise ValueError(f"residual_cnn needs images of at least 16x16 pixels, got input_shape {input_shape}")
    pooled_height, pooled_width = (((size - 4) // 2 - 4) // 2 for size in (height, width))
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 4, 5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 8, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * pooled_height * pooled_width, 16),
            relu3=nn.ReLU(),
            fc2=nn.Linear(16, num_classes),
        )
    )


@MODELS.register_function("pawbrofl_cnn")
def _pawbrofl_cnn(input_shape: tuple[int, int, int], num_classes: int, params: NoParams) -> nn.Module:
    """The PAwBRoFL authors' MNIST / Fashion-MNIST CNN: conv 30@5x5 (padding 2), ReLU, pool, conv 30@5x5
    (padding 2), ReLU, pool, fc 200, ReLU, fc classes; 319,520 parameters on 28x28 images.

    heshandevaka/PAwBRoFL, ``src/networks.py`` ``ConvNet`` as ``src/simulate.py`` builds it (filters 30 and 30,
    fc 200, the constructor's kernel size 5, 2x2 max-pooling). The paper (§5.1) only says "two convolutional
    layers followed by two fully connected layers"; byzlab's ``cnn`` is the FedAvg CNN instead.
    """
    _require_images("pawbrofl_cnn", input_shape)
    channels, height, width = input_shape
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 30, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(30, 30, 5, padding=2),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(30 * (height // 4) * (width // 4), 200),
            relu3=nn.ReLU(),
            fc2=nn.Linear(200, num_classes),
        )
    )


class FastTextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_dim: PositiveInt = Field(100, description="width of the token embeddings")


class FastText(nn.Module):
    def __init__(self, vocabulary_size: int, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        # EmbeddingBag's mean leaves the padding_idx tokens out of both the sum and the count
        self.embedding = nn.EmbeddingBag(vocabulary_size, embedding_dim, mode="mean", padding_idx=0)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(tokens))


@MODELS.register_function("fasttext", FastTextParams, takes_vocabulary=True)
def _fasttext(input_shape: tuple[int], num_classes: int, params: FastTextParams, *,
              vocabulary: tuple[str, ...]) -> nn.Module:
    """FastText, token embedding 100 averaged over the non-padding tokens, fc classes; text (Amazon reviews).

    "Attack-Resistant Federated Learning with Residual-based Reweighting" (§4 and App. A.2) classifies
    Amazon Reviews with FastText (Joulin et al., "Bag of Tricks for Efficient Text Classification"): "a
    two-layer deep neural network where the first layer is an embedding layer of dimension 100 and the
    second layer is a fully connected layer", over a 25,000-word vocabulary. The text's vector is the mean
    of its tokens' embeddings, padding left out (an all-padding text gives zeros); no n-gram features.
    The paper's single output unit under binary cross-entropy becomes one logit per class under
    cross-entropy (for two classes, the sigmoid of the logits' difference: the same classifier).
    """
    return FastText(len(vocabulary), num_classes, params.embedding_dim)


class TextCnnParams(DropoutParams):
    embedding_dim: PositiveInt = Field(300, description="width of the token embeddings")
    filter_sizes: tuple[PositiveInt, ...] = Field(
        (3, 4, 5), min_length=1, description="convolution widths in tokens, num_filters maps each (Kim 2014: 3, 4, 5)"
    )
    num_filters: PositiveInt = Field(100, description="feature maps per convolution width (Kim 2014: 100)")
    embeddings_path: str | None = Field(
        None, description="GloVe-format text file (a word, then embedding_dim numbers, per line) initialising "
        "the embeddings of the vocabulary's words it lists (FedRA: pre-trained GloVe)"
    )

    @field_validator("filter_sizes")
    @classmethod
    def _distinct(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(sizes)) < len(sizes):  # each width names its convolution (conv.width3)
            raise ValueError(f"the filter sizes must differ, got {sizes}")
        return sizes


class TextCnn(nn.Module):
    def __init__(self, vocabulary_size: int, num_classes: int, params: TextCnnParams) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, params.embedding_dim, padding_idx=0)
        self.conv = nn.ModuleDict({
            f"width{size}": nn.Conv1d(params.embedding_dim, params.num_filters, size) for size in params.filter_sizes
        })
        self.dropout = nn.Dropout(params.dropout)
        self.fc = nn.Linear(params.num_filters * len(params.filter_sizes), num_classes)
        self.min_length = max(params.filter_sizes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # a text shorter than the widest filter gets padding tokens (zero vectors) on the right, so that
        # every convolution sees at least one window
        tokens = F.pad(tokens, (0, max(0, self.min_length - tokens.shape[1])), value=0)
        embedded = self.embedding(tokens).transpose(1, 2)  # (N, embedding_dim, L): channels first for Conv1d
        pooled = [F.relu(conv(embedded)).amax(dim=2) for conv in self.conv.values()]  # max over time
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))


def _read_embeddings(path: str, vocabulary: tuple[str, ...], dim: int) -> dict[int, np.ndarray]:
    """The vectors of a GloVe-format file for the vocabulary's words, by token id (never the padding's).

    Streams the file line by line and keeps only the vocabulary's vectors: GloVe files run to gigabytes.
    The numbers are a line's last ``dim`` fields because a few GloVe words (840B) contain spaces; the
    first line must hold exactly ``dim`` numbers, which catches a file of another dimension."""
    ids = {word: index for index, word in enumerate(vocabulary) if index != 0}
    found: dict[int, np.ndarray] = {}
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                word, *values = line.rstrip().rsplit(" ", dim)
                if len(values) != dim or (number == 1 and " " in word):
                    raise ValueError(f"line {number} holds {len(line.split()) - 1} numbers")
                if word in ids:
                    found[ids[word]] = np.asarray(values, dtype=np.float32)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"embeddings_path '{path}': expected a UTF-8 GloVe-format text file, a word then "
                         f"{dim} space-separated numbers (embedding_dim) per line; {err}") from None
    if not found:  # most likely a vocabulary in another case or language than the file
        raise ValueError(f"embeddings_path '{path}' holds none of the vocabulary's {len(ids)} words")
    return found


@MODELS.register_function("text_cnn", TextCnnParams, takes_vocabulary=True)
def _text_cnn(input_shape: tuple[int], num_classes: int, params: TextCnnParams, *,
              vocabulary: tuple[str, ...]) -> nn.Module:
    """Text-CNN (Kim 2014), embedding 300, conv widths 3/4/5 x 100 maps, max over time, fc classes; news topics.

    FedRA ("Robust Quantity-Aware Aggregation for Federated Learning", §5.1 "Configurations", Table 2)
    classifies MIND news into 18 categories with "a Text-CNN as the base model", its word embeddings
    initialised "with pre-trained Glove embeddings", and dropout 0.2. It gives no sizes, so they are those
    of Kim, "Convolutional Neural Networks for Sentence Classification" (§3.1: filter windows 3, 4, 5 with
    100 feature maps each), with 300-dimensional embeddings (GloVe's widest). Each convolution is followed
    by ReLU and max-pooling over time; the pooled features are concatenated, dropped out and mapped to the
    classes (without Kim's l2-norm constraint on the last layer, which FedRA does not mention).
    ``embeddings_path`` sets the rows of the words the file lists; the others keep their N(0, 1) draw,
    the padding row stays zero, and all of them are trained. Texts shorter than the widest filter are
    padded on the right with padding tokens.
    """
    model = TextCnn(len(vocabulary), num_classes, params)
    if params.embeddings_path is not None:
        found = _read_embeddings(params.embeddings_path, vocabulary, params.embedding_dim)
        with torch.no_grad():
            model.embedding.weight[list(found)] = torch.from_numpy(np.stack(list(found.values())))
    return model


class CharLstmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_dim: PositiveInt = Field(8, description="width of the token embeddings")
    hidden_size: PositiveInt = Field(256, description="units of each LSTM layer (LEAF's Shakespeare model: 256)")
    num_layers: PositiveInt = Field(2, description="stacked LSTM layers (LASA App. 7.2: 2)")


class CharLstm(nn.Module):
    def __init__(self, vocabulary_size: int, num_classes: int, params: CharLstmParams) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, params.embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(params.embedding_dim, params.hidden_size, params.num_layers, batch_first=True)
        self.fc = nn.Linear(params.hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(self.embedding(tokens))
        return self.fc(outputs[:, -1])


@MODELS.register_function("char_lstm", CharLstmParams, takes_vocabulary=True)
def _char_lstm(input_shape: tuple[int], num_classes: int, params: CharLstmParams, *,
               vocabulary: tuple[str, ...]) -> nn.Module:
    """Character LSTM, embedding 8, two LSTM layers of 256, fc on the last step; next character (Shakespeare).

    LASA ("Achieving Byzantine-Resilient Federated Learning via Layer-Adaptive Sparsified Model
    Aggregation", App. 7.2), following Reddi et al. ("Adaptive Federated Optimization"): "an embedding layer
    to convert each character into an 8-dimensional feature representation. Subsequently, two Long
    Short-Term Memory (LSTM) layers process these embedded characters, and a final linear layer with the
    softmax activation". LASA gives no width; the LSTMs have the 256 units of LEAF's Shakespeare model
    ("LEAF: A Benchmark for Federated Settings"). The last layer reads the hidden state at the last position,
    so a sample's characters end there (any padding goes in front), and gives logits: the softmax is the
    cross-entropy loss's.
    """
    return CharLstm(len(vocabulary), num_classes, params)


def _takes_vocabulary(builder: Callable[..., nn.Module]) -> bool:
    return getattr(builder, "takes_vocabulary", False)


# The models of images and tabular rows (as DATASET_NAMES holds the image datasets), then those of text.
MODEL_NAMES: tuple[str, ...] = tuple(MODELS.names(lambda builder: not _takes_vocabulary(builder)))
TEXT_MODEL_NAMES: tuple[str, ...] = tuple(MODELS.names(_takes_vocabulary))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                vocabulary: tuple[str, ...] | None = None, **params) -> nn.Module:
    """A freshly initialised model for inputs of shape (channels, height, width), (features,) or, with the
    dataset's ``vocabulary``, (tokens,)."""
    builder = MODELS.get(name)
    validated = MODELS.validate_params(name, params)
    if not _takes_vocabulary(builder):
        if vocabulary is not None:
            raise ValueError(f"model '{name}' takes images or tabular rows, not token ids; text data needs a "
                             f"text model ({', '.join(TEXT_MODEL_NAMES)})")
        return builder(tuple(input_shape), num_classes, validated)
    if vocabulary is None or len(input_shape) != 1:
        raise ValueError(f"model '{name}' reads token ids and needs text data (a dataset with a vocabulary and "
                         f"inputs of shape (tokens,)); got input_shape {tuple(input_shape)} and "
                         f"{'no vocabulary' if vocabulary is None else 'a vocabulary'}")
    return builder(tuple(input_shape), num_classes, validated, vocabulary=tuple(vocabulary))
