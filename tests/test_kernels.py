"""The fast CPU kernels (`fast/kernels.py`, the runtime's `kernels="fast"` or `"fast+pool"`) compute what PyTorch's
operations compute."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import fake_data
from tinymnist.engine import make_ema, make_optimizer, prepare, set_seed, train_one_epoch
from tinymnist.fast.kernels import (
    ReluBatchNorm2d,
    ReluBatchNormMaxPool2d,
    fuse_relu_batchnorm,
    fuse_relu_batchnorm_maxpool,
    max_pool_2x2,
    outer_affine_grid,
)
from tinymnist.model import create_model, get_entry
from tinymnist.recipes import RecipeError
from tinymnist.runtime import Runtime, apply


def relu_batchnorm(x, weight, bias, fused: bool, pool: bool = False):
    """Training-mode ReLU + BatchNorm (+ 2x2 max-pool with `pool`) of `x`, fused or PyTorch's; returns the
    output, the gradients (input, weight, bias) for a fixed output gradient and the running statistics after
    the step."""
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    c = x.shape[1]
    bn = (ReluBatchNormMaxPool2d if pool else ReluBatchNorm2d)(c) if fused else nn.BatchNorm2d(c)
    bn = bn.to(x.dtype)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    y = bn(x) if fused else bn(F.relu(x))
    if pool and not fused:
        y = F.max_pool2d(y, 2)
    grad_y = torch.linspace(-1, 1, y.numel(), dtype=x.dtype).view_as(y)
    y.backward(grad_y)
    return [y, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var]


@pytest.mark.parametrize("shape", [(16, 8, 13, 13), (9, 12, 11, 11), (4, 24, 5, 7)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_relu_batchnorm_matches_pytorch_computed_in_float64(shape, layout):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 2 + 0.3).to(memory_format=layout)
    weight, bias = torch.rand(shape[1], generator=g) + 0.5, torch.randn(shape[1], generator=g)
    exact = relu_batchnorm(x.double(), weight.double(), bias.double(), fused=False)
    fused = relu_batchnorm(x, weight, bias, fused=True)
    for got, want in zip(fused, exact):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 8, 26, 26), (5, 12, 7, 9), (4, 3, 2, 2)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_relu_batchnorm_maxpool_matches_pytorch_computed_in_float64(shape, layout):
    """Including negative BatchNorm scales (where the pool must pick the smallest input) and odd sizes (where
    the max-pool leaves out the last row or column, which still count in the statistics)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 2 + 0.3).to(memory_format=layout)
    weight, bias = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    assert (weight < 0).any() and (weight > 0).any()
    exact = relu_batchnorm(x.double(), weight.double(), bias.double(), fused=False, pool=True)
    fused = relu_batchnorm(x, weight, bias, fused=True, pool=True)
    for got, want in zip(fused, exact):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("negative_scale", [False, True])
def test_relu_batchnorm_maxpool_counts_batches_and_evaluates_as_pytorch(negative_scale):
    """Evaluation pools first when every channel's scale is positive, and otherwise runs PyTorch's operations."""
    x = torch.randn(8, 12, 7, 6)
    fused, plain = ReluBatchNormMaxPool2d(12), nn.BatchNorm2d(12)
    fused(x)
    plain(F.relu(x))
    assert fused.num_batches_tracked.item() == plain.num_batches_tracked.item() == 1
    if negative_scale:
        with torch.no_grad():
            fused.weight[::3] = -0.5
    fused.eval()
    plain.eval()
    plain.load_state_dict(fused.state_dict())
    torch.testing.assert_close(fused(x), F.max_pool2d(plain(F.relu(x)), 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 26, 26), (2, 5, 7, 9)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_max_pool_2x2_is_max_pool2d(shape, layout):
    x = torch.randn(shape).to(memory_format=layout)
    assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))


def fused_keeping_state_and_outputs(name: str, *fuses) -> nn.Module:
    """`name`'s model after `fuses`, checked to keep its state dict and its evaluation outputs exactly."""
    model = create_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    expected = model.eval()(x)
    model.train()
    for fuse in fuses:
        fuse(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(model.eval()(x), expected)
    return model


def test_fuse_maxpool_keeps_the_state_dict_and_fuses_only_relu_batchnorm_maxpool_runs():
    # what "fast+pool" does: the ReLU + BatchNorm + max-pool runs, then the ReLU + BatchNorm pairs left
    model = fused_keeping_state_and_outputs("Model_27", fuse_relu_batchnorm_maxpool, fuse_relu_batchnorm)
    assert [name for name, m in model.named_modules() if isinstance(m, ReluBatchNormMaxPool2d)] == ["conv1.2"]
    assert isinstance(model.conv1[1], nn.Identity) and isinstance(model.pool1, nn.Identity)
    assert [m.num_features for m in model.modules() if type(m) is ReluBatchNorm2d] == [12]


class Reversed(nn.Sequential):
    def forward(self, x):  # runs its children in another order than they are listed
        for module in reversed(self):
            x = module(x)
        return x


@pytest.mark.parametrize("model", [
    Reversed(nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2)),
    nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(3)),
    nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2, ceil_mode=True)),
    nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
])
def test_fuse_maxpool_leaves_other_runs_alone(model):
    fuse_relu_batchnorm_maxpool(model)
    assert not any(isinstance(m, (ReluBatchNormMaxPool2d, nn.Identity)) for m in model.modules())


