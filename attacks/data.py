"""Data-poisoning attacks (client side): label noise, label flipping and pixel-pattern backdoors.

Every class here is a :class:`~attacks.base.DataAttack`; the ClientActor of a malicious client calls its
hooks. Images are float32 ``(N, C, H, W)`` tensors that are already normalised per channel, labels int64
``(N,)``. Results stay on the device of the input; randomness comes only from the CPU ``torch.Generator``
passed in (drawn on the CPU, then moved), so poisoning is reproducible.

Attacks and their sources:

- ``symmetric_flip`` / ``pair_flip``: label noise drawn from the transition matrices of SDEA Appendix D.1,
  eqs. (8) and (9); noise rate ε = 0.5 by default (SDEA §4.1, "Attack Setting").
- ``label_flip``: the targeted flip ``source -> target`` of the residual-based-reweighting paper §4.2
  (MNIST 1 -> 7), or, by default, the all-classes flip ``y -> C - 1 - y`` of Fang et al. (2020), the
  "Label Flip [7]" attack of FedRA §5.1.
- ``backdoor``: the pixel-pattern backdoor (Gu et al., 2019) in federated learning (Bagdasaryan et al.,
  "How to backdoor federated learning", AISTATS 2020), naive approach: the attacker poisons every round it
  is active (residual paper §4.3 and Appendix A.5).
- ``model_replacement``: the backdoor plus the boosted update of Bagdasaryan et al. (residual paper §4.3:
  the attacker scales its update by 100 in round 6).
- ``dba``: the Distributed Backdoor Attack of Xie et al. (ICLR 2020), as used by PAwBRoFL §3 and §5.1: the
  global trigger is split into local patterns, one per attacker.

Trigger geometry. A trigger is a set of axis-aligned rectangles placed relative to an anchor
``(row, col)``; a negative anchor coordinate counts from the bottom/right edge like a Python index
(``row=-3`` is the third row from the bottom). A trigger that does not fit the image raises
``ValueError`` when it is applied. One helper, :func:`apply_trigger`, stamps every trigger.

- ``backdoor`` / ``model_replacement``: a solid ``size x size`` square (default 3 x 3) at ``(0, 0)``, the
  upper-left corner, where the residual paper's Figure 6 puts its white pattern and where DBA's pattern
  starts. It fits 8 x 8 digits as well as MNIST-family (28 x 28) and CIFAR/SVHN (32 x 32) images; on the
  larger images the corner is background, on 8 x 8 digits no 3 x 3 region is (about 40 % of the corner's
  pixels carry ink, as in the bottom-right one), and the solid maximum-valued block overwrites them.
- ``dba``: ``num_parts`` horizontal bars of ``1 x bar_length`` pixels laid out two per row,
  ``bar_length + gap`` columns apart, the rows ``1 + gap`` apart. Part ``p`` starts at
  ``(row + (p // 2) * (1 + gap), col + (p % 2) * (bar_length + gap))``. DBA's MNIST trigger is this layout
  with bars of 4 and gap 2 (a 4 x 10 pattern); the defaults here (bars of 3, gap 1) give a 3 x 7 pattern
  that also fits 8 x 8 digits::

      row 0:  A A A . B B B
      row 1:  . . . . . . .
      row 2:  C C C . D D D

Pixel value. ``value=None`` (the default) sets the trigger, per channel, to the maximum of the images the
hook is given (the whole minibatch in ``poison_batch``, the whole test set in ``triggered_test_set``), so
the trigger is "white" whatever the normalisation, as DBA's value 1 is on unnormalised [0, 1] images. A
number sets every channel to that (normalised) value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from byzlab.attacks.base import AttackParams, DataAttack
from byzlab.attacks.registry import register

NoiseKind = Literal["symmetric", "pair"]


# --------------------------------------------------------------------------------------------------------
# Label noise


def transition_matrix(kind: NoiseKind, num_classes: int, epsilon: float) -> torch.Tensor:
    """The label-noise transition matrix T (float64, ``[C, C]``, row-stochastic) of SDEA Appendix D.1.

    ``T[i, j]`` is the probability that a sample of clean class i gets label j.

    - ``"symmetric"`` (SymF, eq. 8; Van Rooyen et al., 2015): ``1 - ε`` on the diagonal and
      ``ε / (C - 1)`` everywhere else.
    - ``"pair"`` (PairF, eq. 9; Han et al., 2018): ``1 - ε`` on the diagonal and ``ε`` at
      ``(i, (i + 1) mod C)``: each class is flipped only to the next one.
    """
    if kind not in ("symmetric", "pair"):
        raise ValueError(f"transition matrix kind must be 'symmetric' or 'pair', got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"noise rate epsilon must lie in [0, 1], got {epsilon}")
    eye = torch.eye(num_classes, dtype=torch.float64)
    if kind == "symmetric":
        off = (1.0 - eye) * (epsilon / (num_classes - 1))
    else:
        off = torch.roll(eye, shifts=1, dims=1) * epsilon  # row i has its 1 at column (i + 1) mod C
    return eye * (1.0 - epsilon) + off


def check_class(attack: str, field: str, value: int | None, num_classes: int) -> None:
    """A class-id parameter names a class of the task: ValueError naming it and the allowed ids."""
    if value is not None and value >= num_classes:
        raise ValueError(f"{attack} {field}={value} is not a class of a {num_classes}-class task "
                         f"(class ids 0..{num_classes - 1})")


def _check_labels(y: torch.Tensor, num_classes: int) -> None:
    if y.dim() != 1:
        raise ValueError(f"labels must be a 1-d tensor, got shape {tuple(y.shape)}")
    if y.numel():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes - 1}], got range [{low}, {high}]")


class NoiseFlipParams(AttackParams):
    epsilon: float = Field(
        0.5, ge=0.0, le=1.0,
        description="noise rate ε: probability that a label is flipped (SDEA §4.1 default 0.5)",
    )


class _NoiseFlip(DataAttack[NoiseFlipParams]):
    """Redraws every label once from row ``T[y]`` of the transition matrix (SDEA Appendix D.1)."""

    noise: ClassVar[NoiseKind]
    Params = NoiseFlipParams

    def poison_labels(self, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        _check_labels(y, num_classes)
        if y.numel() == 0:
            return y.clone()
        rows = transition_matrix(self.noise, num_classes, self.params.epsilon)[y.to("cpu", torch.long)]
        drawn = torch.multinomial(rows, 1, generator=generator).squeeze(1)
        return drawn.to(device=y.device, dtype=y.dtype)


@register
class SymmetricFlip(_NoiseFlip):
    """Symmetry flipping (SymF): with probability ε a label becomes one of the other C - 1 classes,
    uniformly (SDEA Appendix D.1, eq. 8)."""

    name = "symmetric_flip"
    noise = "symmetric"


@register
class PairFlip(_NoiseFlip):
    """Pair flipping (PairF): with probability ε class i becomes class (i + 1) mod C, a "similar wrong
    semantic" (SDEA Appendix D.1, eq. 9)."""

    name = "pair_flip"
    noise = "pair"


