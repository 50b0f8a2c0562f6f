"""Server optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2), worked by
hand on one or two coordinates, and their checkpointed state."""

from __future__ import annotations

import io
import re
import math

import pytest
import torch

from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.learning.server_optimizers import SERVER_OPTIMIZERS, build_server_optimizer


def _steps(name, lr, params, updates, start=None):
    optimizer = build_server_optimizer(name, lr, params)
    theta = torch.zeros(len(updates[0]), dtype=torch.float64) if start is None else start.clone()
    optimizer.start(theta)
    trajectory = []
    for update in updates:
        optimizer.step(theta, torch.tensor(update, dtype=torch.float64))
        trajectory.append(theta.clone())
    return trajectory, optimizer


def test_fedavgm_by_hand():
    # mu = 0.5, eta = 2: v = (1, 2), theta = (2, 4); then v = 0.5 (1, 2) + (-1, 0) = (-0.5, 1), theta = (1, 6)
    trajectory, _ = _steps("fedavgm", 2.0, {"momentum": 0.5}, [[1.0, 2.0], [-1.0, 0.0]])
    assert [t.tolist() for t in trajectory] == [[2.0, 4.0], [1.0, 6.0]]


def test_fedadam_by_hand():
    # beta1 = beta2 = tau = 0.5, eta = 1, v starts at tau^2 = 0.25.
    # Delta = 2: m = 1, v = 0.5 * 0.25 + 0.5 * 4 = 2.125, theta = 1 / (sqrt(2.125) + 0.5)
    # Delta = -1: m = 0.5 - 0.5 = 0, v = 1.0625 + 0.5 = 1.5625: theta does not move
    trajectory, optimizer = _steps("fedadam", 1.0, {"beta1": 0.5, "beta2": 0.5, "tau": 0.5}, [[2.0], [-1.0]])
    assert trajectory[0].item() == pytest.approx(1 / (math.sqrt(2.125) + 0.5), rel=1e-15)
    assert trajectory[1].item() == trajectory[0].item()
    assert optimizer.state_dict()["second"].item() == 1.5625


def test_fedyogi_by_hand_moves_the_second_moment_additively():
    # v starts at 0.25. Delta = 2: v - Delta^2 < 0, so v = 0.25 + 0.5 * 4 = 2.25, m = 1, theta = 1 / (1.5 + 0.5)
    # Delta = 1: v - Delta^2 > 0, so v = 2.25 - 0.5 * 1 = 1.75 (Adam: 0.5 * 2.25 + 0.5 = 1.625), m = 1
    trajectory, optimizer = _steps("fedyogi", 1.0, {"beta1": 0.5, "beta2": 0.5, "tau": 0.5}, [[2.0], [1.0]])
    assert trajectory[0].item() == 0.5
    assert optimizer.state_dict()["second"].item() == 1.75
    assert trajectory[1].item() == pytest.approx(0.5 + 1 / (math.sqrt(1.75) + 0.5), rel=1e-15)


@pytest.mark.parametrize("name, params", [("fedavgm", {"momentum": 0.9}), ("fedadam", {}), ("fedyogi", {})])
def test_a_checkpointed_state_continues_bitwise(name, params):
    updates = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).tolist()
    straight, _ = _steps(name, 0.1, params, updates)
    first_half, optimizer = _steps(name, 0.1, params, updates[:3])
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored = build_server_optimizer(name, 0.1, params)
    restored.start(first_half[-1])
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    theta = first_half[-1].clone()
    for update in updates[3:]:
        restored.step(theta, torch.tensor(update, dtype=torch.float64))
    assert torch.equal(theta, straight[-1])


def test_config_keys_and_their_checks():
    adam = build_config({}, ["server.optimizer=fedadam", "server.lr=0.01", "server.optimizer_params.tau=0.01"])
    assert adam.to_dict()["server"]["optimizer_params"] == {"beta1": 0.9, "beta2": 0.99, "tau": 0.01}
    assert adam.server.optimizer_parameters() == {"beta1": 0.9, "beta2": 0.99, "tau": 0.01}
    plain = build_config({}, ["server.momentum=0.5"])
    assert "optimizer" not in plain.to_dict()["server"] and plain.server.optimizer_parameters() == {"momentum": 0.5}
    for overrides, message in [
        (["server.optimizer=fedadam", "server.momentum=0.9"], "momentum applies to fedavgm only; fedadam's is"),
        (["server.optimizer_params.beta1=0.9"], "fedavgm takes none (its momentum is server.momentum)"),
        (["server.optimizer=fedyogi", "server.optimizer_params.beta2=1"], "parameter 'beta2': Input should be less than 1"),
        (["server.optimizer=sgd"], "server.optimizer: Input should be 'fedavgm', 'fedadam' or 'fedyogi'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config({}, overrides)


def test_every_optimizer_is_listed_with_its_parameters():
    assert SERVER_OPTIMIZERS.names() == ["fedavgm", "fedadam", "fedyogi"]
    assert "tau=0.001: adaptivity" in SERVER_OPTIMIZERS.describe("fedadam")
