"""The user's own networks, first-class: a network named as `path/to/file.py:NAME` or `package.module:NAME`
found and imported (the only place the user's code is imported), its `--model-arg`s typed from its signature,
checked to be a digit classifier (`check_network`), and run so that its failures are its own, in one line
(`forward`).

`model.resolve` turns such a reference into an `Entry` of the registry; a checkpoint never runs this code.
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

from .errors import TinyMnistError
from .nets import count_params


class ModelCodeError(TinyMnistError):
    """The user's network cannot be found, built or run as a digit classifier."""


class UserNetworkError(ModelCodeError):
    """The user's network failed while it ran (raised, or returned something else than class scores)."""


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


def source_file(obj) -> str | None:
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


# --- finding the user's network, and its arguments -------------------------------------------------------


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


def find_factory(ref: str) -> tuple[Callable[..., nn.Module], str]:
    """What `ref` (`path/to/file.py:NAME` or `package.module:NAME`) names, an nn.Module subclass or a function
    returning a module, and the SHA-256 of the source that defines it."""
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
    return factory, digest


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


# --- checking it: a digit classifier the engine can train ------------------------------------------------


def check_network(net: nn.Module, name: str = "the network", file: str | None = None) -> nn.Module:
    """A digit classifier ready for the engine: `net` checked to take (B, 1, 28, 28) and return (B, 10)
    float32, followed by log-softmax when what it returns are class scores rather than log-probabilities, and
    marked as the user's (`forward`: its failures name `file`, by default the one defining its forward)."""
    if not isinstance(net, nn.Module):
        raise ModelCodeError(f"{name} returned a {type(net).__name__}, not an nn.Module")
    if count_params(net) == 0:
        raise ModelCodeError(f"{name} has no trainable parameters")
    file = file or source_file(type(net))
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
