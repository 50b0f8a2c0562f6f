"""Server optimizers: how the global model moves along the robust aggregate Δ each round.

The aggregate Δ plays the role of a (negative) pseudo-gradient, as in Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2: the server steps ``θ ← θ + η·direction(Δ)`` with η = ``server.lr``.
Each optimizer is registered with its parameter schema (docs/architecture.md, "Registries"), keeps its
state as tensors on the server's device (checkpointed, loaded with ``weights_only=True``) and updates
``θ`` in place.

Choices where the paper leaves room: no bias correction (Algorithm 2 has none); the second moment starts
at v₋₁ = τ² (the algorithm's input requires v₋₁ ≥ τ²); τ defaults to 1e-3, β₁ to 0.9 and β₂ to 0.99 (the
paper's experiments fix β₁ = 0.9, β₂ = 0.99 and tune τ). FedRA (§5.1, "Configurations") runs every method
with FedAdam.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from byzlab.orchestrator.core.registry import Registry


class OptimizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=OptimizerParams)


class ServerOptimizer(Generic[P]):
    """Moves the global parameters along the aggregate; ``start`` allocates the state beside them."""

    name: ClassVar[str]
    Params: ClassVar[type[OptimizerParams]] = OptimizerParams

    def __init__(self, params: P, lr: float) -> None:
        self.params: P = params
        self.lr = lr

    def start(self, global_params: torch.Tensor) -> None:
        """Fresh state shaped like ``global_params`` (on its device)."""

    def step(self, global_params: torch.Tensor, update: torch.Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s tensors onto the device of the state ``start`` allocated."""


SERVER_OPTIMIZERS: Registry[type[ServerOptimizer]] = Registry("server optimizer", keep_order=True)


def build_server_optimizer(name: str, lr: float, params: dict[str, Any]) -> ServerOptimizer:
    return SERVER_OPTIMIZERS.get(name)(SERVER_OPTIMIZERS.validate_params(name, params), lr)


class FedAvgMParams(OptimizerParams):
    momentum: float = Field(0.0, ge=0, lt=1, description="server momentum μ (the config's server.momentum)")


@SERVER_OPTIMIZERS.register
class FedAvgM(ServerOptimizer[FedAvgMParams]):
    """FedAvg with server momentum (Hsu et al., 2019): v ← μ·v + Δ, θ ← θ + η·v; μ = 0 is plain FedAvg."""

    name = "fedavgm"
    Params = FedAvgMParams

    def start(self, global_params: torch.Tensor) -> None:
        self.velocity = torch.zeros_like(global_params)

    def step(self, global_params: torch.Tensor, update: torch.Tensor) -> None:
        self.velocity.mul_(self.params.momentum).add_(update)
        global_params.add_(self.velocity, alpha=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = state["velocity"].to(self.velocity.device)


class AdaptiveParams(OptimizerParams):
    beta1: float = Field(0.9, ge=0, lt=1, description="decay of the first moment β₁")
    beta2: float = Field(0.99, ge=0, lt=1, description="decay of the second moment β₂")
    tau: float = Field(1e-3, gt=0, description="adaptivity τ: added to √v; the second moment starts at τ²")


class _Adaptive(ServerOptimizer[AdaptiveParams]):
    """Reddi et al. (2021), Algorithm 2: m ← β₁·m + (1 − β₁)·Δ, v ← second_moment(v, Δ²),
    θ ← θ + η·m / (√v + τ)."""

    Params = AdaptiveParams

    def start(self, global_params: torch.Tensor) -> None:
        self.first = torch.zeros_like(global_params)
        self.second = torch.full_like(global_params, self.params.tau**2)

    def second_moment(self, squared: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, global_params: torch.Tensor, update: torch.Tensor) -> None:
        beta1 = self.params.beta1
        self.first.mul_(beta1).add_(update, alpha=1 - beta1)
        self.second_moment(update * update)
        global_params.addcdiv_(self.first, self.second.sqrt().add_(self.params.tau), value=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first.cpu(), "second": self.second.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first = state["first"].to(self.first.device)
        self.second = state["second"].to(self.second.device)


@SERVER_OPTIMIZERS.register
class FedAdam(_Adaptive):
    """FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2):
    v ← β₂·v + (1 − β₂)·Δ², θ ← θ + η·m / (√v + τ)."""

    name = "fedadam"

    def second_moment(self, squared: torch.Tensor) -> None:
        self.second.mul_(self.params.beta2).add_(squared, alpha=1 - self.params.beta2)


@SERVER_OPTIMIZERS.register
class FedYogi(_Adaptive):
    """FedYogi (Reddi et al., ICLR 2021, Algorithm 2): v ← v − (1 − β₂)·Δ²·sign(v − Δ²), so v grows and
    shrinks additively rather than by a factor."""

    name = "fedyogi"

    def second_moment(self, squared: torch.Tensor) -> None:
        self.second.sub_(squared * torch.sign(self.second - squared), alpha=1 - self.params.beta2)
