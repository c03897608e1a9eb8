"""The model progression, `Model_1` ... `Model_N`: each step of the exercise is one entry here; and the
user's own networks, named as `path/to/file.py:NAME` or `package.module:NAME`.

An entry names a network from `nets.py` with its arguments, a recipe from `recipes.py` by name, and what the
step set out to do in one line. Its Target / Results / Analysis are in docs/steps.md. A new step is one
`Entry` in `ENTRIES` (plus a network in `nets.py` only if its shape is new). `resolve` turns any model
reference into an `Entry`, the user's code included; nothing else imports the user's code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import preprocess
from .errors import TinyMnistError
from .judge import HOLD, TINY_HOLD, BudgetError, check_param_budget  # noqa: F401 (BudgetError: the API's)
from .nets import early_pool_net, late_pool_net, pool_first_net, reference_net, wide_net
from .recipes import Recipe, RecipeError, get_recipe


class UnknownModelError(TinyMnistError):
    pass


class ModelCodeError(TinyMnistError):
    """The user's network cannot be found, built or run as a digit classifier."""


class UserNetworkError(ModelCodeError):
    """The user's network failed while it ran (raised, or returned something else than class scores)."""


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
        return net if self.source is None else check_network(net, self.name, _source_file(self.net))

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
                raise ModelCodeError(f"{self.name}: building it raised {said(e, _source_file(self.net))}") from e
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


# --- the user's own networks ----------------------------------------------------------------------------


class ScoresAsLogProbs(nn.Module):
    """A user's network that returns class scores, followed by log-softmax: the engine works on log-probabilities."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.net(x)
        if not isinstance(scores, torch.Tensor) or scores.dtype != x.dtype:  # log_softmax fails on integers
            raise UserNetworkError(_output_problem(self, scores, x))
        return torch.log_softmax(scores, dim=1)


# --- where the user's network runs: its failures are the user's, in one line ------------------------------

USER = "_tinymnist_user"  # the attribute, set by `check_network`, that marks a user's network for `forward`


@dataclass(frozen=True)
class UserCode:
    name: str  # the network as the user named it (file.py:NAME)
    file: str | None  # the file that defines it: its frames in a traceback say where the network failed


def _source_file(obj) -> str | None:
    """The file that defines a user's network (a function, or a class's forward); None for torch's own."""
    code = getattr(obj if inspect.isfunction(obj) else getattr(obj, "forward", None), "__code__", None)
    if code is None:
        return None
    file = os.path.realpath(code.co_filename)
    return None if file.startswith(os.path.dirname(os.path.realpath(torch.__file__))) else file


def said(e: BaseException, file: str | None) -> str:
    """An exception from the user's code in one line: its type, its message's first line and the last line
    of `file` in its traceback."""
    text = str(e).strip().splitlines()
    message = f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
    frames = [f for f in traceback.extract_tb(e.__traceback__) if file and os.path.realpath(f.filename) == file]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{message}{where}; TINYMNIST_DEBUG=1 prints its traceback"


def _described(out, x: torch.Tensor) -> str:
    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}"
    kind = "" if out.dtype == x.dtype else f"{str(out.dtype).removeprefix('torch.')} "
    return f"{kind}{tuple(out.shape)}"


def _output_problem(model: nn.Module, out, x: torch.Tensor) -> str:
    user = model.__dict__.get(USER) or UserCode("the network", None)
    mode = "in training" if model.training else "in evaluation"
    return (f"your network {user.name} returned {_described(out, x)} {mode}; expected "
            f"{str(x.dtype).removeprefix('torch.')} ({len(x)}, 10) class scores or log-probabilities")


def forward(model: nn.Module, x: torch.Tensor, check: bool = False) -> torch.Tensor:
    """`model(x)`. A user's network (marked by `check_network`) that raises fails with one line naming the
    file and line; with `check` (the first batch of each mode is enough), what it returns must be (B, 10) of
    the input's dtype."""
    user = model.__dict__.get(USER)
    if user is None:
        return model(x)
    try:
        out = model(x)
    except TinyMnistError:
        raise
    except Exception as e:  # whatever the user's code raises is reported as theirs
        mode = "in training" if model.training else "in evaluation"
        raise UserNetworkError(f"your network {user.name} failed {mode}: {said(e, user.file)}") from e
    if check and not (isinstance(out, torch.Tensor) and out.dtype == x.dtype and tuple(out.shape) == (len(x), 10)):
        raise UserNetworkError(_output_problem(model, out, x))
    return out


