import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinymnist.model import REGISTRY, UnknownModelError, count_params, create_model, get_entry
from tinymnist.recipes import RECIPES, Recipe, RecipeError, lr_at
from tinymnist.summary import summary_dict

MODELS = list(REGISTRY)


@pytest.mark.parametrize("name", MODELS)
def test_output_is_log_probabilities(name):
    model = create_model(name).eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_is_within_its_budget(name):
    """Every step after the first fits the exercise's budget; the tiny steps (hold 3) fit under 4,000."""
    params = count_params(create_model(name))
    assert name == "Model_1" or params < 8000
    assert get_entry(name).hold == 5 or params <= 4000


@pytest.mark.parametrize("name", MODELS)
def test_the_measured_receptive_field_is_the_analytic_one(name):
    """summary measures receptive fields for any network; on the registered ones it must agree with the
    kernel-size-and-stride recursion, block by block."""
    from tinymnist.summary import analytic_rf, measured_rf

    model = create_model(name)
    measured, analytic = measured_rf(model), analytic_rf(model)
    assert measured and all(measured[block] == analytic[block] for block in measured), (measured, analytic)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = F.nll_loss(model(torch.randn(8, 1, 28, 28)), torch.arange(8) % 10)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODELS)
def test_registry_entry_is_complete(name):
    entry = get_entry(name)
    assert isinstance(entry.recipe, Recipe) and entry.recipe.epochs <= 15
    assert entry.target and "\n" not in entry.target
    # the recipe's dropout decides whether the model has dropout layers
    has_dropout = any(isinstance(m, torch.nn.Dropout) for m in create_model(name).modules())
    assert has_dropout == (entry.recipe.dropout > 0)


def test_reference_param_counts():
    assert count_params(create_model("Model_1")) == 13_584
    assert count_params(create_model("Model_2")) == 7_400
    for name in ("Model_3", "Model_4", "Model_5", "Model_6"):
        assert count_params(create_model(name)) == 7_624


def test_model_6_reproduces_the_reference_table():
    layers = summary_dict("Model_6", create_model("Model_6"))["layers"]
    got = [(tuple(layer["output_shape"]), layer["param_parts"]) for layer in layers if layer["name"] != "out"]
    assert got == [
        ((8, 26, 26), [72, 16]),
        ((16, 24, 24), [1152, 32]),
        ((16, 12, 12), []),
        ((8, 12, 12), [128]),
        ((16, 10, 10), [1152, 32]),
        ((24, 8, 8), [3456, 48]),
        ((24, 1, 1), []),
        ((32, 1, 1), [768, 64]),
        ((16, 1, 1), [512, 32]),
        ((10, 1, 1), [160]),
    ]
    rfs = [layer["rf"] for layer in layers]
    assert rfs[:7] == [3, 5, 6, 6, 10, 14, 28]  # max-pool right after RF 5; GAP sees the whole image


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match="Model_1, Model_2"):
        create_model("Model_99")


def test_reference_schedule_is_lambda_lr_0_65():
    recipe = get_entry("Model_6").recipe
    assert lr_at(recipe, 0) == pytest.approx(0.01)
    assert lr_at(recipe, 3) == pytest.approx(0.01 * 0.65**3)
    assert lr_at(Recipe(schedule="step", lr=0.1, gamma=0.1, step_size=6), 6) == pytest.approx(0.01)


def test_recipe_round_trips_and_rejects_unknown_fields():
    recipe = get_entry("Model_6").recipe
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(RecipeError, match=r"unknown recipe field.*valid: epochs, batch_size"):
        recipe.with_overrides(learning_rate=1)


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="sgdd"), "valid: sgd, adam"),
    (dict(schedule="cosine"), "valid: constant, exp, step, onecycle"),
    (dict(lr=0.0), "must be positive"),
    (dict(lr=1e39), "must be finite"),
    (dict(batch_size=2.5), "must be a int"),
    (dict(nesterov="yes"), "must be a bool"),
    (dict(ema=1.0), "ema must be"),
    (dict(distill=0.5), "a teacher needs distill"),
    (dict(teacher_cache=True), "needs a teacher"),
    (dict(dropout=1.0), "dropout must be"),
])
def test_a_recipe_validates_itself_when_built(bad, message):
    with pytest.raises(RecipeError, match=message):
        Recipe(**bad)


