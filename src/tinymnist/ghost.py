"""Ghost batch normalisation (Hoffer, Hubara and Soudry, 2017, "Train longer, generalize better"): in
training, BatchNorm normalises each group of `size` images of a batch with that group's own mean and
variance, as if the group were a batch of its own (`Recipe.ghost_batch`; the last group is smaller when
the batch does not divide into groups).

A large batch is cheaper per image on a CPU, but its BatchNorm statistics are less noisy than a small
batch's, and that noise regularises. Ghost batches keep the large batch's steps and give each image the
statistics of a small one. Evaluation uses the running statistics, which every group updates in turn, as
consecutive small batches would.

`use_ghost_batches` changes the class of each BatchNorm2d in place (to a subclass of its own class, fused
ones included), so its parameters, buffers and state dict stay as they were. PyTorch's BatchNorm runs once
per group, on a slice of the batch, and the outputs are joined. The fused kernels (`kernels.py`) instead
normalise a batch of equal groups in one pass (`takes_groups`), each group's statistics from the same whole-tensor
operations, which costs a fraction of running them group by group (see the Performance section of the
README) and gives the same numbers, bit for bit (`tests/test_ghost.py`): the records of the ghost-batch
models were made group by group.
"""

from __future__ import annotations

import torch
from torch import nn


class _Ghost:
    """Mixed in before a BatchNorm2d class: training splits the batch into groups of `ghost_size` images."""

    ghost_size: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        whole = super().forward  # the BatchNorm2d class's own forward
        if not self.training or len(x) <= self.ghost_size:
            return whole(x)
        groups, rest = divmod(len(x), self.ghost_size)
        if not rest and getattr(self, "takes_groups", False):  # fused kernels (fast/kernels.py)
            return whole(x, groups)  # every group in the same whole-tensor operations, with the same numbers
        return torch.cat([whole(part) for part in x.split(self.ghost_size)])


_GHOST_CLASSES: dict[type, type] = {}


def ghost_class(cls: type[nn.BatchNorm2d]) -> type[nn.BatchNorm2d]:
    """The ghost-batch subclass of a BatchNorm2d class (one per class)."""
    if issubclass(cls, _Ghost):
        return cls
    if cls not in _GHOST_CLASSES:
        _GHOST_CLASSES[cls] = type(f"Ghost{cls.__name__}", (_Ghost, cls), {"__module__": __name__})
    return _GHOST_CLASSES[cls]


def use_ghost_batches(model: nn.Module, size: int) -> nn.Module:
    """Every BatchNorm2d of `model` (in place) normalises groups of `size` images in training; returns it."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.__class__ = ghost_class(type(module))
            module.ghost_size = size
    return model
