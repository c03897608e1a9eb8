"""Checkpoints: weights-only files of a model's final weights, read back without running any code (archive sizes
and nesting checked before and after `torch.load`, each tensor checked before it is loaded); the weights
shipped with the package; the checkpoints that teach a recipe.

A run's checkpoint is the `.pt` file beside its record.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import TinyMnistError
from ..files import describe_missing
from ..model import REGISTRY, ROLES, Entry, UnknownModelError, get_entry
from ..recipes import Recipe
from .record import RESULTS_DIR, CheckpointError, record_path, write_bytes

MAX_NESTING = 16  # containers within containers in a checkpoint or state: a state dict's are 5 deep
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # the package's weights/, shipped with it


def save_checkpoint(path: str | os.PathLike, model_name: str, model: nn.Module, recipe: Recipe, **meta) -> None:
    """Final weights with the model name and recipe: only tensors and plain data, loadable weights-only."""
    path = Path(path)
    buf = io.BytesIO()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # clone: not the flat storage
    torch.save({"model": model_name, "recipe": recipe.to_dict(), "state_dict": state, **meta}, buf)
    write_bytes(path, buf.getvalue())


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
    ckpt = torch_load(path, "checkpoint", device)
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


def torch_reason(e: Exception) -> str:
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


def torch_load(path: Path, what: str, device="cpu"):
    """What a checkpoint or state file holds, read weights-only, after its archive's declared sizes are
    checked (`_check_archive`), and checked to nest at most MAX_NESTING containers deep."""
    _check_archive(path, what)
    try:
        with warnings.catch_warnings():  # e.g. about pickle protocols: the user can do nothing about it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, not a plain weights {what} ({torch_reason(e)})") from None
    except Exception as e:  # noqa: BLE001  torch.load raises many kinds of errors on garbage: all mean "not one"
        raise CheckpointError(f"{path}: not a readable {what} ({torch_reason(e)})") from None
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


def dense(t: torch.Tensor) -> bool:
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
        elif not dense(got):
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
