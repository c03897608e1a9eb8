"""Faster equivalents of PyTorch operations for these small networks on a CPU (the runtime's `kernels`).

Each computes the same function as the operations it replaces, equal up to float rounding; the tests compare
them with PyTorch's own. `kernels="fast"` uses the first two, `kernels="fast+pool"` all three.

- `ReluBatchNorm2d`: ReLU followed by training-mode BatchNorm as one autograd function. PyTorch's
  channels-last BatchNorm kernel on CPU is several times slower for channel counts that are not a multiple
  of 16 (8 or 12 here) than for 16. Here the per-channel sums run over a (N * H, W * C) view of the
  activations, whose rows are wide enough to vectorise, in a dozen whole-tensor operations.
- `outer_affine_grid`: the sampling grid of `F.affine_grid` from two outer sums per coordinate, instead of a
  batched (H * W, 3) x (3, 2) matrix product, which on a CPU costs more than the `grid_sample` it feeds.
- `ReluBatchNormMaxPool2d`: ReLU, training-mode BatchNorm and a 2x2 max-pool as one autograd function. The
  BatchNorm's output feeds only the max-pool, so it is needed only at the pooled positions: BatchNorm is a
  per-channel affine map, and the maximum of its output is where the input is largest (or smallest, for a
  negative scale). The full-resolution tensor is read for the statistics and pooled, but the normalised
  activations are computed for a quarter of it, and the backward pass writes the input's gradient in two
  passes instead of a dozen.

The two fused functions also take `groups`: the batch's equal groups of consecutive images each normalised
with its own statistics (ghost batches, `ghost.py`), in the same operations, with a leading group dimension;
`FusedBatchNorm2d.takes_groups` tells `ghost.py` so, without either module knowing the other.

See docs/performance.md for what they are worth.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


def _rows(t: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> (G, N / G * H, W * C), G = `groups` of consecutive images: a view when `t` is
    channels-last, a copy otherwise."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(groups, n // groups * h, w * c)


def _per_channel(row_sums: torch.Tensor, c: int) -> torch.Tensor:
    """Sums over the rows of each group, (G, W * C), -> per-channel sums, (G, C)."""
    return row_sums.view(len(row_sums), -1, c).sum(1)


def _wide(per_channel: torch.Tensor, w: int) -> torch.Tensor:
    """(G, C) -> (G, 1, W * C): per-channel values laid out along a row, for each group's rows."""
    return per_channel.repeat(1, w).unsqueeze(1)


def _group_sum(per_group: torch.Tensor) -> torch.Tensor:
    """(G, C) -> (C,), adding the last group first: the order in which autograd adds the gradients of the
    same layer run on each group in turn (`ghost.py`), so that both give the same numbers."""
    total = per_group[-1]
    for part in per_group.flip(0)[1:]:
        total = total + part
    return total


# these functions compute in float32: under bfloat16 autocast (on a CPU) their inputs are cast to it
_float32_under_autocast = torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
_backward_as_forward = torch.amp.custom_bwd(device_type="cpu")


def _relu_statistics(x, running_mean, running_var, momentum: float, eps: float, groups: int):
    """ReLU(x) as (G, N / G * H, W * C) rows, the same centred per group and channel, the mean and 1 / std per
    group and channel, (G, C); updates the running statistics as nn.BatchNorm2d does, group after group."""
    n, c, h, w = x.shape
    count = n // groups * h * w
    r = _rows(x, groups).clamp_min(0)
    mean = _per_channel(r.sum(1), c) / count
    centred = r - _wide(mean, w)
    var = _per_channel(centred.square().sum(1), c) / count  # biased, for normalising
    with torch.no_grad():
        for group_mean, group_var in zip(mean, var):
            running_mean.lerp_(group_mean, momentum)
            running_var.lerp_(group_var * (count / max(count - 1, 1)), momentum)  # unbiased, as nn.BatchNorm2d
    return r, centred, mean, torch.rsqrt(var + eps)


