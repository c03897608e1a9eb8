"""The engine's weight averaging (EMA): what it evaluates, what it leaves in the model, and exact resume."""

import pytest
import torch

from conftest import fake_data
from tinymnist.engine import evaluate, fit, set_seed, training_loss
from tinymnist.model import create_model
from tinymnist.recipes import Augment, Recipe, RecipeError
from tinymnist.runtime import Runtime, default_runtime

RECIPE = Recipe(epochs=3, batch_size=32, lr=0.05, schedule="onecycle", warmup=1.0, ema=0.9)


PLAIN = Runtime()


def run(recipe: Recipe, resume_after: int | None = None, runtime: Runtime = PLAIN):
    set_seed(0)
    states = []
    result = fit(create_model("Model_7"), fake_data(), recipe, runtime, on_epoch=lambda _, state: states.append(state))
    if resume_after is None:
        return result.model, result.history
    set_seed(123)  # the state carries the random stream: the seed of the resumed process must not matter
    result = fit(create_model("Model_7"), fake_data(), recipe, runtime, resume=states[resume_after - 1])
    return result.model, result.history


def test_fit_returns_the_model_it_trained_and_leaves_the_callers_as_it_was():
    set_seed(0)
    model = create_model("Model_9")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    result = fit(model, fake_data(), RECIPE.with_overrides(epochs=1), default_runtime("cpu"))
    assert [type(m) for m in model.modules()] == classes  # no fused modules swapped into the caller's object
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert result.model is not model and result.model.state_dict().keys() == model.state_dict().keys()


def test_a_runtime_changes_speed_not_results_up_to_rounding():
    """The CPU runtime (fused kernels, channels-last, flat storage) trains as PyTorch's own operations do."""
    _, plain = run(RECIPE)
    _, fast = run(RECIPE, runtime=Runtime(kernels="fast+pool", channels_last=True))
    for a, b in zip(plain, fast):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-3)


def test_ema_is_what_gets_evaluated_and_what_the_model_ends_holding():
    model, history = run(RECIPE)
    data = fake_data()
    assert evaluate(model, data.test_images, data.test_labels).correct == history[-1]["test_correct"]
    plain, _ = run(RECIPE.with_overrides(ema=0.0))
    assert not torch.equal(model.conv1[0].weight, plain.conv1[0].weight)  # same run, averaged weights differ


def test_resume_restores_the_average():
    whole, history = run(RECIPE)
    resumed, resumed_history = run(RECIPE, resume_after=1)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed_history] == strip
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decay", [1.0, -0.1, 2.0])
def test_ema_decay_outside_0_1_is_an_error(decay):
    with pytest.raises(RecipeError, match="ema must be 0"):
        RECIPE.with_overrides(ema=decay)


@pytest.mark.parametrize("clean_epochs, augmented", [(0, [True] * 3), (1, [True, True, False]), (5, [False] * 3)])
def test_clean_epochs_train_the_last_epochs_without_augmentation(monkeypatch, clean_epochs, augmented):
    """`clean_epochs`: the last epochs see the images as they are; more clean epochs than epochs means all."""
    from tinymnist import engine

    calls = []
    monkeypatch.setattr(engine, "augment_batch", lambda x, *args, **kwargs: calls.append(len(x)) or x)
    seen = []
    recipe = RECIPE.with_overrides(augment=Augment(), clean_epochs=clean_epochs)
    fit(create_model("Model_7"), fake_data(), recipe, on_epoch=lambda row, state: seen.append(len(calls)))
    per_epoch = [b - a for a, b in zip([0, *seen], seen)]
    assert [n > 0 for n in per_epoch] == augmented
    assert all(n in (0, len(fake_data().train_images) // RECIPE.batch_size) for n in per_epoch)


def test_negative_clean_epochs_is_an_error():
    with pytest.raises(RecipeError, match="clean_epochs must be 0 or more, not -1"):
        RECIPE.with_overrides(clean_epochs=-1)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_label_smoothing_outside_0_1_is_an_error(smoothing):
    with pytest.raises(RecipeError, match=f"label_smoothing must be in \\[0, 1\\), not {smoothing}"):
        RECIPE.with_overrides(label_smoothing=smoothing)


def test_label_smoothing_spreads_part_of_each_label_over_all_classes():
    """The smoothed loss is (1 - s) x the label's cross-entropy + s x the mean over classes of -log p."""
    out = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)).log_softmax(1)
    y = torch.arange(32) % 10
    plain = torch.nn.functional.nll_loss(out, y)
    assert torch.equal(training_loss(out, y, RECIPE, None), plain)
    smoothed = training_loss(out, y, RECIPE.with_overrides(label_smoothing=0.1), None)
    assert smoothed.item() == pytest.approx((0.9 * plain - 0.1 * out.mean(1).mean()).item(), rel=1e-6)
