"""The runtime configuration: how fast a recipe is computed, never what. Each setting computes the same
functions up to float rounding (or, for the dropout sampler, draws from the same distribution), so it is
chosen per device, written into every record, and is not part of a model's identity.

`apply` is the one place the speed code (`fast/`) is used: it returns the model to train, a prepared copy,
and leaves the caller's model as it was.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from . import fast
from .augment import GridFn, affine_grid
from .ghost import use_ghost_batches
from .recipes import Recipe, RecipeError

DROPOUTS = ("torch", "fast")
KERNELS = ("torch", "fast", "fast+pool")


@dataclass(frozen=True)
class Runtime:
    dropout: str = "torch"  # "torch": nn.Dropout; "fast": the same element-wise dropout, cheaper masks on CPU
    kernels: str = "torch"  # "fast": ReLU + BatchNorm in one function and a cheaper augmentation grid, on CPU;
    # "fast+pool": also ReLU + BatchNorm + 2x2 max-pool in one function (fast/kernels.py)
    channels_last: bool = False  # NHWC memory layout for the activations
    eval_batch_size: int = 1000  # evaluation has no gradients: large batches are cheaper
    threads: int | None = None  # torch's intra-op threads; None leaves torch's default

    def __post_init__(self):
        if self.dropout not in DROPOUTS:
            raise RecipeError(f"unknown dropout sampler {self.dropout!r}; valid: {', '.join(DROPOUTS)}")
        if self.kernels not in KERNELS:
            raise RecipeError(f"unknown kernels {self.kernels!r}; valid: {', '.join(KERNELS)}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise RecipeError(f"eval_batch_size must be a whole number >= 1, not {self.eval_batch_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise RecipeError(f"threads must be a whole number >= 1, not {self.threads!r}")

    def with_overrides(self, **overrides: Any) -> Runtime:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise RecipeError(f"unknown runtime setting(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def grid_fn(self) -> GridFn:
        """The augmentation's sampling grid: outer sums instead of a batched matrix product with the CPU
        kernels, equal to `F.affine_grid` up to float rounding."""
        return fast.outer_affine_grid if self.kernels != "torch" else affine_grid


def default_runtime(device: torch.device | str) -> Runtime:
    """What wins on `device`: on a CPU, the fused kernels, channels-last activations and the cheaper dropout
    sampler (docs/performance.md); elsewhere PyTorch's own operations."""
    if torch.device(device).type == "cpu":
        return Runtime(dropout="fast", kernels="fast+pool", channels_last=True)
    return Runtime()


def apply(model: nn.Module, recipe: Recipe, runtime: Runtime) -> nn.Module:
    """A copy of `model` prepared to train: the recipe's ghost batches and the runtime's speed code (none of
    which changes a parameter's value or a state dict key), its parameters and buffers in flat tensors
    (`fast.flatten_`) so the optimizer and the weight average update each group in one operation."""
    model = copy.deepcopy(model)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if runtime.dropout == "fast" and on_cpu:
        fast.use_fast_dropout(model)
    if runtime.kernels == "fast+pool" and on_cpu:
        fast.fuse_relu_batchnorm_maxpool(model)
    if runtime.kernels != "torch" and on_cpu:
        fast.fuse_relu_batchnorm(model)  # the pairs left
    if recipe.ghost_batch:  # science, not speed: it changes what BatchNorm computes in training
        use_ghost_batches(model, recipe.ghost_batch)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return fast.flatten_(model)


def optimizer_parameters(model: nn.Module) -> list[torch.Tensor]:
    """What an optimizer should update: one flat tensor for a model `apply` prepared, else its parameters."""
    return fast.flat_parameters(model)


def weight_average(model: nn.Module, decay: float) -> nn.Module:
    """An exponential moving average of the model's weights and BatchNorm statistics (an AveragedModel),
    updated one flat group at a time."""
    return fast.ExponentialAverage(model, decay)