class _ReluBatchNorm(torch.autograd.Function):
    """y = BatchNorm(ReLU(x)) with the statistics of each of `groups` equal groups of consecutive images (1:
    the batch's); updates the running statistics as nn.BatchNorm2d does."""

    @staticmethod
    @_float32_under_autocast
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, groups: int = 1):
        n, c, h, w = x.shape
        r, centred, _, invstd = _relu_statistics(x, running_mean, running_var, momentum, eps, groups)
        xhat = centred.mul_(_wide(invstd, w))
        y = torch.addcmul(bias.repeat(w), xhat, weight.repeat(w))
        ctx.save_for_backward(r, xhat, weight, invstd)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)  # channels-last (N, C, H, W)

    @staticmethod
    @_backward_as_forward
    def backward(ctx, grad_y):
        r, xhat, weight, invstd = ctx.saved_tensors
        n, c, h, w = grad_y.shape
        groups = len(r)
        count = n // groups * h * w
        g = _rows(grad_y, groups)
        grad_bias = _per_channel(g.sum(1), c)
        grad_weight = _per_channel((g * xhat).sum(1), c)
        grad = torch.addcmul(g, xhat, _wide(grad_weight / -count, w))
        grad.sub_(_wide(grad_bias / count, w)).mul_(_wide(weight * invstd, w))
        grad = torch.ops.aten.threshold_backward(grad, r, 0)  # ReLU's backward
        return (grad.view(n, h, w, c).permute(0, 3, 1, 2), _group_sum(grad_weight), _group_sum(grad_bias),
                None, None, None, None, None)


class FusedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d (parameters, buffers, state dict) fused with the operations around it: training with
    batch statistics and running averages runs `function`; anything else, `unfused`."""

    function: type[torch.autograd.Function]
    takes_groups = True  # forward(x, groups) normalises equal groups of the batch apart, in one pass

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """`groups` > 1 (training only): the batch's `groups` equal parts each normalised with its own
        statistics, as if run one after the other (ghost batches, `ghost.py`)."""
        if not self.training or self.momentum is None or not self.track_running_stats:
            return self.unfused(x)
        self.num_batches_tracked.add_(groups)
        return self.function.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps, groups
        )


class ReluBatchNorm2d(FusedBatchNorm2d):
    """ReLU then BatchNorm2d, with the parameters, buffers and state dict of the BatchNorm2d alone.

    Training uses `_ReluBatchNorm`; evaluation, PyTorch's BatchNorm with the running statistics."""

    function = _ReluBatchNorm

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        return nn.BatchNorm2d.forward(self, F.relu(x))


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(x, 2)` (no gradient) as two element-wise maxima over strided views, which on a CPU take
    a fraction of PyTorch's pooling kernel's time for these channels-last activations."""
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    x = x[:, :, :h, :w]
    rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class _ReluBatchNormMaxPool(torch.autograd.Function):
    """y = MaxPool2d(2)(BatchNorm(ReLU(x))) with batch statistics; updates the running statistics as
    nn.BatchNorm2d does."""

    @staticmethod
    @_float32_under_autocast
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, groups: int = 1):
        n, c, h, w = x.shape
        r, centred, mean, invstd = _relu_statistics(x, running_mean, running_var, momentum, eps, groups)
        # weight * (r - mean) = |weight| * sign * (r - mean): its maximum is where sign * (r - mean) is largest
        sign = torch.where(weight < 0, -1.0, 1.0).to(x.dtype)
        signed = centred.mul_(sign.repeat(w))
        pooled, picked = F.max_pool2d(signed.view(n, h, w, c).permute(0, 3, 1, 2), 2, return_indices=True)
        scale = (weight.abs() * invstd).view(groups, 1, c, 1, 1)
        y = torch.addcmul(bias.view(1, c, 1, 1), pooled.unflatten(0, (groups, -1)), scale).flatten(0, 1)
        ctx.save_for_backward(r, pooled, picked, weight, mean, invstd, sign)
        ctx.size = (h, w)
        return y

    @staticmethod
    @_backward_as_forward
    def backward(ctx, grad_y):
        r, pooled, picked, weight, mean, invstd, sign = ctx.saved_tensors
        n, c = grad_y.shape[:2]
        h, w = ctx.size
        groups = len(r)
        count = n // groups * h * w
        by_group = grad_y.unflatten(0, (groups, -1))  # (G, N / G, C, H / 2, W / 2)
        grad_bias = by_group.sum((1, 3, 4))
        # the sum of grad_y * xhat at the maxima
        grad_weight = (by_group * pooled.unflatten(0, (groups, -1))).sum((1, 3, 4)) * sign * invstd
        # BatchNorm's input gradient is k * (grad at x - grad_bias / count - xhat * grad_weight / count), with
        # k = weight * invstd and xhat = (r - mean) * invstd. The last two terms reach every position, as
        # offset + slope * r; the first only the positions the max-pool picked.
        k = weight * invstd
        slope = k * invstd * grad_weight / -count
        offset = k * grad_bias / -count - slope * mean
        grad = torch.addcmul(_wide(offset, w), r, _wide(slope, w))  # (G, N / G * H, W * C)
        at_maxima = (by_group * k.view(groups, 1, c, 1, 1)).flatten(0, 1).permute(0, 2, 3, 1).reshape(n, -1, c)
        grad.view(n, h * w, c).scatter_add_(1, picked.permute(0, 2, 3, 1).reshape(n, -1, c), at_maxima)
        grad = torch.ops.aten.threshold_backward(grad, r, 0)  # ReLU's backward
        return (grad.view(n, h, w, c).permute(0, 3, 1, 2), _group_sum(grad_weight), _group_sum(grad_bias),
                None, None, None, None, None)


class ReluBatchNormMaxPool2d(FusedBatchNorm2d):
    """ReLU, BatchNorm2d and MaxPool2d(2), with the parameters, buffers and state dict of the BatchNorm2d alone.

    Training uses `_ReluBatchNormMaxPool`. Evaluation with the running statistics pools first: ReLU and a
    BatchNorm with a positive scale are increasing maps, which commute with the max-pool, so they then work on
    a quarter of the activations; with a negative scale it falls back to PyTorch's operations in order."""

    function = _ReluBatchNormMaxPool

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats:
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.affine:
                scale = scale * self.weight
            if bool((scale >= 0).all()):  # a sync with the device, once per evaluated batch
                shift = -self.running_mean * scale + (self.bias if self.affine else 0)
                pooled = F.relu(max_pool_2x2(x))
                return torch.addcmul(shift.view(1, -1, 1, 1), pooled, scale.view(1, -1, 1, 1))
        return F.max_pool2d(nn.BatchNorm2d.forward(self, F.relu(x)), 2)


def _fused_copy(bn: nn.BatchNorm2d, cls: type[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """A `cls` with `bn`'s settings, parameters and buffers, on its device, in its dtype and mode."""
    fused = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    fused.to(device=bn.weight.device, dtype=bn.weight.dtype)
    fused.load_state_dict(bn.state_dict())
    return fused.train(bn.training)


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
                setattr(module, relu_name, nn.Identity())
                setattr(module, bn_name, _fused_copy(bn, ReluBatchNorm2d))
    return model


def _leaves(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, module) of each module that runs, in the order it runs, looking only into
    nn.Sequential containers (whose order is their forward's): any other module counts as one leaf."""
    leaves = []
    for name, child in module.named_children():
        if type(child) is nn.Sequential:
            leaves += _leaves(child)
        else:
            leaves.append((module, name, child))
    return leaves


def _plain_2x2_pool(pool: nn.Module) -> bool:
    return type(pool) is nn.MaxPool2d and (
        pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1)) and not pool.ceil_mode and not pool.return_indices
    )


def fuse_relu_batchnorm_maxpool(model: nn.Sequential) -> nn.Sequential:
    """Replaces, in place, each ReLU -> BatchNorm2d -> MaxPool2d(2) run of an nn.Sequential model (nested
    nn.Sequential included) by nn.Identity, a `ReluBatchNormMaxPool2d` holding the BatchNorm's parameters and
    buffers, and nn.Identity: the state dict keys and values stay as they were."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return model  # its forward may not run its children in order
    leaves = _leaves(model)
    for (p1, n1, relu), (p2, n2, bn), (p3, n3, pool) in zip(leaves, leaves[1:], leaves[2:]):
        if type(relu) is nn.ReLU and type(bn) is nn.BatchNorm2d and _plain_2x2_pool(pool):
            setattr(p1, n1, nn.Identity())
            setattr(p2, n2, _fused_copy(bn, ReluBatchNormMaxPool2d))
            setattr(p3, n3, nn.Identity())
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