def test_every_named_recipe_is_used_and_the_old_record_form_loads():
    assert {e.recipe_name for e in REGISTRY.values()} == set(RECIPES)
    old = {**get_entry("Model_41").recipe.to_dict(), "kernels": "fast+pool", "channels_last": True,
           "dropout_impl": "torch", "eval_batch_size": 1000}  # speed settings, as records before the redesign kept them
    assert Recipe.from_dict(old) == get_entry("Model_41").recipe


def test_a_network_without_dropout_layers_refuses_a_recipe_with_dropout():
    with pytest.raises(RecipeError, match="has no dropout layers"):
        get_entry("Model_9").build(get_entry("Model_9").recipe.with_overrides(dropout=0.1))


@pytest.mark.parametrize("p", [0.05, 0.5])  # drawn as positions (p <= SPARSE_UP_TO) and as 16-bit masks
def test_fast_dropout_drops_p_and_keeps_the_mean(p):
    from tinymnist.fast.dropout import FastDropout, use_fast_dropout

    torch.manual_seed(0)
    drop = FastDropout(p).train()
    y = drop(torch.ones(64, 16, 24, 24))
    assert (y == 0).float().mean().item() == pytest.approx(p, abs=0.002)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    # channels-last activations and a gradient laid out otherwise: the same elements dropped both ways
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = drop(x)
    grad = torch.randn(4, 3, 5, 5)
    y.backward(grad)
    kept = y != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.allclose(y[kept], x[kept] / (1 - p)) and torch.allclose(x.grad, kept * grad / (1 - p))
    assert torch.equal(drop.eval()(x), x)
    model = use_fast_dropout(create_model("Model_6"))
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 6


def test_bernoulli_positions_are_independent_draws_of_probability_p():
    from tinymnist.fast.dropout import bernoulli_positions

    torch.manual_seed(0)
    n, p = 2_000_000, 0.05
    picked = torch.zeros(n, dtype=torch.bool).index_fill_(0, bernoulli_positions(n, p), True)
    assert picked.float().mean().item() == pytest.approx(p, abs=0.001)
    # after a picked position, the next one is picked with probability p again (no clumping, no spacing)
    assert picked[1:][picked[:-1]].float().mean().item() == pytest.approx(p, abs=0.005)
    # drawn a few gaps at a time (many rounds of drawing again): still p at every position, independently
    rounds = torch.stack([torch.zeros(40).index_fill_(0, bernoulli_positions(40, 0.2, draws=2), 1)
                          for _ in range(5000)])
    assert torch.allclose(rounds.mean(0), torch.full((40,), 0.2), atol=0.03)
    assert rounds[:, 1:][rounds[:, :-1] == 1].mean().item() == pytest.approx(0.2, abs=0.015)
    positions = bernoulli_positions(1000, 0.3)
    assert (positions[1:] > positions[:-1]).all() and positions.min() >= 0 and positions.max() < 1000
    assert len(bernoulli_positions(0, 0.1)) == 0


@pytest.mark.artifacts
@pytest.mark.parametrize("name", MODELS)
def test_committed_records_were_made_with_the_models_recipe_and_size(name):
    """A record in results/ stands for its model only while the registry still trains that model that way."""
    records = sorted((Path(__file__).resolve().parent.parent / "results" / name).glob("seed*.json"))
    if not records:  # a new step before its runs: nothing to check, and the summary says so
        pytest.skip(f"{name} has no records in results/")
    for path in records:
        record = json.loads(path.read_text())
        assert Recipe.from_dict(record["recipe"]) == get_entry(name).recipe, path.name
        assert record["params"] == count_params(create_model(name)), path.name
