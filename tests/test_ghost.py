"""Ghost batch normalisation (`ghost.py`, `Recipe.ghost_batch`): in training, each group of images is normalised
as a batch of its own."""

import copy

import pytest
import torch
from torch import nn

from conftest import fake_data
from tinymnist import ghost
from tinymnist.engine import make_optimizer, set_seed, train_one_epoch
from tinymnist.fast.kernels import ReluBatchNorm2d, ReluBatchNormMaxPool2d
from tinymnist.ghost import ghost_class, use_ghost_batches
from tinymnist.model import create_model, get_entry
from tinymnist.recipes import RecipeError
from tinymnist.runtime import Runtime, apply

BATCHNORMS = [nn.BatchNorm2d, ReluBatchNorm2d, ReluBatchNormMaxPool2d]


def with_statistics(cls: type[nn.BatchNorm2d], channels: int) -> nn.BatchNorm2d:
    bn = cls(channels)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn


@pytest.mark.parametrize("cls", BATCHNORMS)
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("batch, size", [(12, 4), (256, 64), (10, 4), (3, 4)])
def test_ghost_batches_are_normalised_as_separate_batches(cls, layout, batch, size):
    """Output, input and parameter gradients and running statistics equal those of the plain layer run on each
    group in turn (the last group smaller when the batch does not divide), in either memory layout."""
    x = (torch.randn(batch, 8, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.3).to(memory_format=layout)
    plain = with_statistics(cls, 8)
    ghost = use_ghost_batches(copy.deepcopy(plain), size)
    xp, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = torch.cat([plain(part) for part in xp.split(size)])
    got = ghost(xg)
    grad = torch.linspace(-1, 1, want.numel()).view_as(want)
    want.backward(grad)
    got.backward(grad)
    # the same numbers, not only close ones: the fused kernels normalise equal groups in one pass (`groups`)
    assert torch.equal(got, want)
    assert torch.equal(xg.grad, xp.grad)
    for name in ("weight", "bias"):
        assert torch.equal(getattr(ghost, name).grad, getattr(plain, name).grad)
    for name, buffer in plain.named_buffers():
        assert torch.equal(ghost.get_buffer(name), buffer)


@pytest.mark.parametrize("cls", BATCHNORMS)
def test_ghost_batches_change_training_but_not_evaluation(cls):
    x = torch.randn(16, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    x = x * torch.linspace(0.5, 3, 16).view(-1, 1, 1, 1)
    plain = with_statistics(cls, 8)
    ghost = use_ghost_batches(copy.deepcopy(plain), 4)
    assert not torch.allclose(ghost(x), plain(x), atol=1e-3)  # each group's own statistics, not the batch's
    plain.eval()
    ghost.eval()
    ghost.load_state_dict(plain.state_dict())
    assert torch.equal(ghost(x), plain(x))


@pytest.mark.parametrize("name, kernels", [("Model_9", "torch"), ("Model_9", "fast"), ("Model_9", "fast+pool"),
                                           ("Model_14", "fast")])
def test_recipe_ghost_batch_converts_every_batchnorm_and_keeps_the_state_dict(name, kernels):
    model = create_model(name)
    recipe, runtime = get_entry(name).recipe, Runtime(kernels=kernels, channels_last=True)
    plain = apply(model, recipe, runtime)
    ghost = apply(model, recipe.with_overrides(ghost_batch=32), runtime)
    norms = [m for m in ghost.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m).__name__.startswith("Ghost") and m.ghost_size == 32 for m in norms)
    assert [type(m).__bases__[-1] for m in norms] == [type(m) for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert ghost.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(ghost.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_ghost_class_is_made_once_per_class():
    cls = ghost_class(ReluBatchNorm2d)
    assert ghost_class(ReluBatchNorm2d) is cls and ghost_class(cls) is cls
    assert issubclass(cls, ReluBatchNorm2d)


def test_bad_ghost_batch_is_an_error():
    with pytest.raises(RecipeError, match="ghost_batch must be 0"):
        get_entry("Model_9").recipe.with_overrides(ghost_batch=-64)


def split_only(self, x):
    """`ghost._Ghost.forward` without the fused kernels' one-pass groups: each group run in turn."""
    whole = super(ghost._Ghost, self).forward
    if not self.training or len(x) <= self.ghost_size:
        return whole(x)
    return torch.cat([whole(part) for part in x.split(self.ghost_size)])


@pytest.mark.parametrize("kernels", ["fast", "fast+pool"])
def test_one_pass_groups_train_exactly_as_groups_run_in_turn(monkeypatch, kernels):
    """Whole training steps, with a last batch that does not divide into groups: the records of the ghost-batch
    models were made with the groups run in turn."""
    recipe = get_entry("Model_41").recipe.with_overrides(batch_size=64, ghost_batch=16)
    runtime = Runtime(kernels=kernels, channels_last=True)
    data = fake_data(64 * 2 + 24)

    def train():
        set_seed(0)
        model = apply(create_model("Model_41"), recipe, runtime)
        train_one_epoch(model, make_optimizer(model, recipe), data.train_images, data.train_labels, recipe,
                        runtime=runtime)
        return model.state_dict()

    one_pass = train()
    monkeypatch.setattr(ghost._Ghost, "forward", split_only)
    in_turn = train()
    assert all(torch.equal(one_pass[k], v) for k, v in in_turn.items())
