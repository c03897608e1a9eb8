"""One training run, from a model, a recipe and a seed to its record and checkpoint: what `train` does for
each seed, and what a sweep runs on a worker, so the two write the same record.

A run writes, in its output folder, `<model>/seed<S>.json` (the record), `.pt` (the checkpoint) and, after
each epoch until it ends, `.state.pt` (what `--resume` continues from).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .data import MNIST
from .engine import Diverged, fit, set_seed
from .errors import TinyMnistError
from .judge import Budget
from .model import Entry, count_params
from .recipes import Recipe
from .records import (
    check_finished,
    git_commit,
    load_state,
    lock_run,
    record_path,
    save_checkpoint,
    save_state,
    write_json,
)
from .runtime import Runtime


class RunError(TinyMnistError):
    pass


def make_record(entry: Entry, params: int, seed: int, recipe: Recipe, runtime: Runtime, history: list[dict],
                budget: Budget, *, limit: int | None, val: int | None, device: str, data: dict | None = None) -> dict:
    rec = {
        "model": entry.name,
        "params": params,
        "seed": seed,
        "recipe": recipe.to_dict(),
        "runtime": {**runtime.to_dict(), "threads": torch.get_num_threads()},
        "budget": budget.to_dict(),
        "epochs": history,
        "limit": limit,
        "val": val,
        "data": data,  # the SHA-256 of the data files it trained and was tested on
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if entry.source is not None:
        rec["source"] = entry.source
    return rec


def check_batches(model: nn.Module, recipe, n: int) -> None:
    """BatchNorm cannot normalise a batch (or ghost batch) of one image over a 1x1 map: refuse before training."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    bs, ghost = recipe.batch_size, recipe.ghost_batch
    batches = {b for b in (bs if n >= bs else 0, n % bs) if b}
    groups = {g for b in batches for g in ((ghost, b % ghost) if ghost and b > ghost else (b,))}
    if 1 in groups:
        what = "batch" if not ghost else f"ghost batch of {ghost}"
        raise RunError(f"{n} training images in batches of {bs} leave a {what} of one image, which BatchNorm "
                         "cannot train on; choose another --limit, --val or --batch-size")


# on_epoch(row, state): after each epoch, the row and the resumable state (also saved beside the record)
EpochCallback = Callable[[dict, dict], None]


def train_seed(entry: Entry, recipe: Recipe, runtime: Runtime, data: MNIST, seed: int, out: Path,
               teachers: list[nn.Module] = (), *, budget: Budget = Budget(), resume: bool = False,
               limit: int | None = None, val: int | None = None, run: dict | None = None, on_batch=None,
               on_epoch: EpochCallback | None = None, log: Callable[[str], None] = print) -> dict:
    """Trains `entry` with `recipe` from `seed` into `out`; returns the record (also written there).

    The run holds a lock beside its record while it writes. With `resume`, a state file beside the record
    continues the run from its last completed epoch, and a finished record is returned as it is (skipped);
    either only when it was made with the same model, recipe and `run` (`records.run_identity`: data options
    and checksums)."""
    path = record_path(out, entry.slug, seed)
    lock_run(path)  # two runs writing one record would both report success
    state_path = path.with_suffix(".state.pt")
    state = None
    if resume and state_path.exists():
        state = load_state(state_path, entry, recipe, run)
        log(f"resuming {entry.name} seed {seed} after epoch {len(state['history'])} from {state_path}")
    elif resume and path.exists():
        done = check_finished(path, entry.name, recipe, run)
        log(f"{entry.name} seed {seed}: already complete ({path}), skipped")
        return done
    budget.check(entry.name, entry.params(recipe), recipe.epochs)  # counted on the meta device: nothing allocated
    set_seed(seed)
    device = data.train_images.device
    model = entry.build(recipe).to(device)
    params = count_params(model)
    check_batches(model, recipe, len(data.train_labels))
    log(f"{entry.name}: {params:,} params, seed {seed}, device {device}, {len(data.train_labels):,} train / "
        f"{'no' if data.test_labels is None else f'{len(data.test_labels):,}'} test images, {recipe.epochs} epochs")

    def epoch_done(row: dict, training_state: dict) -> None:
        save_state(state_path, entry.name, recipe, training_state, run)  # the last epoch survives a kill
        if on_epoch is not None:
            on_epoch(row, training_state)

    try:
        result = fit(model, data, recipe, runtime, teachers, on_batch=on_batch, on_epoch=epoch_done, resume=state)
    except Diverged as e:
        kept = f"; the state after the last good epoch is kept in {state_path}" if state_path.exists() else ""
        raise RunError(f"{entry.name} seed {seed}: {e}; stopped{kept}") from None
    rec = make_record(entry, params, seed, recipe, runtime, result.history, budget, limit=limit, val=val,
                      device=str(device), data=(run or {}).get("data"))
    save_checkpoint(path.with_suffix(".pt"), entry.name, result.model, recipe, seed=seed,
                    **({"source": entry.source} if entry.source else {}))
    write_json(path, rec)
    state_path.unlink(missing_ok=True)  # the record and checkpoint now hold everything
    return rec
