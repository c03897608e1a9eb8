"""The model progression, `Model_1` ... `Model_N`: each step of the exercise is one entry here; the roles; and
`resolve`, which turns any model reference into an `Entry`: a registered name or role, or the user's own
network (`path/to/file.py:NAME`, found and checked by `usernet.py`).

An entry names a network from `nets.py` with its arguments, a recipe from `recipes.py` by name, and what the
step set out to do in one line. Its Target / Results / Analysis are in docs/steps.md. A new step is one
`Entry` in `ENTRIES` (plus a network in `nets.py` only if its shape is new).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import preprocess
from .errors import TinyMnistError
from .judge import HOLD, TINY_HOLD, BudgetError, check_param_budget  # noqa: F401 (BudgetError: the API's)
from .nets import count_params, early_pool_net, late_pool_net, pool_first_net, reference_net, wide_net
from .recipes import Recipe, RecipeError, get_recipe
from .usernet import (  # noqa: F401 (ScoresAsLogProbs, UserNetworkError: the API's)
    ModelCodeError,
    ScoresAsLogProbs,
    UserNetworkError,
    check_network,
    find_factory,
    forward,
    said,
    source_file,
    typed_args,
)


class UnknownModelError(TinyMnistError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    net: Callable[..., nn.Module]  # a network builder from nets.py
    args: dict[str, Any]  # its arguments
    recipe_name: str  # a key of recipes.RECIPES
    target: str  # what this step set out to do, in one line
    hold: int = HOLD  # its target: test accuracy >= judge.TARGET in each of the last `hold` epochs
    source: dict[str, Any] | None = None  # a user's network: {"ref", "sha256", "args"}, kept in records

    @property
    def recipe(self) -> Recipe:
        return get_recipe(self.recipe_name)

    @property
    def slug(self) -> str:
        """The entry's folder name in a results folder: the name, or for user code `file.NAME`."""
        if self.source is None:
            return self.name
        where, _, attr = self.name.rpartition(":")
        return f"{Path(where).stem if where.endswith('.py') else where}.{attr}"

    @property
    def role(self) -> str | None:
        return next((role for role, name in ROLES.items() if name == self.name), None)

    def build(self, recipe: Recipe | None = None) -> nn.Module:
        """The network, with the recipe's dropout where the network has dropout layers; a user's network
        checked (`check_network`)."""
        net = self._make(recipe or self.recipe)
        return net if self.source is None else check_network(net, self.name, source_file(self.net))

    def params(self, recipe: Recipe | None = None) -> int:
        """The network's trainable parameters, counted on the meta device, where building it allocates no
        memory (a user's network that cannot be built there is built for real)."""
        try:
            with torch.device("meta"):
                return count_params(self._make(recipe or self.recipe))
        except Exception:  # the user's code may need real tensors to build: build it for real
            if self.source is None:
                raise
        return count_params(self.build(recipe))

    def _make(self, recipe: Recipe) -> nn.Module:
        if self.source is not None:
            if recipe.dropout:
                raise RecipeError(f"dropout is a recipe field of the registered networks; give {self.name} its "
                                  "dropout as a --model-arg")
            try:
                return self.net(**self.args)
            except Exception as e:
                raise ModelCodeError(f"{self.name}: building it raised {said(e, source_file(self.net))}") from e
        if "dropout" in inspect.signature(self.net).parameters:
            return self.net(**self.args, dropout=recipe.dropout)
        if recipe.dropout:
            raise RecipeError(f"{self.name}'s network ({self.net.__name__}) has no dropout layers; "
                              f"dropout must be 0, not {recipe.dropout}")
        return self.net(**self.args)


# the tiny models hold over the last 3 epochs with under 4,000 parameters (steps 8 and 12 to 21)
TINY = dict(hold=TINY_HOLD)
EARLY = (8, 12, 16, 16, 16)  # Model_9's channels
SEPARABLE = dict(block="separable")

