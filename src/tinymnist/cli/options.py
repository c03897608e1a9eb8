"""The command line's vocabulary: its one-line parser error, the argument types, and the options several
commands share (data, runtime, recipe and budget, seeds, scale, checkpoints, output), each defined once here
beside the function that reads it. A command adds the groups that apply to it and reads their values
directly: every option a reader reads is defined on each command that calls it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..errors import TinyMnistError
from ..files import check_target, check_writable
from ..model import Entry, get_entry, resolve
from ..recipes import MAX_INT, RECIPES, Recipe, apply_settings, get_recipe, load_recipe_file
from ..records import RESULTS_DIR
from ..runtime import DROPOUTS, KERNELS, Runtime, default_runtime


class UsageError(TinyMnistError):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


MAX_SEED = 2**32 - 1  # the seeds every random number generator accepts
MAX_SEEDS = 1000  # runs in one command
MAX_FLOAT = float(torch.finfo(torch.float32).max)  # the training tensors are float32


# --- argument types ----------------------------------------------------------------------------------


def _whole_number(text: str, low: int, high: int, expected: str) -> int:
    """`text` as a whole number from `low` to `high`, else the one-line error "expected ..., got TEXT"."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, MAX_INT, f"a positive whole number up to {MAX_INT}")


def port(text: str) -> int:
    return _whole_number(text, 0, 65535, "a port from 0 to 65535 (0: any free one)")


def seed_int(text: str) -> int:
    return _whole_number(text, 0, MAX_SEED, f"a seed from 0 to {MAX_SEED}")


