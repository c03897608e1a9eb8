"""Faster equivalents of two PyTorch operations for these small networks on a CPU (`Recipe.kernels="fast"`).

Both compute the same function as the operation they replace, equal up to float rounding; the tests compare
them with PyTorch's own.

- `ReluBatchNorm2d`: ReLU followed by training-mode BatchNorm as one autograd function. PyTorch's
  channels-last BatchNorm kernel on CPU is several times slower for channel counts that are not a multiple
  of 16 (8 or 12 here) than for 16. Here the per-channel sums run over a (N * H, W * C) view of the
  activations, whose rows are wide enough to vectorise, in a dozen whole-tensor operations.
- `outer_affine_grid`: the sampling grid of `F.affine_grid` from two outer sums per coordinate, instead of a
  batched (H * W, 3) x (3, 2) matrix product, which on a CPU costs more than the `grid_sample` it feeds.

See the Performance section of the README for what they are worth.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H, W * C): a view when `t` is channels-last, a copy otherwise."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h, w * c)


def _per_channel(row_sums: torch.Tensor, c: int) -> torch.Tensor:
    """Sums over the rows of a (N * H, W * C) view, (W * C,), -> per-channel sums, (C,)."""
    return row_sums.view(-1, c).sum(0)


class _ReluBatchNorm(torch.autograd.Function):
    """y = BatchNorm(ReLU(x)) with batch statistics; updates the running statistics as nn.BatchNorm2d does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        n, c, h, w = x.shape
        count = n * h * w
        r = _rows(x).clamp_min(0)
        mean = _per_channel(r.sum(0), c) / count
        centred = r - mean.repeat(w)
        var = _per_channel(centred.square().sum(0), c) / count  # biased, for normalising
        invstd = torch.rsqrt(var + eps)
        xhat = centred.mul_(invstd.repeat(w))
        y = torch.addcmul(bias.repeat(w), xhat, weight.repeat(w))
        with torch.no_grad():
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * (count / max(count - 1, 1)), momentum)  # unbiased, as nn.BatchNorm2d
        ctx.save_for_backward(r, xhat, weight, invstd)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)  # channels-last (N, C, H, W)

    @staticmethod
    def backward(ctx, grad_y):
        r, xhat, weight, invstd = ctx.saved_tensors
        n, c, h, w = grad_y.shape
        count = n * h * w
        g = _rows(grad_y)
        grad_bias = _per_channel(g.sum(0), c)
        grad_weight = _per_channel((g * xhat).sum(0), c)
        grad = torch.addcmul(g, xhat, (grad_weight / -count).repeat(w))
        grad.sub_((grad_bias / count).repeat(w)).mul_((weight * invstd).repeat(w))
        grad = torch.ops.aten.threshold_backward(grad, r, 0)  # ReLU's backward
        return grad.view(n, h, w, c).permute(0, 3, 1, 2), grad_weight, grad_bias, None, None, None, None


class ReluBatchNorm2d(nn.BatchNorm2d):
    """ReLU then BatchNorm2d, with the parameters, buffers and state dict of the BatchNorm2d alone.

    Training uses `_ReluBatchNorm`; evaluation, PyTorch's BatchNorm with the running statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.momentum is None or not self.track_running_stats:
            return super().forward(F.relu(x))
        self.num_batches_tracked.add_(1)
        return _ReluBatchNorm.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps
        )


def slow_channels(channels: int) -> bool:
    """Whether PyTorch's channels-last BatchNorm takes its slow path for this channel count on a CPU."""
    return channels % 16 != 0


def fuse_relu_batchnorm(model: nn.Module) -> nn.Module:
    """Replaces, in place, each ReLU directly followed by a BatchNorm2d with `slow_channels` by an
    nn.Identity and a `ReluBatchNorm2d` holding the same parameters and buffers: the state dict keys and
    values stay as they were."""
    for module in model.modules():
        children = list(module.named_children())
        for (relu_name, relu), (bn_name, bn) in itertools.pairwise(children):
            if type(relu) is nn.ReLU and type(bn) is nn.BatchNorm2d and slow_channels(bn.num_features):
                fused = ReluBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
                fused.to(device=bn.weight.device)
                fused.load_state_dict(bn.state_dict())
                fused.train(bn.training)
                setattr(module, relu_name, nn.Identity())
                setattr(module, bn_name, fused)
    return model


def outer_affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, (B, C, height, width), align_corners=False)` for theta (B, 2, 3), computed as
    grid[b, i, j, k] = theta[b, k, 0] * x[j] + (theta[b, k, 1] * y[i] + theta[b, k, 2])."""
    b = theta.shape[0]
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    t = theta.view(b, 2, 3, 1, 1)
    grid = torch.empty(b, height, width, 2, dtype=theta.dtype, device=theta.device)
    torch.add(t[:, :, 0] * xs.view(1, 1, 1, width), t[:, :, 1] * ys.view(1, 1, height, 1) + t[:, :, 2],
              out=grid.permute(0, 3, 1, 2))
    return grid
