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
import subprocess
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import TinyMnistError
from .files import atomic_write_bytes, describe_missing, write_failure
from .model import REGISTRY, ROLES, Entry, UnknownModelError, get_entry
from .recipes import RUNTIME_FIELDS, Recipe

RESULTS_DIR = Path("results")


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
    try:
        with warnings.catch_warnings():  # e.g. about pickle protocols: the user can do nothing about it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, not a plain weights {what} ({_reason(e)})") from None
    except Exception as e:  # noqa: BLE001  torch.load raises many kinds of errors on garbage: all mean "not one"
        raise CheckpointError(f"{path}: not a readable {what} ({_reason(e)})") from None


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
        elif got.shape != want.shape:
            problems.append(f"{k} is {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif got.is_floating_point() != want.is_floating_point() or got.is_complex():
            problems.append(f"{k} is {got.dtype}, expected {want.dtype}")
        elif got.is_floating_point() and not torch.isfinite(got).all():
            problems.append(f"{k} has NaN or infinite values")
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
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
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
                if not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != p.shape) or (
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


def load_record(path: Path) -> dict:
    """A run record, checked to be an object with a list of epochs that each have a test accuracy."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable record ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("epochs"), list) or not all(
        isinstance(row, dict) and _finite_number(row.get("test_acc")) for row in rec["epochs"]
    ):
        raise CheckpointError(f"{path}: not a tinymnist record (no list of epochs with test accuracies)")
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
