"""Flat parameter storage (`fast/flat.py`): it keeps every model's values and layouts, and trains bit for bit as
torch's per-tensor optimizer and AveragedModel do."""

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from conftest import fake_data
from tinymnist.engine import (
    StateError,
    make_ema,
    make_optimizer,
    restore_state,
    set_seed,
    train_one_epoch,
    training_state,
)
from tinymnist.fast.flat import flat_pairs, flat_parameters, flatten_
from tinymnist.model import create_model, get_entry, model_names
from tinymnist.runtime import Runtime, apply, default_runtime

CPU = default_runtime("cpu")


@pytest.mark.parametrize("name", model_names())
def test_flatten_keeps_values_and_layouts(name):
    recipe = get_entry(name).recipe
    model = apply(create_model(name), recipe, CPU.with_overrides(dropout="torch"))
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    flatten_(model)  # apply has flattened it already; doing it again must change nothing
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k
    (flat,) = flat_parameters(model)
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in model.parameters())


def test_unflattened_model_is_optimized_tensor_by_tensor():
    model = create_model("Model_6")  # not prepared: the baseline pipeline's case
    assert flat_parameters(model) == list(model.parameters())
    tensors = len(list(model.parameters())) + len(list(model.buffers()))
    assert len(flat_pairs(model, create_model("Model_6"))) == tensors  # the weight average goes tensor by tensor


@pytest.mark.parametrize("name", ["Model_6", "Model_11"])  # SGD with dropout; Nesterov SGD, EMA, channels_last
def test_flat_training_is_bit_identical_to_per_tensor_training(name):
    recipe = get_entry(name).recipe.with_overrides(batch_size=32)
    runtime = Runtime(channels_last=True)
    data = fake_data()

    def train(flat: bool):
        set_seed(0)
        model = create_model(name)
        if flat:
            model = apply(model, recipe, runtime)
            optimizer, ema = make_optimizer(model, recipe), make_ema(model, recipe)
        else:  # torch's own: an optimizer over the parameters, AveragedModel's EMA
            model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                        weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True) \
                if recipe.ema else None
        for _ in range(2):
            train_one_epoch(model, optimizer, data.train_images, data.train_labels, recipe, ema=ema, runtime=runtime)
        return model, ema

    (flat, flat_ema), (plain, plain_ema) = train(True), train(False)
    for (k, a), b in zip(flat.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    set_seed(0)
    first = next(iter(create_model(name).parameters()))
    assert not torch.equal(next(iter(flat.parameters())), first)  # it trained
    if flat_ema is not None:
        for (k, a), b in zip(flat_ema.state_dict().items(), plain_ema.state_dict().values()):
            assert torch.equal(a, b), k


def test_a_state_with_per_tensor_optimizer_state_is_refused_clearly():
    recipe = get_entry("Model_11").recipe
    old = create_model("Model_11")  # as saved before flattening: one optimizer entry per parameter
    old_optimizer = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9)
    state = training_state(old, old_optimizer, [])
    model = apply(create_model("Model_11"), recipe, CPU)
    with pytest.raises(StateError, match="run without --resume"):
        restore_state(model, make_optimizer(model, recipe), state)


def test_weight_average_loaded_mid_run_continues_from_what_it_loaded():
    recipe = get_entry("Model_11").recipe
    set_seed(0)
    model = apply(create_model("Model_11"), recipe, CPU)
    ema, reference = make_ema(model, recipe), AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update_parameters(model)
        reference.update_parameters(model)
    other = make_ema(model, recipe)
    other.update_parameters(model)  # an update before loading: the loaded count must win over it
    other.load_state_dict(ema.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    other.update_parameters(model)
    reference.update_parameters(model)
    for (k, a), b in zip(other.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def test_weight_average_loaded_before_its_first_update_copies_at_the_next():
    recipe = get_entry("Model_11").recipe
    set_seed(0)
    model = apply(create_model("Model_11"), recipe, CPU)
    fresh, used = make_ema(model, recipe), make_ema(model, recipe)
    used.update_parameters(model)
    used.update_parameters(model)
    used.load_state_dict(fresh.state_dict())  # back to no update at all
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    used.update_parameters(model)
    for a, b in zip(used.module.parameters(), model.parameters()):
        assert torch.equal(a, b)
