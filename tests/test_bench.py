"""Which speed options `bench --options` times depends on the recipe and the runtime (no timing here:
benchmarks are not tests)."""

import pytest

from tinymnist.bench import option_variants
from tinymnist.model import get_entry
from tinymnist.runtime import KERNELS, default_runtime

CPU = default_runtime("cpu")


@pytest.mark.parametrize("name", ["Model_6", "Model_11"])
def test_option_variants_follow_the_recipe(name):
    recipe = get_entry(name).recipe
    variants = option_variants(recipe, CPU)
    labels = [label for label, *_ in variants]
    assert labels[0].startswith(f"batch {recipe.batch_size}")
    assert len(set(labels)) == len(labels)
    for _, recipe_changes, runtime_changes, *_ in variants:
        recipe.with_overrides(**recipe_changes)  # every variant is a valid recipe and runtime
        CPU.with_overrides(**runtime_changes)
    has_dropout = recipe.dropout > 0
    assert any("dropout" in label.lower() for label in labels[1:]) == has_dropout
    assert any("NCHW instead of channels_last" in label for label in labels)
    assert not any(f"batch {recipe.batch_size}" in label for label in labels[1:])  # no variant repeats its batch


@pytest.mark.parametrize("name", ["Model_6", "Model_11", "Model_31"])
def test_option_variants_time_every_kernels_setting(name):
    variants = option_variants(get_entry(name).recipe, CPU)
    kernels = {CPU.with_overrides(**runtime_changes).kernels for _, _, runtime_changes, *_ in variants}
    assert kernels == set(KERNELS)


def test_the_cpu_runtime_is_the_fast_one_and_other_devices_get_pytorchs_own():
    assert (CPU.dropout, CPU.kernels, CPU.channels_last) == ("fast", "fast+pool", True)
    assert default_runtime("cuda").kernels == "torch" and default_runtime("mps").dropout == "torch"
