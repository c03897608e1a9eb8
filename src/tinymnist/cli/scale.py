"""`sweep` and `search`: many runs on Ray, a grid of them or an Optuna study's trials. Ray and Optuna are
imported only when one of them runs (the scale extra), and checked before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine import pick_device
from ..records import RESULTS_DIR
from .options import (
    UsageError,
    add_budget,
    add_data,
    add_model_args,
    add_overrides,
    add_recipe,
    add_runtime,
    add_scale,
    add_seeds,
    add_teachers,
    add_val,
    ensure_writable,
    entry_of,
    overrides,
    positive_int,
    recipe_of,
    results_folder,
    runtime_of,
    scale_of,
)


def say(line: str) -> None:
    print(line, flush=True)


def sweep_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("sweep", help="train every (model, seed, setting) as a task on Ray (local, or a cluster)")
    s.add_argument("models", nargs="+", metavar="MODEL", help="names, roles or your own networks (file.py:NAME)")
    add_model_args(s)
    add_seeds(s, "seeds, e.g. 1-10 or 1,3,7 (default 1)")
    add_recipe(s, "a named recipe, a model's, or a TOML file (default: each model's own)",
               "a recipe field's values (repeatable); several values make a grid, each setting in its own folder "
               "MODEL+FIELD=VALUE", set_metavar="FIELD=V1,V2")
    add_scale(s)
    add_budget(s)
    add_overrides(s)
    add_val(s)
    add_data(s)
    s.add_argument("--out", help="folder for records and checkpoints on this machine (default as train's)")
    add_teachers(s)
    add_runtime(s)
    return s


def cmd_sweep(args) -> None:
    """Every (model, seed, setting) as a Ray task; records land in --out on this machine."""
    from ..judge import Budget
    from ..sweep import Run, import_ray, parse_address, parse_grid, plan, seeds_table, sweep

    import_ray()  # before any work: without Ray, one line saying how to install it
    if args.address:
        parse_address(args.address)
    grid = parse_grid(args.set)
    single = [f"{k}={vs[0]}" for k, vs in grid if len(vs) == 1]  # single values: part of every run's recipe
    models = [(entry, recipe_of(entry, args.recipe, single, overrides(args))[0])
              for entry in (entry_of(ref, args.model_arg, args.max_params) for ref in args.models)]
    seeds = args.seeds or [1]
    runs: list[Run] = plan(models, seeds, [(k, vs) for k, vs in grid if len(vs) > 1])
    workers, threads = scale_of(args, 1)
    runtime = runtime_of(args, pick_device("cpu"))
    out = results_folder(args.out, args.limit, args.val)
    ensure_writable(out)
    print(f"sweep: {len(runs)} runs ({len(models)} models x {len(runs) // len(models) // len(seeds)} settings x "
          f"{len(seeds)} seeds), {workers} workers x {threads} threads"
          f"{f' on {args.address}' if args.address else ''}, into {out}", flush=True)
    sweep(runs, out, runtime, lambda e: Budget(args.max_params, args.max_epochs, hold=e.hold), workers=workers,
          threads=threads, address=args.address, limit=args.limit, val=args.val, data_dir=args.data_dir,
          teachers_dir=Path(args.teachers), say=say)
    print(seeds_table(out, runs))


def search_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("search", help="search a recipe with Optuna on the validation split, trials on Ray")
    s.add_argument("model", help="a model name or role, or your own network: file.py:NAME")
    add_model_args(s)
    s.add_argument("--trials", type=positive_int, required=True,
                   help="finished trials the study should hold (an interrupted search continues to this number)")
    s.add_argument("--space", help="a TOML search space replacing the default (src/tinymnist/space.toml)")
    add_val(s, 10_000, "validation images held out of the training set (default 10000); the test set is never read")
    add_recipe(s, "the recipe the space's values change (default: the model's own)",
               "change a field of that recipe (repeatable)")
    s.add_argument("--storage", help="an Optuna storage URL (default sqlite:///OUT.db beside --out)")
    s.add_argument("--study", help="the study's name in the storage (default: the model's)")
    s.add_argument("--out", help="the best recipe's TOML file (default results/search/MODEL.toml; its record .json)")
    add_budget(s, max_params=7_999, max_epochs=15)
    add_scale(s)
    add_data(s, device=False, limit="use only the first N training images (a smoke test)",
             data_dir="folder with the MNIST training files (default $TINYMNIST_DATA, then ./data/mnist)")
    add_teachers(s)
    add_runtime(s)
    return s


def cmd_search(args) -> None:
    """A recipe search on the validation split; the best recipe becomes a TOML recipe file."""
    from ..judge import Budget
    from ..search import check_epochs, check_recipe_fields, import_optuna, load_space, main_line, search, write_best
    from ..sweep import import_ray, parse_address

    import_ray()
    import_optuna()
    if args.address:
        parse_address(args.address)
    space = load_space(args.space)
    check_recipe_fields(space)
    entry = entry_of(args.model, args.model_arg, args.max_params)
    base, _ = recipe_of(entry, args.recipe, args.set, {})  # the space, not shorthands, changes epochs, lr, batch
    check_epochs(space, base, entry.hold)  # before the study is opened
    out = Path(args.out) if args.out else RESULTS_DIR / "search" / f"{entry.slug}.toml"
    if out.suffix != ".toml":
        raise UsageError(f"--out {out}: the best recipe is a TOML file; name it *.toml")
    ensure_writable(out.parent, out)
    storage = args.storage or f"sqlite:///{out.with_suffix('.db')}"
    workers, threads = scale_of(args, 1)
    budget = Budget(args.max_params, args.max_epochs, hold=entry.hold)
    study = args.study or entry.slug
    print(f"search: {args.trials} trials of {entry.name} on a validation split of {args.val} images (the test set "
          f"is never read), {workers} workers x {threads} threads; study {study} in {storage}", flush=True)
    result = search(entry, base, runtime_of(args, pick_device("cpu")), space, trials=args.trials, val=args.val,
                    storage=storage, study_name=study, budget=budget, workers=workers, threads=threads,
                    address=args.address, limit=args.limit, data_dir=args.data_dir,
                    teachers_dir=Path(args.teachers), say=say)
    print(main_line(result, write_best(result, out)))