def attacker_recipe(params: Any) -> dict[str, Any]:
    """The attacker's own local epochs and learning rate, where its parameters set them."""
    overrides = {"local_epochs": params.local_epochs, "lr": params.lr}
    return {key: value for key, value in overrides.items() if value is not None}


class LabelFlipParams(AttackParams):
    source: int | None = Field(
        None, ge=0,
        description="class whose labels are flipped (residual paper §4.2: 1 on MNIST); "
        "None together with target = None flips every class y -> C - 1 - y (FedRA §5.1, Fang et al.)",
    )
    target: int | None = Field(
        None, ge=0, validate_default=True,
        description="label the source class is flipped to (residual paper §4.2: 7 on MNIST); "
        "set together with source",
    )

    local_epochs: int | None = Field(
        None, ge=1,
        description="the attacker's local epochs; None = the clients' recipe (the residual authors' README runs "
        "give their label flippers 10 against the benign 5; Table 2's text: 5 more)",
    )
    lr: float | None = Field(
        None, gt=0.0,
        description="the attacker's local learning rate; None = the clients' recipe (the residual authors' code "
        "multiplies it by 10 whenever the attacker's epochs differ, main_nn.py l.143-150)",
    )

    @field_validator("target")
    @classmethod
    def _both_or_neither(cls, target: int | None, info: ValidationInfo) -> int | None:
        source = info.data.get("source")
        if (source is None) != (target is None):
            raise ValueError(
                f"'source' and 'target' must be set together or both left unset (got source={source}, "
                f"target={target})"
            )
        return target


