"""Which speed options `bench --options` times depends on the recipe (no timing here: benchmarks are not tests)."""

import pytest

from tinymnist.bench import option_variants, project_settings
from tinymnist.model import get_entry


@pytest.mark.parametrize("name", ["Model_6", "Model_11"])
def test_option_variants_follow_the_recipe(name):
    recipe = get_entry(name).recipe
    start, fast, variants = option_variants(recipe)
    labels = [label for label, *_ in variants]
    assert labels[0].startswith(f"as the recipe: batch {recipe.batch_size}")
    assert len(set(labels)) == len(labels)
    for label, overrides, tweak, autocast in variants:
        recipe.with_overrides(**overrides)  # every variant is a valid recipe
    has_dropout = recipe.dropout > 0
    assert any("dropout" in label.lower() and "FastDropout" not in label for label in labels[1:]) == has_dropout
    assert any(overrides == fast for _, overrides, *_ in variants[1:])  # the project's settings are timed
    assert any("NCHW instead of channels_last" in label for label in labels)
    assert not any(f"batch {recipe.batch_size}" in label for label in labels[1:])  # no variant repeats the recipe's batch


@pytest.mark.parametrize("name", ["Model_6", "Model_11", "Model_26", "Model_31"])
def test_option_variants_time_every_kernels_setting(name):
    recipe = get_entry(name).recipe
    _, _, variants = option_variants(recipe)
    kernels = {recipe.with_overrides(**overrides).kernels for _, overrides, *_ in variants}
    assert kernels == {"torch", "fast", "fast+pool"}


@pytest.mark.parametrize("name", ["Model_6", "Model_7", "Model_26", "Model_35"])
def test_project_settings_keep_faster_kernels_and_change_nothing_else(name):
    recipe = get_entry(name).recipe
    settings = project_settings(recipe)
    assert settings["dropout_impl"] == "fast" and settings["channels_last"]
    assert settings["kernels"] == ("fast" if recipe.kernels == "torch" else recipe.kernels)
    fast = recipe.with_overrides(**settings)
    assert fast.with_overrides(dropout_impl=recipe.dropout_impl, channels_last=recipe.channels_last,
                               kernels=recipe.kernels) == recipe  # the network's training is otherwise the recipe's
