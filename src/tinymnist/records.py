"""Run records, checkpoints and resumable states on disk: atomic JSON records, weights-only checkpoints, and
reading them back without running any code.

A record is `results/<MODEL>/seed<SEED>.json`; its checkpoint is the `.pt` file beside it. Both are
written to a temporary file first and renamed into place, so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import io
import json
import math
import os
import pickle
import re
import stat
import subprocess
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import TinyMnistError
from .files import atomic_write_bytes, describe_missing, write_failure
from .judge import is_percent
from .model import REGISTRY, ROLES, Entry, UnknownModelError, get_entry
from .recipes import RUNTIME_FIELDS, Recipe

RESULTS_DIR = Path("results")
MAX_NESTING = 16  # containers within containers in a checkpoint or state: a state dict's are 5 deep


class CheckpointError(TinyMnistError):
    pass


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as e:  # a full disk, a read-only folder, a target that is a device: one line, not a traceback
        raise CheckpointError(write_failure(path, e)) from None


def write_json(path: Path, obj) -> None:
    _write(Path(path), (json.dumps(obj, indent=1) + "\n").encode())


def record_path(out: Path, model: str, seed: int) -> Path:
    return Path(out) / model / f"seed{seed}.json"


@functools.cache  # the code a process runs is the code it loaded: asked once, early, by `train`
def git_commit() -> str | None:
    """The commit of the source tree this package runs from: "<sha>", or "<sha>+dirty" when tracked files of
    the package's folder had uncommitted changes; None only outside a git checkout (an installed copy).

    Git runs in the package's own folder, whatever the current directory, and is told to trust it: a
    checkout owned by another user (a shared machine, a container) otherwise makes `git` refuse to answer."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            # the checkout is the one this code runs from, so trusting its git config adds no new risk
            ["git", "-c", "safe.directory=*", *args],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        if not sha:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def save_checkpoint(path: str | os.PathLike, model_name: str, model: nn.Module, recipe: Recipe, **meta) -> None:
    """Final weights with the model name and recipe: only tensors and plain data, loadable weights-only."""
    path = Path(path)
    buf = io.BytesIO()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # clone: not the flat storage
    torch.save({"model": model_name, "recipe": recipe.to_dict(), "state_dict": state, **meta}, buf)
    _write(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", model: Entry | None = None,
                    force: bool = False, warn=None) -> tuple[str, nn.Module, dict]:
    """Loads a checkpoint safely (weights only: no pickled code runs) and rebuilds its model.

    `path` may also be a model name or role, meaning the weights shipped with the package. A checkpoint of a
    network from the user's code names that code but never runs it: the caller names the code again
    (`model`, resolved from `--model file.py:NAME`), and the stored reference, file hash and arguments must
    agree with it; with `force`, a difference is passed to `warn` instead of refused.
    """
    path = resolve_checkpoint(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {describe_missing(path)}")
    ckpt = _torch_load(path, "checkpoint", device)
    if not isinstance(ckpt, dict) or not {"model", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a tinymnist checkpoint (no model name and state_dict)")
    name = ckpt["model"]
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: not a tinymnist checkpoint (its model name is a {type(name).__name__})")
    if ckpt.get("source") is not None or ":" in name:
        entry = _user_entry(path, ckpt, model, force, warn)
    else:
        try:
            entry = get_entry(name)
        except UnknownModelError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if model is not None and model.name != entry.name:
            raise CheckpointError(f"{path} holds {entry.name}, not {model.name}")
    try:
        recipe = Recipe.from_dict(ckpt["recipe"]) if ckpt.get("recipe") else entry.recipe
        model = entry.build(recipe)
    except TinyMnistError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except TypeError as e:  # a recipe field of the wrong kind
        raise CheckpointError(f"{path}: its recipe is not a valid one ({e})") from None
    load_weights(model, ckpt["state_dict"], f"{path}: weights", entry.name)
    return entry.name, model.to(device), ckpt


def _user_entry(path: Path, ckpt: dict, model: Entry | None, force: bool, warn) -> Entry:
    """The user's network a checkpoint was made from, as the user names it again; compared, never imported."""
    stored = ckpt.get("source") if isinstance(ckpt.get("source"), dict) else {}
    ref = str(stored.get("ref") or ckpt["model"])
    if model is None or model.source is None:
        raise CheckpointError(f"{path} holds a network from your own code ({ref}); name that code with --model "
                              f"{ref} to load it (a checkpoint never runs code)")
    differences = [f"{what}: checkpoint {stored.get(key)!r}, --model {model.source[key]!r}"
                   for key, what in (("ref", "reference"), ("sha256", "file SHA-256"), ("args", "arguments"))
                   if stored.get(key) != model.source[key]]
    if differences and not force:
        raise CheckpointError(f"{path} was made from other code than --model {model.name} ({'; '.join(differences)}); "
                              "--force loads it anyway")
    if differences and warn is not None:
        warn(f"warning: {path} was made from other code ({'; '.join(differences)}); loading it as --force says")
    return model


def _reason(e: Exception) -> str:
    """The part of torch.load's error that describes the file, without its advice to load it unsafely."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    first = lines[0]
    for advice in (" Please ", "Check the documentation", "weights_only"):
        first = first.split(advice)[0].strip() or first
    return first if "weights_only" not in first else type(e).__name__


def _torch_load(path: Path, what: str, device="cpu"):
    """What a checkpoint or state file holds, read weights-only, after its archive's declared sizes are
    checked (`_check_archive`), and checked to nest at most MAX_NESTING containers deep."""
    _check_archive(path, what)
    try:
        with warnings.catch_warnings():  # e.g. about pickle protocols: the user can do nothing about it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, not a plain weights {what} ({_reason(e)})") from None
    except Exception as e:  # noqa: BLE001  torch.load raises many kinds of errors on garbage: all mean "not one"
        raise CheckpointError(f"{path}: not a readable {what} ({_reason(e)})") from None
    _check_nesting(obj, path, what)
    return obj


def _check_archive(path: Path, what: str) -> None:
    """torch.save writes a zip archive of uncompressed entries, and torch.load allocates the size an entry
    declares before reading it: an archive whose entries declare more bytes than the file holds (a 2 MB file
    can declare gigabytes) is refused unread, as is a file that is no zip archive (the format before PyTorch
    1.6, which tinymnist never wrote)."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path} {describe_missing(path)}")
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except Exception as e:  # noqa: BLE001  zipfile's errors on a crafted file are many: all mean "not one"
        raise CheckpointError(f"{path}: not a readable {what} (not a zip archive as torch.save writes: "
                              f"{getattr(e, 'strerror', None) or e or type(e).__name__})") from None
    if declared > size:
        raise CheckpointError(f"{path}: not a readable {what} (its entries declare {declared:,} bytes, more than "
                              f"the {size:,} of the file)")


def _check_nesting(obj, path: Path, what: str) -> None:
    """Refuses containers nested more than MAX_NESTING deep (printing or comparing them would recurse)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise CheckpointError(f"{path}: not a tinymnist {what} (it nests containers more than {MAX_NESTING} "
                                  "deep)")
        stack.extend((child, depth + 1) for child in children)


def _dense(t: torch.Tensor) -> bool:
    """A tensor with values, stored element by element: not a sparse, meta or quantized one."""
    return t.layout == torch.strided and not t.is_meta and not t.is_quantized


def load_weights(model: nn.Module, weights, what: str, name: str) -> None:
    """Loads `weights` into `model` after checking them: names, shapes, dtypes, and finite values.

    `what` begins the error message ("FILE: weights"); the message names the tensors that differ.
    """
    if not isinstance(weights, dict) or not all(isinstance(k, str) for k in weights):
        raise CheckpointError(f"{what} are not a dictionary of named tensors")
    expected = model.state_dict()
    problems = [f"{k} missing" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    for k, want in expected.items():
        got = weights.get(k)
        if k not in weights:
            continue
        if not isinstance(got, torch.Tensor):
            problems.append(f"{k} is a {type(got).__name__}, not a tensor")
        elif not _dense(got):
            kind = "meta" if got.is_meta else "quantized" if got.is_quantized else str(got.layout).split(".")[-1]
            problems.append(f"{k} is a {kind} tensor, not a dense tensor of values")
        elif got.shape != want.shape:
            problems.append(f"{k} is {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif got.is_floating_point() != want.is_floating_point() or got.is_complex():
            problems.append(f"{k} is {got.dtype}, expected {want.dtype}")
        elif got.is_floating_point() and not torch.isfinite(got).all():
            problems.append(f"{k} has NaN or infinite values")
        elif k.endswith("running_var") and (got < 0).any():  # a BatchNorm variance: NaN outputs from the square root
            problems.append(f"{k} has negative values (a variance)")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(f"{what} do not fit {name}: {'; '.join(problems[:3])}{more}")
    model.load_state_dict(weights)


def run_identity(limit: int | None, val: int | None, checksums: dict | None) -> dict:
    """What, besides the model and recipe, decides what a run trains on: resuming must not mix runs."""
    return {"limit": limit, "val": val, "data": checksums}


def save_state(path: Path, model_name: str, recipe: Recipe, state: dict, run: dict | None = None) -> None:
    """The resumable state of a run after an epoch (see `engine.training_state`), written atomically."""
    buf = io.BytesIO()
    torch.save({"model_name": model_name, "recipe": recipe.to_dict(), "run": run, **state}, buf)
    _write(path, buf.getvalue())


def _differences(what: dict, wanted: dict, labels: dict[str, str] | None = None) -> list[str]:
    """'--limit 500, not 1000'-style phrases for the keys whose values differ."""
    out = []
    for key in sorted(set(what) | set(wanted), key=str):
        if what.get(key) != wanted.get(key):
            label = (labels or {}).get(key, str(key))
            have, want = what.get(key, "none"), wanted.get(key, "none")
            if isinstance(have, dict) or isinstance(want, dict):
                out.append(f"other {label}")
            else:
                out.append(f"{label} {'none' if have is None else have}, not {'none' if want is None else want}")
    return out


RUN_LABELS = {"limit": "--limit", "val": "--val", "data": "data (checksums differ)"}


def _same_recipe(recipe, want: Recipe) -> bool:
    """Whether a recipe as a file holds it is `want` (older files also hold speed settings, ignored here)."""
    try:
        return Recipe.from_dict(json.loads(json.dumps(recipe))) == Recipe.from_dict(json.loads(json.dumps(
            want.to_dict())))  # both as JSON holds them: it has no tuples
    except (TinyMnistError, TypeError, ValueError):
        return False


def check_same_run(path: Path, what: str, model_name, recipe, run, want_model: str, want_recipe: Recipe,
                   want_run: dict | None) -> None:
    """Refuses to resume or skip a run whose model, recipe or data options differ, naming the differences."""
    if model_name != want_model:
        raise CheckpointError(f"{path} holds {what} of {model_name}, not {want_model}; run without --resume "
                              "to start again")
    if not _same_recipe(recipe, want_recipe):
        wanted = json.loads(json.dumps(want_recipe.to_dict()))  # as a record holds it (JSON has no tuples)
        have = {k: v for k, v in recipe.items() if k not in RUNTIME_FIELDS} if isinstance(recipe, dict) else {}
        diff = _differences(have, wanted)  # older files' speed settings are not differences of recipe
        raise CheckpointError(f"{path} holds {what} of {want_model} with another recipe ({', '.join(diff[:4])}); "
                              "resume with the same model and options, or run without --resume to start again")
    if want_run is not None:
        have = run if isinstance(run, dict) else {}
        want = {k: v for k, v in want_run.items() if k in have or k != "data"}  # records before checksums: no data
        diff = _differences({k: have.get(k) for k in want}, want, RUN_LABELS)
        if diff:
            raise CheckpointError(f"{path} holds {what} of {want_model} made with other options ({', '.join(diff)}); "
                                  "resume with the same options, or run without --resume to start again")


def load_state(path: Path, entry: Entry, recipe: Recipe, run: dict | None = None) -> dict:
    """A saved training state, checked to hold the same run (model, recipe, `run_identity`) and to fit it."""
    model_name = entry.name
    state = _torch_load(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a tinymnist training state (it holds a {type(state).__name__})")
    if run is not None and not isinstance(state.get("run"), dict):
        raise CheckpointError(f"{path} does not say which data and options it was made with (an older tinymnist); "
                              "run without --resume to start again")
    check_same_run(path, "a run", state.get("model_name"), state.get("recipe"), state.get("run"), model_name, recipe,
                   run)
    _check_state(path, state, entry, recipe)
    return state


def _check_state(path: Path, state: dict, entry: Entry, recipe: Recipe) -> None:
    """Restores `state` into a throwaway model and optimizer, so a crafted or damaged state is refused here
    with a line naming the file, not with a traceback from deep inside training."""
    from .engine import make_ema, make_optimizer
    from .runtime import Runtime, apply

    model_name = entry.name
    history = state.get("history")
    if not isinstance(history, list) or not 0 < len(history) <= recipe.epochs or not all(
        isinstance(row, dict) and row.get("epoch") == i + 1 and _finite_number(row.get("test_acc"))
        for i, row in enumerate(history)
    ):
        raise CheckpointError(f"{path}: its history is not a list of the first epochs of {recipe.epochs}")
    rng = state.get("rng")
    if not isinstance(rng, torch.Tensor) or not _dense(rng) or rng.dtype != torch.uint8 or (
            rng.shape != torch.get_rng_state().shape):
        raise CheckpointError(f"{path}: its random number generator state is not a valid one")
    model = apply(entry.build(recipe), recipe, Runtime())
    load_weights(model, state.get("model"), f"{path}: its model weights", model_name)
    optimizer = make_optimizer(model, recipe)
    saved = state.get("optimizer")
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or not isinstance(
        saved.get("param_groups"), list
    ) or len(saved["param_groups"]) != len(fresh["param_groups"]):
        raise CheckpointError(f"{path}: its optimizer state does not fit {model_name}")
    for got, want in zip(saved["param_groups"], fresh["param_groups"]):
        if not isinstance(got, dict) or any(not _same_kind(got.get(k, KeyError), v) for k, v in want.items()
                                            if k != "params"):
            raise CheckpointError(f"{path}: its optimizer settings do not fit {model_name}")
    try:
        optimizer.load_state_dict(saved)
    except Exception as e:  # noqa: BLE001  (the optimizer is freshly built: any error is about the file)
        raise CheckpointError(f"{path}: its optimizer state does not fit {model_name} ({_reason(e)})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for v in optimizer.state.get(p, {}).values():
                if not isinstance(v, torch.Tensor) or not _dense(v) or (v.dim() > 0 and v.shape != p.shape) or (
                    v.is_floating_point() and not torch.isfinite(v).all()
                ):
                    raise CheckpointError(f"{path}: its optimizer state does not fit {model_name}")
    ema = make_ema(model, recipe)
    if ema is not None:
        load_weights(ema, state.get("ema"), f"{path}: its averaged weights", model_name)


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _same_kind(got, want) -> bool:
    """An optimizer setting of the type the optimizer uses (an int may stand for a float)."""
    if want is None or isinstance(want, bool):
        return got is None or isinstance(got, bool) if want is None else isinstance(got, bool)
    if isinstance(want, (int, float)):
        return _finite_number(got)
    if isinstance(want, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and all(map(_same_kind, got, want))
    return type(got) is type(want)


# --- reading records: the one place a record from outside is checked ----------------------------------------

# A record of 15 epochs is about 5 KB and one of 10,000 epochs about 2 MB; parsing JSON costs some 10-30 times
# its size in memory, so the bound keeps a crafted file's cost near 120 MB (a 200 MB record took 1.6-3.2 GB).
MAX_RECORD_BYTES = 4 << 20
MAX_DEPTH = 32  # a record nests 4 deep (record, recipe, augment, value): deeper is no record, and would recurse


def read_json(path: Path, what: str = "record") -> dict:
    """A JSON object from a file from outside, read within bounds: a regular file (a pipe would block) of at
    most MAX_RECORD_BYTES, checked before reading; UTF-8; strict JSON (no NaN, Infinity, 1e400 or integers of
    thousands of digits); nested at most MAX_DEPTH deep (a file deeper than the parser manages is refused too,
    not a RecursionError)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once and is refused below
    except OSError:
        raise CheckpointError(f"{path}: not a readable {what} (it {describe_missing(path)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a readable {what} (it {describe_missing(path)})")
        if st.st_size > MAX_RECORD_BYTES:
            raise CheckpointError(f"{path}: not a {what}: {st.st_size:,} bytes, more than the {MAX_RECORD_BYTES:,} "
                                  "one may have")
        chunks, got = [], 0
        while got <= MAX_RECORD_BYTES:  # no more than the bound, even if the file grows meanwhile
            chunk = os.read(fd, MAX_RECORD_BYTES + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable {what} ({e.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_RECORD_BYTES:
        raise CheckpointError(f"{path}: not a {what}: more than the {MAX_RECORD_BYTES:,} bytes one may have")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float,
                         parse_int=_short_int)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a readable {what} (not UTF-8 text)") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable {what} (nested too deeply)") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a {what} (it holds a JSON {type(obj).__name__}, not an object)")
    if _deeper_than(obj, MAX_DEPTH):
        raise CheckpointError(f"{path}: not a {what} (nested more than {MAX_DEPTH} deep)")
    return obj


def _deeper_than(obj, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` deep; without recursion, so any depth is measured."""
    stack = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > limit:
            return True
        stack += [(v, depth + 1) for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > 30:  # a record's counts have a few digits; 5,000 of them would cost seconds
        raise ValueError(f"{text[:20]}... ({len(text):,} digits) is too large a number")
    return int(text)


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e400 parses as infinity
        raise ValueError(f"{text[:20]} is too large a number")
    return x


def _whole(low: int):
    return lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= low


def _real(low: float):
    return lambda x: _finite_number(x) and x >= low


def _or_null(check):
    return lambda x: x is None or check(x)


def _kind(t: type):
    return lambda x: isinstance(x, t)


PERCENT = (is_percent, "a percentage from 0 to 100")
# field -> (its check, what it should be); what a run writes (run.make_record, engine.fit), each field in range
RECORD_FIELDS = {
    "model": (_kind(str), "a string"),
    "params": (_whole(0), "a whole number >= 0"),
    "seed": (_whole(0), "a whole number >= 0"),
    "limit": (_or_null(_whole(1)), "a whole number >= 1 or null"),
    "val": (_or_null(_whole(1)), "a whole number >= 1 or null"),
    "git_commit": (_or_null(_kind(str)), "a string or null"),
    "recipe": (_kind(dict), "an object"),
    "budget": (_or_null(_kind(dict)), "an object or null"),
    "source": (_or_null(_kind(dict)), "an object or null"),
}
REQUIRED = ("params", "seed")
BUDGET_FIELDS = {
    "max_params": (_or_null(_whole(0)), "a whole number >= 0 or null"),
    "max_epochs": (_or_null(_whole(1)), "a whole number >= 1 or null"),
    "target": PERCENT,
    "hold": (_whole(1), "a whole number >= 1"),
}
ROW_FIELDS = {
    "epoch": (_whole(1), "a whole number >= 1"),
    **{f"{split}_acc": PERCENT for split in ("train", "val", "test")},
    **{f"{split}_loss": (_real(0), "a finite number >= 0") for split in ("train", "val", "test")},
    **{f"{split}_correct": (_whole(0), "a whole number >= 0") for split in ("val", "test")},
    "lr": (_real(0), "a finite number >= 0"),
    "seconds": (_real(0), "a finite number >= 0"),
}
ACCURACIES = ("test_acc", "val_acc")  # a row has one or both: a run judged on the test set, or a validation-only one


def accuracy_column(history: list[dict]) -> str:
    """The accuracy a (checked) record is judged and drawn by: test accuracy, or validation accuracy for a
    run that had no test set."""
    return "test_acc" if "test_acc" in history[0] else "val_acc"


def _short(x) -> str:
    text = json.dumps(x) if not isinstance(x, float) else repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_fields(obj: dict, fields: dict, where: str) -> str | None:
    for key, (check, should) in fields.items():
        if key in obj and not check(obj[key]):
            return f"{where}{key} is {_short(obj[key])}, not {should}"
    return None


def _record_problem(rec: dict, columns: tuple[str, ...]) -> str | None:
    """What makes `rec` not a record whose every row has `columns`, or None."""
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"no {' and no '.join(missing)}"
    problem = _check_fields(rec, RECORD_FIELDS, "")
    if problem is None and isinstance(rec.get("budget"), dict):
        problem = _check_fields(rec["budget"], BUDGET_FIELDS, "budget: ")
    if problem is not None:
        return problem
    rows = rec.get("epochs")
    if not isinstance(rows, list) or not rows:
        return "no list of epochs"
    first = None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            return f"epoch {i} is {_short(row)}, not an object"
        if row.get("epoch") != i:
            return f"row {i} is of epoch {_short(row.get('epoch'))}, not {i}"
        problem = _check_fields(row, ROW_FIELDS, f"epoch {i}: ")
        if problem is not None:
            return problem
        if not any(k in row for k in ACCURACIES):
            return f"epoch {i} has no test (or validation) accuracy"
        need = [k for k in columns if k not in row]
        if need:
            return f"epoch {i} has no {', '.join(need)}"
        for split in ("val", "test"):  # none right is 0 %, and 0 % is none right
            if f"{split}_correct" in row and f"{split}_acc" in row and (
                    row[f"{split}_correct"] == 0) != (row[f"{split}_acc"] == 0):
                return f"epoch {i}: {split}_correct {row[f'{split}_correct']} does not fit {split}_acc " \
                       f"{row[f'{split}_acc']}"
        have = {k for k in row if k in ROW_FIELDS}
        first = have if first is None else first
        if have != first:  # a figure or table of every epoch needs every column in every row
            return f"epoch {i} has other columns than epoch 1 ({', '.join(sorted(have ^ first))})"
    return None


def load_record(path: Path, columns: tuple[str, ...] = ()) -> dict:
    """A run record, checked: an object (read by `read_json`) with a whole `params` and `seed` (the seed its
    file name says), and a list of epochs 1, 2, ... whose every field a run writes is of its type and range
    (accuracies finite percentages), each with a test or validation accuracy and the `columns` asked for.

    Every command that reads records reads them here. A record that fails is refused with one line naming the
    file and the field: a report over the other records would judge fewer seeds than the folder holds."""
    rec = read_json(path)
    problem = _record_problem(rec, columns)
    name = re.fullmatch(r"seed(\d+)\.json", Path(path).name)
    if problem is None and name and int(name[1]) != rec["seed"]:
        problem = f"its seed is {rec['seed']}, not the {int(name[1])} its name says"
    if problem is not None:
        raise CheckpointError(f"{path}: not a tinymnist record ({problem})")
    return rec


def check_finished(path: Path, model_name: str, recipe: Recipe, run: dict) -> dict:
    """The finished record at `path`, if it is of the same run (see `check_same_run`); --resume then skips it."""
    rec = load_record(path)
    have = {k: rec.get(k) for k in ("limit", "val")}
    if "data" in rec:
        have["data"] = rec["data"]
    check_same_run(path, "a finished run", rec.get("model"), rec.get("recipe"), have, model_name, recipe, run)
    if len(rec["epochs"]) != recipe.epochs:
        raise CheckpointError(f"{path} holds a finished run of {len(rec['epochs'])} epochs, not {recipe.epochs}")
    return rec


# Locks held by this process, released by `release_locks` (and by the system if the process dies).
_LOCKS: dict[Path, int] = {}


def lock_run(record: Path) -> None:
    """Takes the lock of a run (`seedN.lock` beside its record) or refuses with one line.

    flock locks belong to the open file, so the system releases them when the process ends, even by
    SIGKILL: a lock file left behind by a crash is never mistaken for a running run.
    """
    lock = record.with_suffix(".lock")
    if lock in _LOCKS:
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CheckpointError(f"another tinymnist run is writing {record} (it holds {lock}); wait for it to "
                                      "finish, or use another --out or seed") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file as we opened it: lock the new one
                break
            os.close(fd)
        try:  # the pid is for a person wondering who holds the lock; the flock is what counts
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
    except OSError as e:
        raise CheckpointError(write_failure(lock, e)) from None
    _LOCKS[lock] = fd


def unlock_run(record: Path) -> None:
    """Releases the lock `lock_run` took for `record`, if this process holds it."""
    lock = record.with_suffix(".lock")
    fd = _LOCKS.pop(lock, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held, so no other run can have locked this file
        os.close(fd)


def release_locks() -> None:
    for lock in list(_LOCKS):
        unlock_run(lock)


atexit.register(release_locks)


def teacher_files(recipe: Recipe, results: Path = RESULTS_DIR) -> list[Path]:
    """The checkpoint files that teach a recipe. Its `teacher` is a checkpoint file (`*.pt`), or a model whose runs
    with seeds 1 to `teacher_seeds` teach from their records' checkpoints (`results/<TEACHER>/seed<N>.pt`)."""
    if recipe.teacher is None:
        return []
    if recipe.teacher.endswith(".pt"):
        if recipe.teacher_seeds != 1:
            raise CheckpointError(f"the recipe's teacher {recipe.teacher} is one checkpoint: teacher_seeds must be 1")
        return [Path(recipe.teacher)]
    paths = []
    for seed in range(1, recipe.teacher_seeds + 1):
        path = record_path(results, recipe.teacher, seed).with_suffix(".pt")
        if not path.is_file():
            raise CheckpointError(
                f"the recipe's teacher: no checkpoint {path}; train it first (tinymnist train {recipe.teacher} "
                f"--seeds 1-{recipe.teacher_seeds} --out {results}) or point --teachers at its records' folder"
            )
        paths.append(path)
    return paths


def load_teachers(recipe: Recipe, device: str | torch.device, results: Path = RESULTS_DIR) -> list[nn.Module]:
    """The networks that teach a recipe (see `teacher_files`)."""
    return [load_checkpoint(path, device)[1] for path in teacher_files(recipe, results)]


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def resolve_checkpoint(arg: str) -> Path:
    """A checkpoint path as given, or for a model name or role the weights shipped with the package (its
    seed-1 checkpoint, copied there by `tinymnist report`)."""
    if arg in REGISTRY or arg in ROLES:
        path = WEIGHTS_DIR / f"{get_entry(arg).name}.pt"
        if not path.is_file():
            shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")) or ["none"]
            raise CheckpointError(f"no shipped weights for {arg} (shipped: {', '.join(shipped)})")
        return path
    return Path(arg)
