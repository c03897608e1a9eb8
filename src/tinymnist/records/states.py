"""Resuming: a run's state after each epoch, saved and loaded back checked to be of the same run (model, recipe,
data options) and to fit it; and a finished record checked the same way, which `--resume` then skips."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..errors import TinyMnistError
from ..model import Entry
from ..recipes import RUNTIME_FIELDS, Recipe
from .checkpoints import dense, load_weights, torch_load, torch_reason
from .record import CheckpointError, finite_number, load_record, write_bytes


def save_state(path: Path, model_name: str, recipe: Recipe, state: dict, run: dict | None = None) -> None:
    """The resumable state of a run after an epoch (see `engine.training_state`), written atomically."""
    buf = io.BytesIO()
    torch.save({"model_name": model_name, "recipe": recipe.to_dict(), "run": run, **state}, buf)
    write_bytes(path, buf.getvalue())


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


def check_same_run(path: Path, what: str, found: dict, want_model: str, want_recipe: Recipe,
                   want_run: dict | None) -> None:
    """Refuses to resume or skip a run whose model, recipe or data options differ, naming the differences.

    `found` is what the file at `path` holds of them, as read ({"model", "recipe", "run"}, any unchecked)."""
    model_name, recipe, run = found.get("model"), found.get("recipe"), found.get("run")
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
    state = torch_load(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a tinymnist training state (it holds a {type(state).__name__})")
    if run is not None and not isinstance(state.get("run"), dict):
        raise CheckpointError(f"{path} does not say which data and options it was made with (an older tinymnist); "
                              "run without --resume to start again")
    found = {"model": state.get("model_name"), "recipe": state.get("recipe"), "run": state.get("run")}
    check_same_run(path, "a run", found, model_name, recipe, run)
    _check_state(path, state, entry, recipe)
    return state


def _check_state(path: Path, state: dict, entry: Entry, recipe: Recipe) -> None:
    """Restores `state` into a throwaway model and optimizer, so a crafted or damaged state is refused here
    with a line naming the file, not with a traceback from deep inside training."""
    from ..engine import make_ema, make_optimizer
    from ..runtime import Runtime, apply

    model_name = entry.name
    history = state.get("history")
    if not isinstance(history, list) or not 0 < len(history) <= recipe.epochs or not all(
        isinstance(row, dict) and row.get("epoch") == i + 1 and finite_number(row.get("test_acc"))
        for i, row in enumerate(history)
    ):
        raise CheckpointError(f"{path}: its history is not a list of the first epochs of {recipe.epochs}")
    rng = state.get("rng")
    if not isinstance(rng, torch.Tensor) or not dense(rng) or rng.dtype != torch.uint8 or (
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
        raise CheckpointError(f"{path}: its optimizer state does not fit {model_name} ({torch_reason(e)})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for v in optimizer.state.get(p, {}).values():
                if not isinstance(v, torch.Tensor) or not dense(v) or (v.dim() > 0 and v.shape != p.shape) or (
                    v.is_floating_point() and not torch.isfinite(v).all()
                ):
                    raise CheckpointError(f"{path}: its optimizer state does not fit {model_name}")
    ema = make_ema(model, recipe)
    if ema is not None:
        load_weights(ema, state.get("ema"), f"{path}: its averaged weights", model_name)


def _same_kind(got, want) -> bool:
    """An optimizer setting of the type the optimizer uses (an int may stand for a float)."""
    if want is None or isinstance(want, bool):
        return got is None or isinstance(got, bool) if want is None else isinstance(got, bool)
    if isinstance(want, (int, float)):
        return finite_number(got)
    if isinstance(want, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and all(map(_same_kind, got, want))
    return type(got) is type(want)


def check_finished(path: Path, model_name: str, recipe: Recipe, run: dict) -> dict:
    """The finished record at `path`, if it is of the same run (see `check_same_run`); --resume then skips it."""
    rec = load_record(path)
    have = {k: rec.get(k) for k in ("limit", "val")}
    if "data" in rec:
        have["data"] = rec["data"]
    check_same_run(path, "a finished run", {"model": rec.get("model"), "recipe": rec.get("recipe"), "run": have},
                   model_name, recipe, run)
    if len(rec["epochs"]) != recipe.epochs:
        raise CheckpointError(f"{path} holds a finished run of {len(rec['epochs'])} epochs, not {recipe.epochs}")
    return rec
