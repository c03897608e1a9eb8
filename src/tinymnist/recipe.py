"""Training recipes: the typed, serialisable description of how a model is trained.

A `Recipe` sits next to each model in `model.py`; the resolved recipe is saved with every run record
and checkpoint, so a number can always be traced back to the settings that produced it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Augment:
    """Per-sample random augmentation, applied to a whole batch at once (see `augment.py`).

    The defaults are the reference's torchvision pipeline: RandomAffine(7, translate=(0.1, 0.1),
    scale=(0.8, 1.2), shear=10) followed by ColorJitter(brightness=0.4, contrast=0.4).
    """

    rotation: float = 7.0  # degrees, drawn uniformly from [-rotation, rotation]
    shear: float = 10.0  # degrees of x-shear, uniform in [-shear, shear]
    translate: float = 0.1  # fraction of the image side, uniform in [-translate, translate] on each axis
    scale_min: float = 0.8  # isotropic zoom, uniform in [scale_min, scale_max]
    scale_max: float = 1.2
    brightness: float = 0.4  # brightness factor uniform in [1 - brightness, 1 + brightness]
    contrast: float = 0.4  # contrast factor uniform in [1 - contrast, 1 + contrast]


@dataclass(frozen=True)
class Recipe:
    """Everything about a training run except the model's architecture and the seed."""

    epochs: int = 15  # the exercise's budget
    batch_size: int = 64  # the reference's batch size (938 steps an epoch)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.01  # initial learning rate
    momentum: float = 0.9  # SGD momentum; ignored by Adam
    weight_decay: float = 0.0  # L2 penalty added by the optimizer
    schedule: str = "constant"  # "constant", "exp" (lr * gamma**epoch, the reference's LambdaLR), "step", "onecycle"
    gamma: float = 0.65  # decay factor per epoch for "exp", per `step_size` epochs for "step"
    step_size: int = 6  # epochs between decays for "step"
    warmup: float = 3.0  # "onecycle": epochs of linear warm-up from lr / 10 to lr, then cosine decay to 0
    nesterov: bool = False  # Nesterov momentum for SGD
    dropout: float = 0.0  # dropout probability after each convolution but the last (0 = no dropout layers)
    augment: Augment | None = None  # None trains on the images as they are
    clean_epochs: int = 0  # the last this many epochs train on the images as they are, without augmentation
    dropout_impl: str = "torch"  # "torch": nn.Dropout; "fast": the same element-wise dropout, cheaper masks on CPU
    kernels: str = "torch"  # "fast": ReLU + BatchNorm in one function on CPU, a cheaper augmentation grid (kernels.py);
    # "fast+pool": also ReLU + BatchNorm + 2x2 max-pool in one function
    channels_last: bool = False  # NHWC memory layout for convolutions (see the Performance section of the README)
    ema: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights, this decay per step
    teacher: str | None = None  # a model whose shipped weights teach this one (knowledge distillation)
    distill: float = 0.0  # weight of the distillation loss against the teacher; the label loss gets 1 - distill
    temperature: float = 1.0  # divides both models' class scores before the distillation loss compares them
    teacher_seeds: int = 1  # how many of the teacher's runs (seeds 1, 2, ...) teach together, as one ensemble
    teacher_cache: bool = False  # the teacher's outputs for the training images as they are, computed once, stand
    # in for its outputs on each augmented batch: no teacher forward pass per step (soft labels as in ReLabel)
    ghost_batch: int = 0  # > 0: in training, BatchNorm normalises each group of this many images of a batch with
    # the group's own statistics (ghost batch normalisation, ghost.py)
    label_smoothing: float = 0.0  # the label loss's target gives this much probability, spread evenly, to all classes
    eval_batch_size: int = 1000  # evaluation has no gradients: large batches are cheaper

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with some fields changed; an unknown field name is an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown recipe field(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        data = dict(data)
        if data.get("augment") is not None:
            data["augment"] = Augment(**data["augment"])
        return cls(**data)


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "exp", "step", "onecycle")
KERNELS = ("torch", "fast", "fast+pool")


def lr_at(recipe: Recipe, epoch: float) -> float:
    """Learning rate at `epoch` (0-based; fractional part = progress through the epoch). A pure function.

    "exp" and "step" change once an epoch, as the reference's per-epoch scheduler did; "onecycle" changes
    every step.
    """
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "exp":
        return recipe.lr * recipe.gamma ** math.floor(epoch)
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** (math.floor(epoch) // recipe.step_size)
    if recipe.schedule == "onecycle":
        if epoch < recipe.warmup:
            return recipe.lr * (0.1 + 0.9 * epoch / recipe.warmup)
        progress = (epoch - recipe.warmup) / max(recipe.epochs - recipe.warmup, 1e-9)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown schedule {recipe.schedule!r}; valid: {', '.join(SCHEDULES)}")
