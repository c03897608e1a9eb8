"""`train`: one model, one or several seeds, each run to a record and a checkpoint, with progress on the way
and the judge's verdict at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..data import load_mnist
from ..engine import pick_device
from ..records import git_commit, load_teachers, record_path, run_identity
from .options import (
    MODEL,
    add_budget,
    add_data,
    add_model_args,
    add_overrides,
    add_recipe,
    add_runtime,
    add_seeds,
    add_teachers,
    add_val,
    ensure_writable,
    entry_of,
    overrides,
    recipe_of,
    results_folder,
    runtime_of,
    seed_int,
)


def train_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("train", help="train a model with its recipe; writes a record and a checkpoint per seed")
    s.add_argument("model", help=MODEL)
    add_model_args(s)
    add_recipe(s, "a named recipe, a model's (its name), or a TOML file (default: the model's own; for your own "
                  "network, the final model's)",
               "change a recipe field (repeatable), e.g. --set lr=0.05 --set augment.rotation=5")
    add_budget(s)
    add_overrides(s)
    seeds = s.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=seed_int, default=1, help="random seed (default 1)")
    add_seeds(seeds, "several seeds, e.g. 1-5 or 1,3,7: one run and record each")
    add_val(s)
    s.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their last completed epoch; skip finished seeds")
    add_data(s)
    s.add_argument("--out", help="folder for records and checkpoints (default results/; results-smoke/ with --limit, "
                                 "results/val/ with --val)")
    add_teachers(s)
    s.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    add_runtime(s, threads=True)
    return s


def cmd_train(args) -> None:
    from ..judge import Budget, verdict
    from ..run import train_seed

    git_commit()  # now, before anything can change the checkout under a long run
    entry = entry_of(args.model, args.model_arg, args.max_params)
    recipe, recipe_name = recipe_of(entry, args.recipe, args.set, overrides(args))
    budget = Budget(args.max_params, args.max_epochs, hold=entry.hold)
    device = pick_device(args.device)
    runtime = runtime_of(args, device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    budget.check(entry.name, entry.params(recipe), recipe.epochs)  # before any data is read
    out = results_folder(args.out, args.limit, args.val)
    data = load_mnist(args.data_dir).limit(args.limit).hold_out(args.val).to(device)
    teachers = load_teachers(recipe, device, Path(args.teachers))
    ensure_writable(out)
    print(f"{entry.name}: recipe {recipe_name}{' with --set changes' if args.set else ''}, runtime "
          f"{', '.join(f'{k}={v}' for k, v in runtime.to_dict().items() if v is not None)}", flush=True)
    run = run_identity(args.limit, args.val, data.checksums)
    verdicts = []
    for seed in args.seeds or [args.seed]:
        on_batch, print_epoch = progress_hooks(recipe.epochs, seed, recipe.ema,
                                               -(-len(data.train_labels) // recipe.batch_size))
        rec = train_seed(entry, recipe, runtime, data, seed, out, teachers, budget=budget, resume=args.resume,
                         limit=args.limit, val=args.val, run=run, on_batch=None if args.quiet else on_batch,
                         on_epoch=lambda row, state, print_epoch=print_epoch: print_epoch(row),
                         log=lambda line: print(line, flush=True))
        path = record_path(out, entry.slug, seed)
        v = verdict(rec["epochs"], budget, rec["params"])
        verdicts.append(v)
        print(f"record {path}, checkpoint {path.with_suffix('.pt')}")
        print(v["text"], flush=True)
    if len(verdicts) > 1:
        held = sum(v["held"] and v["within_budget"] for v in verdicts)
        print(f"{entry.name}: held >= {budget.target:.2f}% in the last {budget.hold} epochs on {held} of "
              f"{len(verdicts)} seeds")


def progress_hooks(epochs: int, seed: int, ema: float = 0.0, steps_per_epoch: int = 0):
    """A tqdm bar per epoch (on stderr) and one plain line per epoch (on stdout). With a weight average
    (`ema`), the test accuracy is the average's, and while the initial weights still weigh in it (ema^steps
    over 1 %), the line says how much: its first epochs' accuracy is not the network's."""
    from tqdm import tqdm

    state = {"bar": None, "epoch": 0}

    def on_batch(step, steps, loss, acc):
        if state["bar"] is None:
            state["epoch"] += 1
            state["bar"] = tqdm(total=steps, desc=f"seed {seed} epoch {state['epoch']}/{epochs}", leave=False,
                                file=sys.stderr, dynamic_ncols=True, disable=None)
        bar = state["bar"]
        bar.update(step - bar.n)
        bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.2f}%")

    def on_epoch(row):
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None
        else:
            state["epoch"] += 1
        initial = ema ** (row["epoch"] * steps_per_epoch) if ema else 0.0
        warming = f"  (weight average warming up: {initial:.0%} initial weights)" if initial > 0.01 else ""
        test = "test (weight average)" if ema else "test"
        print(
            f"epoch {row['epoch']:>2}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%  "
            f"{test} loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%  lr {row['lr']:.6f}  "
            f"{row['seconds']:.1f}s{warming}",
            flush=True,
        )

    return on_batch, on_epoch