def _load_code(where: str) -> tuple[Any, str]:
    """The module named by `where` (a .py file or a dotted module name) and its source's SHA-256."""
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ModelCodeError(f"model file {where} does not exist or is not a file")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        spec = importlib.util.spec_from_file_location(f"tinymnist_user_{digest[:16]}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # its own imports of files beside it
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # whatever the user's file raises, it is reported as theirs
            raise ModelCodeError(f"{where}: importing it raised {said(e, os.path.realpath(path))}") from e
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module, digest
    try:
        module = importlib.import_module(where)
    except Exception as e:  # noqa: BLE001
        raise ModelCodeError(f"cannot import module {where!r} ({type(e).__name__}: {e})") from None
    file = getattr(module, "__file__", None)
    return module, hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else ""


def _parse_arg(text: str, default: Any) -> Any:
    """A --model-arg value, typed like the parameter's default (or as a Python literal, else a string)."""
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, str):
        return text
    if isinstance(default, (tuple, list)):
        value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
        return type(default)(value)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def typed_args(factory: Callable, given: dict[str, str], name: str) -> dict[str, Any]:
    """`--model-arg key=value` pairs typed from the factory's signature; an unknown key lists the valid ones."""
    target = factory.__init__ if isinstance(factory, type) else factory
    params = {k: p for k, p in inspect.signature(target).parameters.items()
              if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())
    args = {}
    for key, text in given.items():
        if key not in params and not takes_any:
            raise ModelCodeError(f"{name} has no argument {key!r}; valid: {', '.join(params) or 'none'}")
        default = params[key].default if key in params else inspect.Parameter.empty
        try:
            args[key] = _parse_arg(text, None if default is inspect.Parameter.empty else default)
        except (ValueError, SyntaxError) as e:
            raise ModelCodeError(f"--model-arg {key}={text}: {e} (like its default, {default!r})") from None
    return args


def check_network(net: nn.Module, name: str = "the network", file: str | None = None) -> nn.Module:
    """A digit classifier ready for the engine: `net` checked to take (B, 1, 28, 28) and return (B, 10)
    float32, followed by log-softmax when what it returns are class scores rather than log-probabilities, and
    marked as the user's (`forward`: its failures name `file`, by default the one defining its forward)."""
    if not isinstance(net, nn.Module):
        raise ModelCodeError(f"{name} returned a {type(net).__name__}, not an nn.Module")
    if count_params(net) == 0:
        raise ModelCodeError(f"{name} has no trainable parameters")
    file = file or _source_file(type(net))
    was_training = net.training
    net.eval()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as e:
        raise ModelCodeError(f"{name} failed on a (2, 1, 28, 28) batch: {said(e, file)}") from e
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10) or out.dtype != x.dtype:
        raise ModelCodeError(f"{name} returned {_described(out, x)} for a (2, 1, 28, 28) batch; expected (2, 10) "
                             "float32 class scores or log-probabilities")
    is_log_probs = bool(torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-4))
    checked = net if is_log_probs else ScoresAsLogProbs(net)
    setattr(checked, USER, UserCode(name, file))
    return checked


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
    where, _, attr = ref.rpartition(":")
    if not where or not attr.isidentifier():
        raise ModelCodeError(f"model reference {ref!r}: expected path/to/file.py:NAME or package.module:NAME")
    module, digest = _load_code(where)
    factory = getattr(module, attr, None)
    if factory is None:
        found = sorted(k for k, v in vars(module).items() if not k.startswith("_") and getattr(
            v, "__module__", None) == module.__name__ and (inspect.isfunction(v) or (
                isinstance(v, type) and issubclass(v, nn.Module))))
        raise ModelCodeError(f"{where} has no {attr!r}; it defines: {', '.join(found) or 'no modules or functions'}")
    if not ((isinstance(factory, type) and issubclass(factory, nn.Module)) or inspect.isfunction(factory)):
        raise ModelCodeError(f"{ref} is a {type(factory).__name__}, not an nn.Module subclass or a function")
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


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def log_probs(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Log-probabilities (N, 10) for uint8 images (N, 28, 28), in eval mode."""
    model.eval()
    return torch.cat([forward(model, preprocess(images[i : i + batch_size]), check=i == 0)
                      for i in range(0, len(images), batch_size)])
