"""The models, built by name: ``build_model("cnn", (1, 28, 28), 10)``.

Each model is one registered builder ``(input_shape, num_classes, params) -> nn.Module`` with a ``Params``
schema (docs/architecture.md, "Registries"); which model a dataset trains by default is the dataset's
registration (``model.name: auto``).

Constructors draw their initial weights from torch's global RNG, so the caller seeds it
(``torch.manual_seed``) to make the initialisation reproducible. Layers carry readable names
(``conv1``, ``fc1``, ...) because layer-wise aggregators and per-layer diagnostics report them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
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


MODEL_NAMES: tuple[str, ...] = tuple(MODELS.names())


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **params) -> nn.Module:
    """A freshly initialised model for inputs of shape (channels, height, width)."""
    builder = MODELS.get(name)
    return builder(tuple(input_shape), num_classes, MODELS.validate_params(name, params))