def test_relu_batchnorm_counts_batches_and_evaluates_as_pytorch():
    x = torch.randn(8, 12, 6, 6)
    fused, plain = ReluBatchNorm2d(12), nn.BatchNorm2d(12)
    fused(x)
    plain(F.relu(x))
    assert fused.num_batches_tracked.item() == plain.num_batches_tracked.item() == 1
    fused.eval()
    plain.eval()
    plain.load_state_dict(fused.state_dict())
    assert torch.equal(fused(x), plain(F.relu(x)))


def test_fuse_keeps_the_state_dict_and_fuses_only_slow_channel_counts():
    model = fused_keeping_state_and_outputs("Model_23", fuse_relu_batchnorm)
    fused = [m.num_features for m in model.modules() if isinstance(m, ReluBatchNorm2d)]
    assert fused == [8, 12]  # the 16-channel layers keep PyTorch's BatchNorm, fast for them


@pytest.mark.parametrize("size", [(28, 28), (13, 20)])
def test_outer_affine_grid_matches_affine_grid(size):
    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(1))
    want = F.affine_grid(theta, [16, 1, *size], align_corners=False)
    torch.testing.assert_close(outer_affine_grid(theta, *size), want, rtol=0, atol=2e-6)


# one model of each network shape, with each of the fast kernel sets
FAST_MODELS = [(name, kernels) for name in ("Model_3", "Model_7", "Model_9", "Model_14", "Model_23")
               for kernels in ("fast", "fast+pool")]
FUSED = (ReluBatchNorm2d, ReluBatchNormMaxPool2d)


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.train()
    F.nll_loss(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).double()


@pytest.mark.parametrize("name, kernels", FAST_MODELS)
def test_fast_kernels_give_pytorchs_gradients(name, kernels):
    """One training step's gradients with the fast kernels in float32, against PyTorch's own in float64.

    On these random images both the fast kernels and PyTorch's own in float32 are about 0.2-0.8 % away (by
    norm; max-pool and ReLU choices flip where float32 rounding differs); a wrong formula is much further."""
    data = fake_data(128)
    x, y = prepare(data.train_images, None, Runtime(channels_last=True)), data.train_labels
    set_seed(0)
    initial = create_model(name).state_dict()
    grads = {}
    for used, dtype in ((kernels, torch.float32), ("torch", torch.float64)):
        model = create_model(name).to(dtype)
        model.load_state_dict(initial)
        model = apply(model, get_entry(name).recipe, Runtime(kernels=used, channels_last=True))
        pooled = any(isinstance(m, ReluBatchNormMaxPool2d) for m in model.modules())
        assert any(isinstance(m, FUSED) for m in model.modules()) == (used != "torch")
        assert not pooled or used == "fast+pool"
        grads[used] = gradients(model, x.to(dtype), y)
    fast = grads[kernels]
    error = torch.linalg.norm(fast - grads["torch"]) / torch.linalg.norm(grads["torch"])
    assert error < 2e-2


@pytest.mark.parametrize("name, kernels", FAST_MODELS)
def test_fast_kernels_train_as_pytorchs_do(name, kernels):
    """An epoch with augmentation, with the fast kernels and with PyTorch's own: the same mean loss, up to
    float32 rounding grown over four steps."""
    data = fake_data(256)
    losses = []
    recipe = get_entry(name).recipe.with_overrides(batch_size=64)
    for used in (kernels, "torch"):
        runtime = Runtime(kernels=used, channels_last=True)
        set_seed(0)
        model = apply(create_model(name), recipe, runtime)
        opt, ema = make_optimizer(model, recipe), make_ema(model, recipe)
        losses.append(train_one_epoch(model, opt, data.train_images, data.train_labels, recipe, ema=ema,
                                      runtime=runtime).loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


def test_unknown_kernels_is_an_error():
    with pytest.raises(RecipeError, match="unknown kernels 'turbo'; valid: torch, fast, fast\\+pool"):
        Runtime(kernels="turbo")


@pytest.mark.parametrize("fused", [ReluBatchNorm2d, ReluBatchNormMaxPool2d])
def test_fused_kernels_compute_in_float32_under_bfloat16_autocast(fused):
    """`bench --options` times a bfloat16 autocast variant: the fused functions take float32 inputs there."""
    conv, bn = nn.Conv2d(1, 8, 3), fused(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(conv(torch.randn(4, 1, 28, 28)))
    y.float().sum().backward()
    assert y.dtype == bn.running_mean.dtype == conv.weight.grad.dtype == torch.float32
    assert bn.num_batches_tracked.item() == 1 and torch.isfinite(conv.weight.grad).all()