ENTRIES = [
    # the reference progression
    Entry("Model_1", wide_net, {}, "base",
          "basic structure: max-pool at RF 5, up to 32 channels, no BN, dropout or augmentation"),
    Entry("Model_2", reference_net, dict(bn=False), "base",
          "parameter reduction below 10k, keeping max-pool at RF 5, 1x1 expansion after GAP"),
    Entry("Model_3", reference_net, dict(bn=True), "base",
          "BatchNorm after every ReLU for faster, steadier convergence"),
    Entry("Model_4", reference_net, dict(bn=True), "dropout",
          "dropout (5 %) after every convolution but the last, against overfitting"),
    Entry("Model_5", reference_net, dict(bn=True), "augmented",
          "augmentation: random rotation, affine and brightness/contrast jitter"),
    Entry("Model_6", reference_net, dict(bn=True), "reference",
          "LR schedule: lr 0.01 x 0.65^epoch, to settle into a minimum in the last epochs"),
    # beyond the reference
    Entry("Model_7", late_pool_net, dict(channels=(8, 12, 16, 16, 16)), "one-cycle",
          "capacity moved from the 1x1 layers after GAP into a fifth 3x3 convolution; one-cycle SGD, no dropout"),
    Entry("Model_8", late_pool_net, dict(channels=(6, 12, 12, 14)), "one-cycle",
          "tiny: under 4,000 parameters with the same layout as Model_7, thinner everywhere", **TINY),
    Entry("Model_9", early_pool_net, dict(channels=EARLY), "averaged", "max-pool straight after the first "
          "convolution, the width after it; evaluate a moving average of the weights"),
    Entry("Model_10", early_pool_net, dict(channels=EARLY), "averaged-low-decay",
          "Model_9 with a fifth of its weight decay, because it underfits"),
    Entry("Model_11", early_pool_net, dict(channels=EARLY), "small-batch",
          "Model_9 with batch 64: twice the optimizer steps in the same 15 epochs"),
    Entry("Model_12", early_pool_net, dict(channels=(8, 8, 10, 12, 12)), "averaged-low-decay",
          "tiny: Model_10's layout and recipe at under 4,000 parameters", **TINY),
    Entry("Model_13", early_pool_net, dict(channels=(8, 8, 10, 12, 12)), "taught",
          "tiny: Model_12 taught by Model_11 (knowledge distillation), at batch 64", **TINY),
    Entry("Model_14", early_pool_net, dict(channels=(8, 16, 24, 32, 36), **SEPARABLE), "taught", "tiny: "
          "depthwise-separable convolutions after the pool, twice to three times the channels, taught as Model_13",
          **TINY),
    Entry("Model_15", early_pool_net, dict(channels=(8, 16, 24, 32, 36), **SEPARABLE, act="silu"), "taught",
          "tiny: Model_14 with SiLU instead of ReLU", **TINY),
    Entry("Model_16", early_pool_net, dict(channels=(8, 16, 24, 32, 36), **SEPARABLE), "taught-32",
          "tiny: Model_14 at batch 32: twice the optimizer steps again, in the same 15 epochs", **TINY),
    Entry("Model_17", early_pool_net, dict(channels=(8, 16, 24, 32, 36), **SEPARABLE), "ensemble-taught",
          "tiny: Model_14 taught by three runs of Model_11 at once (a teacher ensemble)", **TINY),
    Entry("Model_18", early_pool_net, dict(channels=(8, 16, 24, 32, 36), **SEPARABLE), "ensemble-taught-mild",
          "tiny: Model_17 with milder augmentation", **TINY),
    Entry("Model_19", early_pool_net, dict(channels=(8, 16, 24, 32, 40), **SEPARABLE), "ensemble-taught",
          "tiny: Model_17 with the last layer widened to use the whole 4,000-parameter budget", **TINY),
    Entry("Model_20", early_pool_net, dict(channels=(8, 16, 24, 32, 40), **SEPARABLE), "ensemble-taught-mild",
          "tiny: Model_19's network with Model_18's milder augmentation", **TINY),
    Entry("Model_21", early_pool_net, dict(channels=(12, 16, 24, 32, 36), **SEPARABLE), "ensemble-taught-mild",
          "tiny: Model_20 with the first convolution widened to 12 channels, the last layer back to 36", **TINY),
    Entry("Model_22", early_pool_net, dict(channels=EARLY), "scaled-128",
          "Model_11's training at batch 128: learning rate and weight average scaled with the batch"),
    Entry("Model_23", pool_first_net, dict(channels=EARLY), "averaged",
          "Model_9's network and recipe, pooled before the first ReLU and BatchNorm"),
    Entry("Model_24", pool_first_net, dict(channels=EARLY), "large-batch",
          "Model_23 at batch 256: learning rate and weight average scaled with the batch"),
    Entry("Model_25", pool_first_net, dict(channels=EARLY), "small-batch",
          "Model_23's network with Model_11's recipe: batch 64"),
    Entry("Model_26", early_pool_net, dict(channels=EARLY), "small-batch",
          "Model_11 again (same network and recipe), its runs made with the fast CPU kernels"),
    Entry("Model_27", early_pool_net, dict(channels=EARLY), "large-batch",
          "Model_24's batch-256 recipe on Model_9's network: BatchNorm at full resolution again"),
    Entry("Model_28", early_pool_net, dict(channels=EARLY), "large-batch-low-decay",
          "Model_27 with a fifth of the weight decay, as Model_10 has, for a narrower spread over seeds"),
    Entry("Model_29", early_pool_net, dict(channels=EARLY), "large-batch-0.05",
          "Model_27 at Model_9's learning rate: smaller steps at batch 256"),
    Entry("Model_30", early_pool_net, dict(channels=EARLY), "large-batch-high-decay", "Model_29 with the weight "
          "decay scaled with the batch: Model_11's decay per epoch at a quarter of its steps"),
    Entry("Model_31", early_pool_net, dict(channels=EARLY), "large-batch-0.07",
          "Model_27 at the learning rate between Models 27 and 29 (square-root scaling)"),
    Entry("Model_32", early_pool_net, dict(channels=EARLY), "clean-3",
          "Model_29 with its last 3 epochs on the digits as they are, without augmentation"),
    Entry("Model_33", early_pool_net, dict(channels=EARLY), "clean-5",
          "Model_32 with its last 5 epochs clean: every epoch the target measures"),
    Entry("Model_34", early_pool_net, dict(channels=EARLY), "clean-end", "Model_33 at Model_31's learning rate, 0.07"),
    Entry("Model_35", early_pool_net, dict(channels=EARLY), "cached-teacher",
          "Model_34 taught by three Model_11 runs, from their outputs computed once on the digits as they are"),
    Entry("Model_36", early_pool_net, dict(channels=EARLY), "cached-teacher-0.9",
          "Model_35 with the distillation weight of the taught tiny models (0.9)"),
    Entry("Model_37", early_pool_net, dict(channels=EARLY), "cached-teacher-lr0.1",
          "Model_35 at learning rate 0.1 (Model_27's)"),
    Entry("Model_38", early_pool_net, dict(channels=EARLY), "cached-teacher-lr0.05",
          "Model_35 at learning rate 0.05 (Model_29's)"),
    Entry("Model_39", early_pool_net, dict(channels=EARLY), "label-smoothing",
          "Model_34 with label smoothing (0.1): soft targets at no cost, without a teacher"),
    Entry("Model_40", early_pool_net, dict(channels=EARLY), "ghost", "Model_27 with ghost batch norm: BatchNorm "
          "statistics over groups of 64 images, as at Model_11's batch"),
    Entry("Model_41", early_pool_net, dict(channels=EARLY), "ghost-clean-end", "Model_34 with ghost batch norm: "
          "BatchNorm statistics over groups of 64 images, as at Model_11's batch"),
]
REGISTRY: dict[str, Entry] = {e.name: e for e in ENTRIES}