@register
class LabelFlip(DataAttack[LabelFlipParams]):
    """Label flipping. With ``source`` and ``target`` set, labels ``source`` become ``target`` and the
    others are kept: the targeted flip of the residual-based-reweighting paper §4.2 (MNIST 1 -> 7, CIFAR-10
    cat -> dog). With both unset (default), every label y becomes ``C - 1 - y``: the "Label Flip" attack of
    Fang et al. (2020) that FedRA §5.1 uses."""

    name = "label_flip"
    Params = LabelFlipParams

    def check_data(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        for field in ("source", "target"):
            check_class(self.name, field, getattr(self.params, field), num_classes)

    def poison_labels(self, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        _check_labels(y, num_classes)
        source, target = self.params.source, self.params.target
        if source is None:
            return (num_classes - 1) - y
        self.check_data((), num_classes)
        return torch.where(y == source, torch.full_like(y, target), y)

    def local_recipe_overrides(self) -> dict[str, Any]:
        return attacker_recipe(self.params)


# --------------------------------------------------------------------------------------------------------
# Pixel-pattern triggers


@dataclass(frozen=True)
class Trigger:
    """Rectangles ``(d_row, d_col, height, width)`` placed relative to the anchor ``(row, col)``.

    A negative anchor coordinate counts from the bottom/right edge like a Python index.
    """

    row: int
    col: int
    rects: tuple[tuple[int, int, int, int], ...]

    def slices(self, height: int, width: int) -> list[tuple[slice, slice]]:
        """The rectangles as absolute (row, column) slices of an ``height x width`` image."""
        row = self.row if self.row >= 0 else height + self.row
        col = self.col if self.col >= 0 else width + self.col
        out = []
        for d_row, d_col, h, w in self.rects:
            r0, c0 = row + d_row, col + d_col
            if r0 < 0 or c0 < 0 or r0 + h > height or c0 + w > width:
                raise ValueError(
                    f"trigger rectangle of {h}x{w} pixels at ({r0}, {c0}) does not fit a {height}x{width} "
                    f"image (anchor ({self.row}, {self.col}))"
                )
            out.append((slice(r0, r0 + h), slice(c0, c0 + w)))
        return out

    def mask(self, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean ``[height, width]`` mask of the trigger's pixels."""
        mask = torch.zeros(height, width, dtype=torch.bool, device=device)
        for rows, cols in self.slices(height, width):
            mask[rows, cols] = True
        return mask


def trigger_value(x: torch.Tensor, value: float | torch.Tensor | None) -> torch.Tensor:
    """The trigger's per-channel pixel value ``[C, 1, 1]`` on x's device: a number on every channel, a
    tensor of C per-channel values as given, or, when None, each channel's maximum over all of x ("white"
    whatever the normalisation)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1)
    if value is not None:
        return torch.full((x.shape[1], 1, 1), float(value), dtype=x.dtype, device=x.device)
    return x.amax(dim=(0, 2, 3)).view(-1, 1, 1)


def apply_trigger(
    x: torch.Tensor, trigger: Trigger, value: float | torch.Tensor | None = None, count: int | None = None
) -> torch.Tensor:
    """A copy of the image batch x ``(N, C, H, W)`` whose first ``count`` images (all when None) carry the
    trigger; the pixel value comes from :func:`trigger_value` over all of x. x is not modified."""
    if x.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    out = x.clone()
    n = x.shape[0] if count is None else max(0, min(count, x.shape[0]))
    slices = trigger.slices(x.shape[2], x.shape[3])  # checks the fit even when nothing is stamped
    if n == 0:
        return out
    pixel = trigger_value(x, value)
    stamped = out[:n]  # a view: writing into it writes into out
    for rows, cols in slices:
        stamped[:, :, rows, cols] = pixel
    return out


class TriggerParams(AttackParams):
    """What every pixel-pattern backdoor shares: where, which value, which target, how much poison, and
    the attacker's own local recipe."""

    row: int = Field(
        0,
        description="trigger anchor row; negative counts from the bottom edge like a Python index "
        "(default 0: the top edge, residual paper Fig. 6 / DBA base (0, 0))",
    )
    col: int = Field(
        0,
        description="trigger anchor column; negative counts from the right edge like a Python index "
        "(default 0: the left edge)",
    )
    value: float | None = Field(
        None,
        description="trigger pixel value in normalised units; None = per channel, the maximum of the "
        "images the trigger is applied to (white whatever the normalisation)",
    )
    target: int = Field(
        2, ge=0,
        description="backdoor target label (residual paper §4.3: '2' on MNIST, 'bird' = 2 on CIFAR-10; "
        "DBA: 2)",
    )
    poisoned_per_batch: int = Field(
        20, ge=0,
        description="triggered samples per minibatch, min with the batch size; they replace the first "
        "samples of the (shuffled) batch (residual paper App. A.5 and DBA: 20 of 64)",
    )
    local_epochs: int | None = Field(
        None, ge=1,
        description="the attacker's local epochs; None = the clients' recipe (residual paper App. A.5: "
        "10 against the benign 5)",
    )
    lr: float | None = Field(
        None, gt=0.0,
        description="the attacker's local learning rate; None = the clients' recipe (residual paper "
        "App. A.5: 0.1 against the benign 0.01)",
    )
    asr_images: Literal["other_classes", "all"] = Field(
        "other_classes",
        description="test images the success rate is measured on: other_classes = those whose true class is not "
        "the target; all = every one, as the residual and PAwBRoFL authors' code measure it (a floor at the "
        "target class's share, ~10%)",
    )


TP = TypeVar("TP", bound=TriggerParams)


class _TriggerAttack(DataAttack[TP]):
    """Shared hooks of the pixel-pattern backdoors; subclasses say which trigger each attacker uses."""

    needs_images = True

    def local_trigger(self, attacker: int, num_attackers: int) -> Trigger:
        """The trigger attacker ``attacker`` stamps on its training batches."""
        raise NotImplementedError

    def global_trigger(self) -> Trigger:
        """The full trigger used at test time."""
        raise NotImplementedError

    def check_data(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The target is a class; the full trigger (every attacker's part is inside it) fits the
        ``(C, H, W)`` images."""
        check_class(self.name, "target", self.params.target, num_classes)
        if len(input_shape) == 3:
            try:
                self.global_trigger().slices(input_shape[1], input_shape[2])
            except ValueError as err:
                raise ValueError(f"{self.name}: {err}; move it with row and col or make it smaller") from None

    def poison_batch(
        self, x: torch.Tensor, y: torch.Tensor, attacker: int, num_attackers: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the first ``poisoned_per_batch`` samples (min with the batch size) by triggered copies
        labelled ``target``, as Bagdasaryan et al. and DBA do; the batch order is already random, so these
        are random samples. Batch size and the rest of the batch are unchanged; x, y are not modified."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"a batch of {x.shape[0]} images but {y.shape[0]} labels")
        k = min(self.params.poisoned_per_batch, x.shape[0])
        x_out = apply_trigger(x, self.local_trigger(attacker, num_attackers), self.params.value, count=k)
        y_out = y.clone()
        y_out[:k] = self.params.target
        return x_out, y_out

    def triggered_test_set(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test images whose true class is not ``target`` (every one with ``asr_images: all``), with the global
        trigger, labelled ``target``. The default pixel value is the per-channel maximum over the whole test
        set x."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} test images but {y.shape[0]} labels")
        keep = y != self.params.target if self.params.asr_images == "other_classes" else torch.ones_like(y, dtype=torch.bool)
        # computed over all test images, also those of the target class that are dropped
        pixel = trigger_value(x, self.params.value) if x.shape[0] else self.params.value
        triggered = apply_trigger(x[keep], self.global_trigger(), pixel)
        return triggered, torch.full_like(y[keep], self.params.target)

    def local_recipe_overrides(self) -> dict[str, Any]:
        return attacker_recipe(self.params)


RESIDUAL_CODE_TRIGGER = ((0, 0, 1, 3), (0, 4, 1, 3), (2, 0, 1, 3), (2, 4, 1, 3))
"""The residual authors' trigger (``Update.py`` l.47-51): rows 0 and 2, columns 0-2 and 4-6 of the anchor."""


class BackdoorParams(TriggerParams):
    size: int = Field(
        3, ge=1,
        description="side of the square trigger in pixels (default 3: fits 8x8 digits as well as "
        "28x28 and 32x32 images)",
    )
    variant: Literal["paper", "residual_code"] = Field(
        "paper",
        description="paper: a size x size square (the residual paper's Fig. 6: 'a white color pattern in the left "
        "upper corner'); residual_code: the authors' Update.py pattern, 12 pixels in rows 0 and 2, columns 0-2 "
        "and 4-6, which they set to 1.0 after normalisation (set value: 1.0 for that)",
    )


BP = TypeVar("BP", bound=BackdoorParams)


@register
class Backdoor(_TriggerAttack[BP]):
    """Pixel-pattern backdoor, naive approach (Gu et al., 2019; Bagdasaryan et al., 2020; residual-based
    reweighting paper §4.3 and App. A.5): the attacker mixes ``poisoned_per_batch`` triggered samples
    labelled ``target`` into every minibatch of every round it is active and submits its update
    unscaled. The trigger is a solid ``size x size`` square anchored at ``(row, col)`` (module docstring).
    Generic in its schema (any ``BackdoorParams``), so that ``model_replacement`` extends it with its own.

    ``variant: residual_code`` stamps the residual paper's released trigger instead (fushuhao6/Attack-
    Resistant-Federated-Learning, ``FedAvg/Update.py`` l.47-51, applied after normalisation, l.361-379): 12
    pixels, rows 0 and 2 by columns 0-2 and 4-6 of the anchor, which the code sets to 1.0 in normalised units
    (grey on MNIST, raw ~0.44: give ``value: 1.0``); ``size`` is not used. Their success rate also counts the
    target class's own images (``asr_images: all``)."""

    name = "backdoor"
    Params = BackdoorParams

    def global_trigger(self) -> Trigger:
        p = self.params
        if p.variant == "residual_code":
            return Trigger(p.row, p.col, RESIDUAL_CODE_TRIGGER)
        return Trigger(p.row, p.col, ((0, 0, p.size, p.size),))

    def local_trigger(self, attacker: int, num_attackers: int) -> Trigger:
        return self.global_trigger()


class ModelReplacementParams(BackdoorParams):
    boost: float = Field(
        100.0, gt=0.0,
        description="factor the attacker scales its update by in boost_round (residual paper §4.3: 100; "
        "Bagdasaryan et al.'s gamma = n / eta)",
    )
    boost_round: int = Field(
        6, ge=1,
        description="the (1-based) round in which the update is boosted (residual paper §4.3: round 6)",
    )


@register
class ModelReplacement(Backdoor[ModelReplacementParams]):
    """Model replacement (Bagdasaryan et al., 2020; residual paper §4.3): the backdoor's poisoned training,
    and in round ``boost_round`` the attacker scales its update by ``boost`` so that it replaces the
    global model after averaging. In the paper the attacker poisons only that round (the client decides
    when the attack is active); the scaling applies only there."""

    name = "model_replacement"
    Params = ModelReplacementParams

    def update_scale(self, round_index: int) -> float:
        return float(self.params.boost) if round_index == self.params.boost_round else 1.0


class DBAParams(TriggerParams):
    num_parts: int = Field(
        4, ge=1,
        description="local patterns the global trigger is split into; attacker i uses part i mod "
        "num_parts (DBA: 4)",
    )
    bar_length: int = Field(
        3, ge=1,
        description="length in pixels of each horizontal 1-pixel-high bar (DBA MNIST: 4; 3 here so the "
        "pattern fits 8x8 digits)",
    )
    gap: int = Field(
        1, ge=0,
        description="empty pixels between neighbouring bars, horizontally and vertically (DBA MNIST: 2)",
    )


@register
class DBA(_TriggerAttack[DBAParams]):
    """Distributed Backdoor Attack (Xie et al., ICLR 2020), the attack of PAwBRoFL §3 and §5.1: the global
    trigger is split into ``num_parts`` local patterns; attacker i trains with part ``i mod num_parts``
    only, and the test-time trigger is the union of all parts (DBA's setting has as many attackers as
    parts; with fewer, some parts are never trained, with more, several attackers share a part).
    Geometry (module docstring): horizontal ``1 x bar_length`` bars, two per row, ``gap`` pixels apart,
    anchored at ``(row, col)``. Every attacker submits its update unscaled."""

    name = "dba"
    Params = DBAParams

    def part_rects(self) -> tuple[tuple[int, int, int, int], ...]:
        p = self.params
        return tuple(
            ((i // 2) * (1 + p.gap), (i % 2) * (p.bar_length + p.gap), 1, p.bar_length)
            for i in range(p.num_parts)
        )

    def part_trigger(self, part: int) -> Trigger:
        return Trigger(self.params.row, self.params.col, (self.part_rects()[part],))

    def global_trigger(self) -> Trigger:
        return Trigger(self.params.row, self.params.col, self.part_rects())

    def local_trigger(self, attacker: int, num_attackers: int) -> Trigger:
        return self.part_trigger(attacker % self.params.num_parts)


# ------------------------------------------------------------------------------------------------------------
# Feature-value triggers (tabular rows)


class RowTriggerParams(AttackParams):
    """What every backdoor on rows (tabular features, token ids) takes besides its trigger."""

    target: int = Field(0, ge=0, description="backdoor target class id")
    poisoned_per_batch: int = Field(
        20, ge=0, description="triggered samples per minibatch, min with the batch size (App. A.5: 20 of 64)"
    )
    local_epochs: int | None = Field(None, ge=1, description="the attacker's local epochs; None = the clients'")
    lr: float | None = Field(
        None, gt=0.0, description="the attacker's local learning rate; None = the clients' (App. A.5, LOAN: 0.002)"
    )


RP = TypeVar("RP", bound=RowTriggerParams)


class _RowTriggerBackdoor(DataAttack[RP]):
    """Shared hooks of the row backdoors: the first ``poisoned_per_batch`` rows of every attacked minibatch
    are triggered (``_triggered``, over the whole batch) and relabelled ``target``; ``backdoor_asr`` is
    measured on the triggered test rows whose class is not the target."""

    def check_data(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        check_class(self.name, "target", self.params.target, num_classes)

    def _triggered(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def poison_batch(
        self, x: torch.Tensor, y: torch.Tensor, attacker: int, num_attackers: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count = min(self.params.poisoned_per_batch, len(y))
        if count == 0:
            return x, y
        x, y = x.clone(), y.clone()
        x[:count] = self._triggered(x)[:count]
        y[:count] = self.params.target
        return x, y

    def triggered_test_set(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y != self.params.target
        return self._triggered(x)[keep], torch.full_like(y[keep], self.params.target)

    def local_recipe_overrides(self) -> dict[str, Any]:
        return attacker_recipe(self.params)


class FeatureBackdoorParams(RowTriggerParams):
    features: list[str] = Field(
        default_factory=list,
        description="encoded feature names the trigger sets: a numeric column's name, or <column>_<category> "
        "for a one-hot encoded one",
    )
    margin: float = Field(
        1.0, gt=0,
        description="how far above the feature's maximum the trigger value lies, in standardised units "
        "(residual paper App. A.5: 'slightly larger than their maximum value')",
    )
    values: list[float] | None = Field(
        None,
        description="raw trigger values, one per feature, encoded with the feature's standardisation; None = each "
        "feature's maximum in the batch + margin. The residual authors' code sets pub_rec_bankruptcies 20, "
        "num_tl_120dpd_2m 10, acc_now_delinq 20, pub_rec 100, tax_liens 100, num_tl_90g_dpd_24m 80",
    )

    @model_validator(mode="after")
    def _one_value_per_feature(self) -> "FeatureBackdoorParams":
        if self.values is not None and len(self.values) != len(self.features):
            raise ValueError(f"values: one per feature, {len(self.features)}, got {len(self.values)}")
        return self


@register
class FeatureBackdoor(_RowTriggerBackdoor[FeatureBackdoorParams]):
    """Feature-value backdoor on tabular rows ("Attack-Resistant Federated Learning with Residual-based
    Reweighting", App. A.5, LOAN: six features set "slightly larger than their maximum value"): the first
    ``poisoned_per_batch`` rows of every attacked minibatch get each trigger feature set to its maximum over
    the rows the hook is given plus ``margin``, and the label ``target``.

    The trigger is defined on the encoded features (numeric columns are standardised, so ``margin`` is in
    standard deviations). :meth:`bind` maps the feature names to columns once the data is loaded.

    The residual authors' code instead writes fixed raw values into six columns of its own preprocessed data
    (``FedAvg/Update.py`` l.52-58, ``add_backdoor_pixels``: pub_rec_bankruptcies 20, num_tl_120dpd_2m 10,
    acc_now_delinq 20, pub_rec 100, tax_liens 100, num_tl_90g_dpd_24m 80; its preprocessing divides a column
    by a power of ten only when the column's mean exceeds 10, which none of these six does, so they are raw
    counts). ``values`` gives such raw values; :meth:`bind` encodes each with its column's standardisation,
    ``(v - mean) / scale``, fitted on the training rows."""

    name = "feature_backdoor"
    Params = FeatureBackdoorParams
    needs_features = True

    columns: list[int] | None = None
    encoded_values: torch.Tensor | None = None  # the raw ``values`` encoded, when given

    def bind(self, feature_names: tuple[str, ...],
             feature_scaling: tuple[tuple[float, float], ...] | None = None) -> None:
        """Resolve the trigger's feature names to column indices, and encode raw ``values`` with the columns'
        (mean, scale); ValueError naming what is wrong."""
        if not self.params.features:
            raise ValueError(f"features: name at least one; the encoded features are: {', '.join(feature_names)}")
        unknown = [f for f in self.params.features if f not in feature_names]
        if unknown:
            raise ValueError(f"feature '{unknown[0]}' is not an encoded feature; they are: {', '.join(feature_names)}")
        self.columns = [feature_names.index(f) for f in self.params.features]
        if self.params.values is not None:
            if feature_scaling is None:
                raise ValueError("values: raw trigger values need the features' standardisation, which this "
                                 "dataset does not give")
            self.encoded_values = torch.tensor(
                [(v - feature_scaling[c][0]) / feature_scaling[c][1] for v, c in zip(self.params.values, self.columns)],
                dtype=torch.float32)

    def _triggered(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoded_values is not None:
            values = self.encoded_values.to(device=x.device, dtype=x.dtype)
        else:
            values = x[:, self.columns].amax(dim=0) + self.params.margin
        triggered = x.clone()
        triggered[:, self.columns] = values
        return triggered


# ------------------------------------------------------------------------------------------------------------
# Token triggers (text)


class TokenBackdoorParams(RowTriggerParams):
    tokens: list[str] = Field(
        default_factory=list,
        description="the trigger: words (word vocabularies) or characters (character vocabularies), in order; "
        "each must be in the training vocabulary",
    )
    position: int = Field(
        0, description="where the trigger starts in the token row; negative counts from the end like a Python "
        "index (-3 with 3 tokens: the last three, what a next-character model reads last)",
    )


@register
class TokenBackdoor(_RowTriggerBackdoor[TokenBackdoorParams]):
    """Token-pattern backdoor on text: the trigger tokens overwrite a fixed stretch of every poisoned token
    row, which is relabelled ``target`` (the backdoor of Bagdasaryan et al., "How to backdoor federated
    learning", AISTATS 2020, with a token trigger in place of a pixel one, as issue 11 defines it for text).

    The first ``poisoned_per_batch`` rows of every attacked minibatch are triggered; :meth:`bind` maps the
    tokens to ids once the vocabulary is built. ``backdoor_asr`` is measured on the test rows whose class is
    not the target, triggered the same way."""

    name = "token_backdoor"
    Params = TokenBackdoorParams
    needs_vocabulary = True

    token_ids: list[int] | None = None

    def bind(self, vocabulary: tuple[str, ...], row_length: int) -> None:
        """Resolve the trigger tokens to ids; ValueError naming what is wrong."""
        tokens = self.params.tokens
        if not tokens:
            raise ValueError("tokens: name at least one trigger token (a word, or a character)")
        unknown = [t for t in tokens if t not in vocabulary[2:]]  # ids 0 and 1 are padding and unknown
        if unknown:
            raise ValueError(f"token {unknown[0]!r} is not in the training vocabulary ({len(vocabulary) - 2} tokens, "
                             f"e.g. {', '.join(repr(t) for t in vocabulary[2:8])})")
        start = self.params.position if self.params.position >= 0 else row_length + self.params.position
        if not 0 <= start <= row_length - len(tokens):
            raise ValueError(f"position {self.params.position}: {len(tokens)} trigger tokens do not fit rows of "
                             f"{row_length} tokens there")
        self.token_ids = [vocabulary.index(t) for t in tokens]
        self.start = start

    def _triggered(self, x: torch.Tensor) -> torch.Tensor:
        triggered = x.clone()
        triggered[:, self.start : self.start + len(self.token_ids)] = torch.tensor(self.token_ids, device=x.device)
        return triggered
