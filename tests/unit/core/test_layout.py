import torch
from torch import nn

from byzlab.orchestrator.core.layout import flatten_state, layout_size, load_flat_state, model_layout
from byzlab.orchestrator.learning.models import build_model


def _net():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))


def test_layout_follows_state_dict_order_with_kinds():
    layout = model_layout(_net())
    assert [(l.name, l.kind, l.offset) for l in layout] == [
        ("0.weight", "weight", 0),
        ("0.bias", "bias", 18),
        ("1.weight", "bias", 20),  # BatchNorm's scale is a 1-D parameter
        ("1.bias", "bias", 22),
        ("1.running_mean", "buffer", 24),
        ("1.running_var", "buffer", 26),
        ("1.num_batches_tracked", "buffer", 28),
        ("3.weight", "weight", 29),
        ("3.bias", "bias", 35),
    ]
    assert layout_size(layout) == 38 == flatten_state(_net()).numel()


def test_flat_roundtrip_restores_parameters_and_integer_buffers():
    torch.manual_seed(0)
    source, target = _net(), _net()
    source[1].num_batches_tracked.fill_(7)
    source[1].running_mean.fill_(0.25)
    load_flat_state(target, flatten_state(source))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_layer_slices_cut_the_vector_back_into_tensors():
    model = build_model("cnn", (1, 28, 28), 10)
    flat = flatten_state(model)
    for layer, tensor in zip(model_layout(model), model.state_dict().values()):
        assert torch.equal(flat[layer.slice].view(layer.shape), tensor.float())


def test_functional_forward_matches_the_module_and_passes_gradients():
    from byzlab.orchestrator.core.layout import functional_forward

    torch.manual_seed(0)
    model = _net().eval()
    model[1].running_mean.fill_(0.3)
    flat = flatten_state(model).requires_grad_(True)
    forward = functional_forward(model, model_layout(model))
    x = torch.randn(4, 1, 3, 3)
    assert torch.allclose(forward(flat, x), model(x), atol=1e-6)
    forward(flat, x).sum().backward()
    assert flat.grad is not None and flat.grad[model_layout(model)[0].slice].abs().sum() > 0
    model.train()
    import pytest

    with pytest.raises(RuntimeError, match="eval mode"):
        forward(flat, x)
