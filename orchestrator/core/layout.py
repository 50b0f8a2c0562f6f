"""Flat-parameter layout: a model's state as one float32 vector.

Parameters and buffers flatten in ``state_dict`` order (docs/architecture.md, "Flat parameters and layout"). The
layout records where each tensor lives so layer-wise aggregators can cut the vector back into layers.
Integer buffers (BatchNorm's ``num_batches_tracked``) travel as float32 and are rounded on the way back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

LayerKind = Literal["weight", "bias", "buffer"]


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]
    offset: int
    kind: LayerKind = "weight"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


def model_layout(model: nn.Module) -> tuple[Layer, ...]:
    """The layout of ``model.state_dict()``: weights (ndim >= 2), biases / 1-D parameters, buffers."""
    param_names = {name for name, _ in model.named_parameters()}
    layers, offset = [], 0
    for name, tensor in model.state_dict().items():
        if name not in param_names:
            kind: LayerKind = "buffer"
        elif tensor.ndim >= 2:
            kind = "weight"
        else:
            kind = "bias"
        layer = Layer(name, tuple(tensor.shape), offset, kind)
        layers.append(layer)
        offset += layer.numel
    return tuple(layers)


def layout_size(layout: tuple[Layer, ...]) -> int:
    return layout[-1].offset + layout[-1].numel if layout else 0


def flatten_state(model: nn.Module) -> torch.Tensor:
    """The model's state as one detached float32 vector on the model's device."""
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in model.state_dict().values()])


@torch.no_grad()
def load_flat_state(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy ``flat`` into the model's parameters and buffers in place."""
    offset = 0
    for tensor in model.state_dict().values():
        n = tensor.numel()
        chunk = flat[offset : offset + n].view(tensor.shape)
        if tensor.dtype.is_floating_point:
            tensor.copy_(chunk)
        else:
            tensor.copy_(torch.round(chunk))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat state has {flat.numel()} entries, the model needs {offset}")


def _layer_view(flat: torch.Tensor, layer: Layer) -> torch.Tensor:
    view = flat[layer.slice].view(layer.shape)
    return view.detach() if layer.kind == "buffer" else view  # running statistics take no gradient


def functional_forward(model: nn.Module, layout: tuple[Layer, ...]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``forward(flat, x) -> logits``: the model evaluated at the flat parameter vector ``flat``, which may
    require grad (gradients flow back to it). The model must be in eval mode: BatchNorm then reads the
    running statistics from ``flat`` (without gradient) instead of writing batch statistics into it."""

    def forward(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if model.training:
            raise RuntimeError("functional_forward needs the model in eval mode")
        state = {layer.name: _layer_view(flat, layer) for layer in layout}
        return torch.func.functional_call(model, state, (x,))

    return forward
