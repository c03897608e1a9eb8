"""Which speed options `bench --options` times depends on the recipe (no timing here: benchmarks are not tests)."""

import pytest

from tinymnist.bench import option_variants
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
    layout = "NCHW instead of channels_last" if recipe.channels_last else "+ channels_last"
    assert any(layout in label for label in labels)
    assert not any(f"batch {recipe.batch_size}" in label for label in labels[1:])  # no variant repeats the recipe's batch


@pytest.mark.parametrize("name", ["Model_11", "Model_26", "Model_31"])
def test_option_variants_time_every_other_kernels_setting(name):
    recipe = get_entry(name).recipe
    _, _, variants = option_variants(recipe)
    kernels = [overrides["kernels"] for _, overrides, *_ in variants if "kernels" in overrides]
    assert sorted(kernels) == sorted(k for k in ("torch", "fast", "fast+pool") if k != recipe.kernels)
