"""Batched per-sample augmentation on the training device: random affine warps and brightness/contrast jitter.

Each image in a batch gets its own random parameters, as torchvision's per-sample PIL transforms would,
but the whole batch is warped by one `affine_grid` + `grid_sample` call instead of a Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .recipes import Augment

# theta (B, 2, 3), height, width -> sampling grid (B, H, W, 2); the runtime may supply a faster one
GridFn = Callable[[torch.Tensor, int, int], torch.Tensor]


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.affine_grid(theta, [theta.shape[0], 1, height, width], align_corners=False)


def _uniform(n: int, lo: float, hi: float, device, generator=None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def random_affine(x: torch.Tensor, aug: Augment, generator=None, grid_fn: GridFn = affine_grid) -> torch.Tensor:
    """Rotates, x-shears, scales and shifts each image of `x` (B, 1, H, W) about its centre; fills with 0.

    `grid_fn` builds the sampling grid (`affine_grid`, or an equal one up to float rounding)."""
    b, dev = x.shape[0], x.device
    angle = _uniform(b, -aug.rotation, aug.rotation, dev, generator) * (math.pi / 180)
    shear = _uniform(b, -aug.shear, aug.shear, dev, generator) * (math.pi / 180)
    scale = _uniform(b, aug.scale_min, aug.scale_max, dev, generator)
    shift = _uniform(2 * b, -aug.translate, aug.translate, dev, generator).view(b, 2) * 2  # normalised coords
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # Forward map A = scale * R(angle) @ Shear(shear), as torchvision composes it; the grid needs A^-1,
    # since grid_sample looks up, for each output pixel, where it came from in the input.
    a = torch.stack([cos, cos * tan - sin, sin, sin * tan + cos], dim=1).view(b, 2, 2) * scale.view(b, 1, 1)
    inv = torch.linalg.inv(a)
    theta = torch.cat([inv, -(inv @ shift.unsqueeze(2))], dim=2)  # (B, 2, 3)
    grid = grid_fn(theta, x.shape[2], x.shape[3])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(x: torch.Tensor, aug: Augment, generator=None) -> torch.Tensor:
    """Per-image brightness then contrast factors on images in [0, 1], clamped back into [0, 1]."""
    b, dev = x.shape[0], x.device
    brightness = _uniform(b, 1 - aug.brightness, 1 + aug.brightness, dev, generator).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - aug.contrast, 1 + aug.contrast, dev, generator).view(b, 1, 1, 1)
    x = (x * brightness).clamp_(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast blends with the image's mean grey, as PIL does
    return ((x - mean) * contrast + mean).clamp_(0, 1)


def augment_batch(x: torch.Tensor, aug: Augment, generator=None, grid_fn: GridFn = affine_grid) -> torch.Tensor:
    """The full augmentation of a (B, 1, H, W) batch in [0, 1]."""
    return color_jitter(random_affine(x, aug, generator, grid_fn), aug, generator)