def seed_list(text: str) -> list[int]:
    """"1-5" or "1,3,7" (or a mix) -> [1, 2, 3, 4, 5]; seeds are whole numbers from 0 to MAX_SEED."""
    seeds: dict[int, None] = {}
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if dash else int(lo)  # "1-" is an error, not seed 1
            if a < 0 or b < a or b > MAX_SEED:
                raise ValueError
            if b - a + 1 > MAX_SEEDS - len(seeds):  # checked before the range is expanded
                raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds in one command, got {text!r}")
            seeds.update(dict.fromkeys(range(a, b + 1)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1-5 or 1,3,7 (0 to {MAX_SEED}), got {text!r}") from None
    return list(seeds)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_FLOAT:
        raise argparse.ArgumentTypeError(f"expected a positive number up to {MAX_FLOAT:.3g}, got {text!r}")
    return value


# --- data --------------------------------------------------------------------------------------------

DATA_DIR = "folder with the MNIST IDX files (default $TINYMNIST_DATA, then ./data/mnist)"
LIMIT = "use only the first N training and N test images"


def add_data(s: argparse.ArgumentParser, *, device: bool = True, limit: str | None = LIMIT,
             data_dir: str = DATA_DIR) -> None:
    """--data-dir, --device and --limit; a command that reads only one of the sets says so in `limit`'s help."""
    s.add_argument("--data-dir", help=data_dir)
    if device:
        add_device(s)
    if limit:
        s.add_argument("--limit", type=positive_int, help=limit)


def add_device(s: argparse.ArgumentParser) -> None:
    s.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")


def add_val(s: argparse.ArgumentParser, default: int | None = None,
            help: str = "hold out the last N training images as a validation set") -> None:
    s.add_argument("--val", type=positive_int, default=default, help=help)


# --- runtime -----------------------------------------------------------------------------------------

RUNTIME_ONLY = ("eval_batch_size", "threads")  # the runtime's options a command may leave at the device's default


def add_runtime(s: argparse.ArgumentParser, *, eval_batch_size: bool = True, threads: bool = False) -> None:
    """Overrides of the device's default runtime (`runtime.default_runtime`): speed only, never results. The
    options a command does not offer stay None (the device's default), so `runtime_of` reads them all."""
    s.add_argument("--dropout-impl", choices=DROPOUTS, help="runtime: the dropout sampler")
    s.add_argument("--kernels", choices=KERNELS, help="runtime: the ReLU + BatchNorm (+ max-pool) and grid kernels")
    s.add_argument("--channels-last", type=lambda v: {"yes": True, "no": False}[v], choices=[True, False],
                   metavar="yes|no", help="runtime: the activations' memory layout")
    if eval_batch_size:
        s.add_argument("--eval-batch-size", type=positive_int,
                       help="runtime: images per evaluation batch (default 1000)")
    if threads:
        s.add_argument("--threads", type=positive_int, help="runtime: torch threads (default: torch's own)")
    s.set_defaults(**{name: None for name, offered in zip(RUNTIME_ONLY, (eval_batch_size, threads)) if not offered})


def runtime_of(args: argparse.Namespace, device) -> Runtime:
    """The device's default runtime, with the command line's overrides (`add_runtime`'s options)."""
    return default_runtime(device).with_overrides(
        dropout=args.dropout_impl, kernels=args.kernels, channels_last=args.channels_last,
        eval_batch_size=args.eval_batch_size, threads=args.threads,
    )


# --- models, recipe and budget -----------------------------------------------------------------------

MODEL = "a model name or role, or your own network: file.py:NAME or package.module:NAME"
FORCE = "load it even if the code differs from the checkpoint's"


def add_model_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="an argument of your own network (repeatable), typed from its signature's defaults")


def model_args(pairs: list[str] | None) -> dict[str, str]:
    args = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--model-arg {pair!r}: expected key=value")
        args[key.strip()] = value
    return args


def entry_of(ref: str, pairs: list[str] | None, max_params: int | None = None, check: bool = True) -> Entry:
    """The model a command names (registered, or the user's `file.py:NAME`), with its --model-arg `pairs`;
    a user's network over `max_params` is refused before it is built (see `resolve`)."""
    return resolve(ref, model_args(pairs), max_params=max_params, check=check)


def add_recipe(s: argparse.ArgumentParser, recipe_help: str, set_help: str, set_metavar: str = "FIELD=VALUE") -> None:
    """--recipe and --set, with what they mean for the command."""
    s.add_argument("--recipe", help=recipe_help)
    s.add_argument("--set", action="append", metavar=set_metavar, help=set_help)


def add_budget(s: argparse.ArgumentParser, max_params: int | None = None, max_epochs: int | None = None) -> None:
    """--max-params and --max-epochs: no limit by default, or the budget a command always holds runs to."""
    s.add_argument("--max-params", type=positive_int, default=max_params,
                   help=f"the parameter budget (default {max_params})" if max_params else
                   "refuse a model with more parameters than this")
    s.add_argument("--max-epochs", type=positive_int, default=max_epochs,
                   help=f"the epoch budget (default {max_epochs})" if max_epochs else
                   "refuse a recipe with more epochs than this (the exercise's budget is 15)")


def add_overrides(s: argparse.ArgumentParser) -> None:
    """Shorthands for the commonest --set changes (`overrides` reads them)."""
    s.add_argument("--epochs", type=positive_int, help="override the recipe's number of epochs")
    s.add_argument("--lr", type=positive_float, help="override the recipe's initial learning rate")
    s.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")


def overrides(args: argparse.Namespace) -> dict[str, int | float | None]:
    return {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}


def recipe_of(entry: Entry, name: str | None, settings: list[str] | None,
           fields: dict[str, int | float | None]) -> tuple[Recipe, str]:
    """The recipe to train with and its name: `name` (a named recipe, a model's, or a TOML file; else the
    model's own), then the `settings` (--set) and the shorthand `fields` that are given over it."""
    spec = name or entry.recipe_name
    if spec.endswith(".toml"):
        base = load_recipe_file(spec)
    elif spec in RECIPES:
        base = get_recipe(spec)
    else:
        spec = get_entry(spec).recipe_name  # a model or a role: its recipe
        base = get_recipe(spec)
    changes = list(settings or []) + [f"{k}={v}" for k, v in fields.items() if v is not None]
    return apply_settings(base, changes), spec


def add_seeds(s, help: str) -> None:
    """--seeds, e.g. 1-5 or 1,3,7; `s` may be a group (train's, with --seed)."""
    s.add_argument("--seeds", type=seed_list, help=help)


def add_teachers(s: argparse.ArgumentParser) -> None:
    s.add_argument("--teachers", default=str(RESULTS_DIR),
                   help="records folder holding a taught recipe's teacher checkpoints (default results/)")


# --- scale, checkpoints, output ----------------------------------------------------------------------


def add_scale(s: argparse.ArgumentParser) -> None:
    s.add_argument("--workers", type=positive_int, help="runs at a time (default: this machine's cores / threads)")
    s.add_argument("--threads-per-run", type=positive_int, help="torch threads of each run (default 1)")
    s.add_argument("--address", help="join this Ray cluster (HOST:PORT of `ray start --head`) instead of starting "
                                     "a local one")


def scale_of(args: argparse.Namespace, default_threads: int) -> tuple[int, int]:
    """Workers and threads per run: by default, this machine's cores filled with runs of `default_threads`."""
    threads = args.threads_per_run or default_threads
    workers = args.workers or max(1, (os.cpu_count() or 1) // threads)
    return workers, threads


def add_checkpoint_model(s: argparse.ArgumentParser) -> None:
    """--model, --model-arg and --force: a checkpoint of the user's own network loaded with its code."""
    s.add_argument("--model", help="for a checkpoint of your own network: its code again, file.py:NAME (checked "
                                   "against the reference and hash the checkpoint stores)")
    add_model_args(s)
    s.add_argument("--force", action="store_true", help=FORCE)


def add_json(s: argparse.ArgumentParser) -> None:
    s.add_argument("--json", action="store_true")


def results_folder(out: str | None, limit: int | None, val: int | None) -> Path:
    """--out, or by default: smoke runs and validation runs never overwrite the records of full runs."""
    return Path(out) if out else Path("results-smoke") if limit else RESULTS_DIR / "val" if val else RESULTS_DIR


def ensure_writable(out: Path, target: Path | None = None) -> None:
    """Before any long work: the output folder takes files, and `target`, if it exists, is a regular file."""
    try:
        check_writable(out)
    except OSError as e:
        raise UsageError(f"output folder {out} is not writable ({e.strerror or e})") from None
    if target is not None:
        try:
            check_target(target)
        except OSError as e:
            raise UsageError(f"cannot write {target}: {e.strerror}") from None
