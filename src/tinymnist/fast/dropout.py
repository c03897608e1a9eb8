"""Element-wise dropout with cheaper random masks on a CPU (the runtime's `dropout="fast"`): the same
distribution as nn.Dropout, drawn from fewer random numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nets import replace_dropout


class _Masked(torch.autograd.Function):
    """x * mask, keeping only the mask for the backward pass, whose gradient is the incoming one times it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's elements in the order they are stored (whatever its memory format)."""
    return t.as_strided((t.numel(),), (1,))


class _Dropped(torch.autograd.Function):
    """x * scale with the elements at `positions` (indices in memory order) set to 0; the backward pass
    does the same to the incoming gradient, laid out as x was."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        y = x * scale  # dense, in x's memory format
        _in_memory_order(y).index_fill_(0, positions, 0.0)
        ctx.save_for_backward(positions)
        ctx.scale, ctx.strides = scale, y.stride()
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (positions,) = ctx.saved_tensors
        if grad.stride() != ctx.strides:  # the positions count in the forward output's memory order
            grad = torch.empty_strided(grad.shape, ctx.strides, dtype=grad.dtype, device=grad.device).copy_(grad)
        grad = grad * ctx.scale
        _in_memory_order(grad).index_fill_(0, positions, 0.0)
        return grad, None, None


def bernoulli_positions(n: int, p: float, device=None, draws: int | None = None) -> torch.Tensor:
    """The increasing positions in [0, n) of a Bernoulli(p) process: each position is in it with probability
    p, independently of the others, drawn from about n * p random numbers instead of n.

    The gaps between successive positions are geometric: a gap of k has probability (1 - p)^(k-1) * p, and
    1 + floor(log(1 - u) / log(1 - p)) has that distribution for u uniform on [0, 1), here with 53 random
    bits of a full-range 64-bit draw (PyTorch's cheapest CPU sampler). The positions are the running sums.
    Gaps are drawn `draws` at a time until they pass n; by default enough to do it at once almost always.
    """
    log_q, parts, end = math.log1p(-p), [], -1
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    while end < n - 1:
        count = draws or int(n * p + 6 * math.sqrt(n * p) + 16)  # 6 standard deviations over the mean
        bits = torch.empty(count, dtype=torch.int64, device=device).random_(-(2**63), None)
        u = bits.bitwise_and_((1 << 53) - 1).double().mul_(2.0**-53)
        gaps = torch.log1p(u.neg_()).div_(log_q).long().add_(1)
        parts.append(gaps.cumsum_(0).add_(end))
        end = int(parts[-1][-1])
    positions = torch.cat(parts) if len(parts) > 1 else parts[0]
    return positions[: int(torch.searchsorted(positions, n))]


class FastDropout(nn.Module):
    """Element-wise dropout, as nn.Dropout: each activation is zeroed with probability p, independently, and
    the others are scaled by 1 / (1 - p); cheaper than nn.Dropout on a CPU.

    nn.Dropout draws one 32-bit random number per activation through a scalar generator, which for these
    small networks costs as much as the convolutions. For p up to `SPARSE_UP_TO`, FastDropout draws only the
    positions to zero (`bernoulli_positions`, about n * p numbers) and zeroes them in the output and, in the
    backward pass, in the gradient. Above it (where drawing positions costs more, measured on a 2-core CPU),
    each 64-bit draw gives four 16-bit numbers, compared against p * 65536 (p rounded to 1/65536), and the
    mask multiplies the activations and the gradient.
    """

    SPARSE_UP_TO = 0.25

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536) - 32768  # int16 values below this are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0.0
        n = x.numel()
        if self.p <= self.SPARSE_UP_TO:
            return _Dropped.apply(x, bernoulli_positions(n, self.p, x.device), 1.0 / (1.0 - self.p))
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[:n].view_as(x) >= self.threshold
        return _Masked.apply(x, torch.where(keep, 1.0 / (1.0 - self.p), 0.0).to(x.dtype))


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Every nn.Dropout of `model` becomes a FastDropout with the same p, in place."""
    return replace_dropout(model, FastDropout)
