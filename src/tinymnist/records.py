"""Run records, checkpoints and resumable states on disk: atomic JSON records, weights-only checkpoints, and
reading them back without running any code.

A record is `results/<MODEL>/seed<SEED>.json`; its checkpoint is the `.pt` file beside it. Both are
written to a temporary file first and renamed into place, so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
from pathlib import Path

import torch
from torch import nn

from .errors import TinyMnistError
from .files import atomic_write_bytes
from .model import REGISTRY, ROLES, Entry, UnknownModelError, get_entry
from .recipes import Recipe

RESULTS_DIR = Path("results")


class CheckpointError(TinyMnistError):
    pass


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def record_path(out: Path, model: str, seed: int) -> Path:
    return Path(out) / model / f"seed{seed}.json"


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


def save_checkpoint(path: Path, model_name: str, model: nn.Module, recipe: Recipe, **meta) -> None:
    """Final weights with the model name and recipe: only tensors and plain data, loadable weights-only."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # clone: not the flat storage
    torch.save({"model": model_name, "recipe": recipe.to_dict(), "state_dict": state, **meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


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
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling failed"
        raise CheckpointError(f"{path}: refused, not a plain weights checkpoint ({first})") from None
    except Exception as e:  # noqa: BLE001  torch.load raises many kinds of errors on garbage: all mean "not one"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or not {"model", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a tinymnist checkpoint (no model name and state_dict)")
    name = ckpt["model"]
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: not a tinymnist checkpoint (its model name is not a string)")
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
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {name} ({str(e).splitlines()[0]})") from None
    return name, model.to(device), ckpt


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


def save_state(path: Path, model_name: str, recipe: Recipe, state: dict) -> None:
    """The resumable state of a run after an epoch (see `engine.training_state`), written atomically."""
    buf = io.BytesIO()
    torch.save({"model_name": model_name, "recipe": recipe.to_dict(), **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, model_name: str, recipe: Recipe) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  see load_checkpoint
        raise CheckpointError(f"{path}: not a readable training state ({str(e).strip().splitlines()[0]})") from None
    try:
        same = state.get("model_name") == model_name and Recipe.from_dict(state.get("recipe")) == recipe
    except TinyMnistError:
        same = False
    if not same:
        raise CheckpointError(
            f"{path} holds a run of {state.get('model_name')} with another recipe; "
            "resume with the same model and options, or run without --resume to start again"
        )
    return state


def load_teachers(recipe: Recipe, device: str | torch.device, results: Path = RESULTS_DIR) -> list[nn.Module]:
    """The networks that teach a recipe. Its `teacher` is a checkpoint file (`*.pt`), or a model whose runs
    with seeds 1 to `teacher_seeds` teach from their records' checkpoints (`results/<TEACHER>/seed<N>.pt`)."""
    if recipe.teacher is None:
        return []
    if recipe.teacher.endswith(".pt"):
        if recipe.teacher_seeds != 1:
            raise CheckpointError(f"the recipe's teacher {recipe.teacher} is one checkpoint: teacher_seeds must be 1")
        return [load_checkpoint(recipe.teacher, device)[1]]
    members = []
    for seed in range(1, recipe.teacher_seeds + 1):
        path = record_path(results, recipe.teacher, seed).with_suffix(".pt")
        if not path.is_file():
            raise CheckpointError(
                f"the recipe's teacher: no checkpoint {path}; train it first (tinymnist train {recipe.teacher} "
                f"--seeds 1-{recipe.teacher_seeds} --out {results}) or point --teachers at its records' folder"
            )
        members.append(load_checkpoint(path, device)[1])
    return members


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
