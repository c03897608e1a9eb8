"""A module's parameters and buffers held in one flat tensor per group, so that per-step updates are one
operation each instead of one per layer.

For networks of a few thousand parameters spread over some 20 tensors, the optimizer step and the weight
average cost mostly the overhead of looping over small tensors, paid at every step (see the Performance
section of the README). `flatten_` moves each group (parameters, floating-point
buffers, other buffers) into one flat tensor and leaves every original tensor as a view of its segment,
with its shape and memory layout unchanged, so the modules work as before. The arithmetic does not change:
the same element-wise updates run over the same numbers, in one call.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _groups(module: nn.Module) -> list[list[torch.Tensor]]:
    buffers = list(module.buffers())
    groups = [list(module.parameters()), [b for b in buffers if b.is_floating_point()],
              [b for b in buffers if not b.is_floating_point()]]
    return [g for g in groups if g]


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def flatten_(module: nn.Module) -> nn.Module:
    """Re-homes the module's parameters and buffers into flat tensors (in place); returns the module."""
    for group in _groups(module):
        if not all(_dense(t) for t in group) or len({(t.dtype, t.device) for t in group}) > 1:
            continue  # an unusual layout or a mixed group: left as it is, and updated tensor by tensor
        flat = torch.empty(sum(t.numel() for t in group), dtype=group[0].dtype, device=group[0].device)
        offset = 0
        for t in group:
            view = flat.as_strided(t.shape, t.stride(), offset)
            view.copy_(t.detach())
            t.data = view
            offset += t.numel()
    return module


def _base(group: list[torch.Tensor]) -> torch.Tensor | None:
    """The flat tensor whose consecutive segments the group's tensors are (see `flatten_`), else None."""
    storage = group[0].untyped_storage()
    sizes = [t.numel() for t in group]
    if (
        any(t.untyped_storage().data_ptr() != storage.data_ptr() for t in group)
        or [t.storage_offset() for t in group] != list(itertools.accumulate([0, *sizes[:-1]]))
        or storage.nbytes() != sum(sizes) * group[0].element_size()
    ):
        return None
    return group[0].new_empty(0).set_(storage, 0, (sum(sizes),))


def flat_parameters(module: nn.Module) -> list[torch.Tensor]:
    """What an optimizer should update: the one flat tensor of a flattened module's parameters, its
    gradient a flat tensor whose segments are the parameters' gradients; else the parameters themselves."""
    params = list(module.parameters())
    flat = _base(params) if params else None
    if flat is None:
        return params
    flat.grad = torch.zeros_like(flat)
    for p in params:
        p.grad = flat.grad.as_strided(p.shape, p.stride(), p.storage_offset())
    return [flat]


def flat_pairs(target: nn.Module, source: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The matching tensors of two modules of the same structure, group by group: one flat pair per group
    that is flat in both, else one pair per tensor."""
    pairs = []
    for mine, theirs in zip(_groups(target), _groups(source), strict=True):
        a, b = _base(mine), _base(theirs)
        pairs += [(a, b)] if a is not None and b is not None else list(zip(mine, theirs, strict=True))
    return pairs


class ExponentialAverage(AveragedModel):
    """`AveragedModel` with an exponential moving average of the weights and BatchNorm statistics, updated
    with one operation per flat group (see `flat.py`) rather than per tensor, by the same arithmetic as
    `get_ema_multi_avg_fn`; its state dict is AveragedModel's."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)  # the averaging itself is update_parameters below
        flatten_(self.module)
        self.decay = decay
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._source = 0  # id() of the model the pairs were made for; 0: make them (again) at the next update
        self._first = True  # no update yet: the next one copies (read from n_averaged when the pairs are made)

    def load_state_dict(self, *args, **kwargs):
        self._source = 0
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._source != id(model):  # n_averaged is read here only, not at every step (a device sync)
            self._pairs, self._source = flat_pairs(self.module, model), id(model)
            self._first = bool(self.n_averaged == 0)
        for mine, theirs in self._pairs:
            if self._first:
                mine.copy_(theirs)
            elif mine.is_floating_point():
                mine.lerp_(theirs, 1 - self.decay)
            else:  # BatchNorm's step counters, as get_ema_multi_avg_fn averages them
                mine.copy_(mine * self.decay + theirs * (1 - self.decay))
        self.n_averaged += 1
        self._first = False