# The one place roles are decided. final: of the models that meet the final target (>= 99.40 % held over the
# last 5 epochs on 5 of 5 seeds with a mean of at least 99.50 %), the one that trains in the fewest optimizer
# steps, teachers' runs counted; tiny: the smallest that holds its last 3 epochs on every seed under 4,000
# parameters. docs/steps.md shows how each role holder does against its target, from the records.
ROLES: dict[str, str] = {"final": "Model_41", "tiny": "Model_21"}


def resolve(ref: str, model_args: dict[str, str] | None = None, recipe_name: str | None = None, *,
            max_params: int | None = None, check: bool = True) -> Entry:
    """A model reference: a registered name or role, or the user's `file.py:NAME` / `package.module:NAME`,
    where NAME is an nn.Module subclass or a function returning a module; `model_args` go to it, typed from
    its signature. A user's network is counted on the meta device and refused over `max_params` before any of
    it is allocated; then (with `check`) built once here, to check it. Its recipe is `recipe_name`, by default
    the final model's."""
    if ":" not in ref:
        if model_args:
            raise ModelCodeError("--model-arg is for a network from your own code (file.py:NAME)")
        return get_entry(ref)
    factory, digest = find_factory(ref)
    where = ref.rpartition(":")[0]
    args = typed_args(factory, dict(model_args or {}), ref)
    entry = Entry(ref, factory, args, recipe_name or get_entry("final").recipe_name, f"a network from {where}",
                  source={"ref": ref, "sha256": digest, "args": args})
    if max_params is not None:  # before the real thing, which --model-arg width=3000000 makes 24 GB
        check_param_budget(ref, entry.params(), max_params)
    if check:
        entry.build()  # fails here, with one line, rather than after the data has loaded
    return entry


def model_names() -> list[str]:
    return list(REGISTRY)


def get_entry(name: str) -> Entry:
    """A model by name, or by role ("final", "tiny")."""
    try:
        return REGISTRY[ROLES.get(name, name)]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid models: {', '.join(REGISTRY)} (or a role: {', '.join(ROLES)})"
        ) from None


def create_model(name: str, recipe: Recipe | None = None) -> nn.Module:
    """Builds a registered model (by name or role); `recipe` (default: its own) gives the dropout."""
    return get_entry(name).build(recipe)


def resolve_name(name: str) -> str:
    """The model name behind a name or a role."""
    return get_entry(name).name


@torch.no_grad()
def log_probs(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Log-probabilities (N, 10) for uint8 images (N, 28, 28), in eval mode."""
    model.eval()
    return torch.cat([forward(model, preprocess(images[i : i + batch_size]), check=i == 0)
                      for i in range(0, len(images), batch_size)])
