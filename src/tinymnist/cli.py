"""The `tinymnist` command: models, summary, train, eval and report, on top of the engine.

Bad input ends with one line on stderr and exit status 2, never a traceback; see `main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import torch

from . import report
from .data import load_mnist
from .engine import evaluate, pick_device
from .errors import TinyMnistError, install_handlers, interrupted, interruption, received, restore_handlers
from .files import check_target, check_writable
from .model import REGISTRY, Entry, create_model, get_entry, resolve, resolve_name
from .recipes import MAX_INT, RECIPES, Recipe, apply_settings, format_recipe, get_recipe, load_recipe_file
from .records import (
    RESULTS_DIR,
    git_commit,
    load_checkpoint,
    load_teachers,
    record_path,
    release_locks,
    run_identity,
    write_json,
)
from .runtime import DROPOUTS, KERNELS, default_runtime
from .summary import format_summary, summary_dict


class UsageError(TinyMnistError):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


MAX_SEED = 2**32 - 1  # the seeds every random number generator accepts
MAX_SEEDS = 1000  # runs in one command
MAX_FLOAT = float(torch.finfo(torch.float32).max)  # the training tensors are float32


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= MAX_INT:
        raise argparse.ArgumentTypeError(f"expected a positive whole number up to {MAX_INT}, got {text!r}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0: any free one), got {text!r}")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text!r}")
    return value


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


# --- commands ----------------------------------------------------------------------------------------


def cmd_models(args) -> None:
    rows = []
    for name, entry in REGISTRY.items():
        info = summary_dict(name, create_model(name))
        rows.append(
            {"name": name, "params": info["params"], "rf": info["rf"], "role": entry.role, "target": entry.target}
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        role = f"[{r['role']}] " if r["role"] else ""
        print(f"{r['name']:<{width}}  {r['params']:>7,} params  RF {r['rf']:>2}  {role}{r['target']}")


def cmd_summary(args) -> None:
    entry = _entry(args.model, args, check=False)  # built once, below: a big network costs its memory once
    info = summary_dict(entry.name, entry.build())
    print(json.dumps(info, indent=1) if args.json else format_summary(info))


def cmd_recipe(args) -> None:
    """A named recipe, or a model's (by name or role), resolved, with the fields that differ from the defaults."""
    if args.name in RECIPES:
        recipe, title = get_recipe(args.name), f"recipe {args.name}"
    else:
        entry = get_entry(args.name)
        recipe, title = entry.recipe, f"{entry.name}: recipe {entry.recipe_name}"
    print(json.dumps(recipe.to_dict(), indent=1) if args.json else format_recipe(recipe, title))


def _runtime(args, device):
    """The device's default runtime, with the command line's overrides."""
    return default_runtime(device).with_overrides(
        dropout=getattr(args, "dropout_impl", None), kernels=getattr(args, "kernels", None),
        channels_last=getattr(args, "channels_last", None), eval_batch_size=getattr(args, "eval_batch_size", None),
        threads=getattr(args, "threads", None),
    )


def _progress_hooks(epochs: int, seed: int, ema: float = 0.0, steps_per_epoch: int = 0):
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


def _model_args(pairs: list[str] | None) -> dict[str, str]:
    args = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--model-arg {pair!r}: expected key=value")
        args[key.strip()] = value
    return args


def _entry(ref: str, args, max_params: int | None = None, check: bool = True) -> Entry:
    """The model a command names (registered, or the user's `file.py:NAME`), with its --model-arg values;
    a user's network over `max_params` is refused before it is built (see `resolve`)."""
    return resolve(ref, _model_args(getattr(args, "model_arg", None)), max_params=max_params, check=check)


def _recipe(entry: Entry, args) -> tuple[Recipe, str]:
    """The recipe to train with and its name: `--recipe` (a named recipe, a model's, or a TOML file; else the
    model's own), then `--set` and the shorthand options over it."""
    spec = args.recipe or entry.recipe_name
    if spec.endswith(".toml"):
        recipe = load_recipe_file(spec)
    elif spec in RECIPES:
        recipe = get_recipe(spec)
    else:
        spec = get_entry(spec).recipe_name  # a model or a role: its recipe
        recipe = get_recipe(spec)
    settings = list(args.set or [])
    settings += [f"{k}={v}" for k in ("epochs", "lr", "batch_size") if (v := getattr(args, k, None)) is not None]
    return apply_settings(recipe, settings), spec


def cmd_train(args) -> None:
    from .judge import Budget, verdict
    from .run import train_seed

    git_commit()  # now, before anything can change the checkout under a long run
    entry = _entry(args.model, args, args.max_params)
    recipe, recipe_name = _recipe(entry, args)
    budget = Budget(args.max_params, args.max_epochs, hold=entry.hold)
    device = pick_device(args.device)
    runtime = _runtime(args, device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    budget.check(entry.name, entry.params(recipe), recipe.epochs)  # before any data is read
    # smoke runs and validation runs never overwrite the records of full runs
    out = Path(args.out) if args.out else Path("results-smoke") if args.limit else RESULTS_DIR / "val" if args.val \
        else RESULTS_DIR
    data = load_mnist(args.data_dir).limit(args.limit).hold_out(args.val).to(device)
    teachers = load_teachers(recipe, device, Path(args.teachers))
    _check_writable(out)
    print(f"{entry.name}: recipe {recipe_name}{' with --set changes' if args.set else ''}, runtime "
          f"{', '.join(f'{k}={v}' for k, v in runtime.to_dict().items() if v is not None)}", flush=True)
    run = run_identity(args.limit, args.val, data.checksums)
    verdicts = []
    for seed in args.seeds or [args.seed]:
        on_batch, print_epoch = _progress_hooks(recipe.epochs, seed, recipe.ema,
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



def _scale_options(args, default_threads: int) -> tuple[int, int]:
    """Workers and threads per run: by default, this machine's cores filled with runs of `default_threads`."""
    threads = args.threads_per_run or default_threads
    workers = args.workers or max(1, (os.cpu_count() or 1) // threads)
    return workers, threads


def cmd_sweep(args) -> None:
    """Every (model, seed, setting) as a Ray task; records land in --out on this machine."""
    from .judge import Budget
    from .sweep import Run, import_ray, parse_address, parse_grid, plan, seeds_table, sweep

    import_ray()  # before any work: without Ray, one line saying how to install it
    if args.address:
        parse_address(args.address)
    grid = parse_grid(args.set)
    args.set = [f"{k}={vs[0]}" for k, vs in grid if len(vs) == 1]  # single values: part of every run's recipe
    models = [(entry, _recipe(entry, args)[0]) for entry in (_entry(ref, args, args.max_params)
                                                             for ref in args.models)]
    runs: list[Run] = plan(models, args.seeds or [1], [(k, vs) for k, vs in grid if len(vs) > 1])
    workers, threads = _scale_options(args, 1)
    device = pick_device("cpu")
    runtime = _runtime(args, device)
    out = Path(args.out) if args.out else Path("results-smoke") if args.limit else RESULTS_DIR / "val" if args.val \
        else RESULTS_DIR
    _check_writable(out)
    print(f"sweep: {len(runs)} runs ({len(models)} models x {len(runs) // len(models) // len(args.seeds or [1])} "
          f"settings x {len(args.seeds or [1])} seeds), {workers} workers x {threads} threads"
          f"{f' on {args.address}' if args.address else ''}, into {out}", flush=True)
    sweep(runs, out, runtime, lambda e: Budget(args.max_params, args.max_epochs, hold=e.hold), workers=workers,
          threads=threads, address=args.address, limit=args.limit, val=args.val, data_dir=args.data_dir,
          teachers_dir=Path(args.teachers), say=lambda line: print(line, flush=True))
    print(seeds_table(out, runs))


def cmd_search(args) -> None:
    """A recipe search on the validation split; the best recipe becomes a TOML recipe file."""
    from .judge import Budget
    from .search import check_epochs, check_recipe_fields, import_optuna, load_space, main_line, search, write_best
    from .sweep import import_ray, parse_address

    import_ray()
    import_optuna()
    if args.address:
        parse_address(args.address)
    space = load_space(args.space)
    check_recipe_fields(space)
    entry = _entry(args.model, args, args.max_params)
    args.epochs = args.lr = args.batch_size = None
    base, _ = _recipe(entry, args)
    check_epochs(space, base, entry.hold)  # before the study is opened
    out = Path(args.out) if args.out else RESULTS_DIR / "search" / f"{entry.slug}.toml"
    if out.suffix != ".toml":
        raise UsageError(f"--out {out}: the best recipe is a TOML file; name it *.toml")
    _check_writable(out.parent, out)
    storage = args.storage or f"sqlite:///{out.with_suffix('.db')}"
    workers, threads = _scale_options(args, 1)
    budget = Budget(args.max_params, args.max_epochs, hold=entry.hold)
    print(f"search: {args.trials} trials of {entry.name} on a validation split of {args.val} images (the test set "
          f"is never read), {workers} workers x {threads} threads; study {args.study or entry.slug} in {storage}",
          flush=True)
    result = search(entry, base, _runtime(args, pick_device("cpu")), space, trials=args.trials, val=args.val,
                    storage=storage, study_name=args.study or entry.slug, budget=budget, workers=workers,
                    threads=threads, address=args.address, limit=args.limit, data_dir=args.data_dir,
                    teachers_dir=Path(args.teachers), say=lambda line: print(line, flush=True))
    print(main_line(result, write_best(result, out)))


def _bench_sweep(args) -> None:
    """The same runs as a sweep (2 workers x 1 thread) and one after another (2 threads each), alternating,
    --repeat times (default 3): the medians in runs per hour."""
    from .sweep import bench_sweep, import_ray

    import_ray()
    entry = _entry(args.model or "final", args)
    recipe, _ = _recipe(entry, args)
    if args.save:
        _check_writable(Path(args.save).parent, Path(args.save))
    res = bench_sweep(entry, recipe, _runtime(args, pick_device("cpu")), args.seeds or [1, 2],
                      limit=args.limit, data_dir=args.data_dir, repeat=args.repeat or 3,
                      say=lambda line: print(line, flush=True))
    _save_bench(args, res)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    lowest = min(min(accs) for accs in res["sweep_last_test_acc"] + res["sequential_last_test_acc"])
    print(f"{res['runs']} runs of {res['model']} ({res['epochs']} epochs, --limit {res['limit']}), median of "
          f"{res['repeat']} alternating repetitions: sweep {res['workers']} x {res['threads_per_run']} thread "
          f"{res['sweep_seconds']:.1f} s ({res['sweep_runs_per_hour']:.0f} runs/hour, Ray's start-up included); "
          f"one after another with {res['sequential_threads']} threads {res['sequential_seconds']:.1f} s "
          f"({res['sequential_runs_per_hour']:.0f} runs/hour): {res['ratio']:.2f}x; lowest last test accuracy "
          f"{lowest:.2f}%")


def _check_writable(out: Path, target: Path | None = None) -> None:
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


def _load(args, device):
    """The checkpoint a command names, with the user's network named again by --model when it needs one."""
    entry = _entry(args.model, args) if args.model else None
    return load_checkpoint(args.checkpoint, device, entry, args.force, warn=lambda m: print(m, file=sys.stderr))


def cmd_eval(args) -> None:
    device = pick_device(args.device)
    name, model, _ = _load(args, device)
    data = load_mnist(args.data_dir).limit(args.limit).to(device)
    stats = evaluate(model, data.test_images, data.test_labels)
    result = {
        "model": name,
        "checkpoint": str(args.checkpoint),
        "accuracy": round(stats.acc, 4),
        "correct": stats.correct,
        "total": stats.total,
        "loss": round(stats.loss, 6),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{name} ({args.checkpoint}): test accuracy {stats.acc:.2f}% ({stats.correct}/{stats.total}), "
              f"loss {stats.loss:.4f}")


def cmd_predict(args) -> None:
    from .predict import classify

    device = pick_device(args.device)
    _, model, _ = _load(args, device)
    results = classify(model, [Path(p) for p in args.images], device)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['file']}: {r['digit']} (probability {r['probability']:.4f})")


def cmd_export(args) -> None:
    from .export import check_output, export_verified

    out = Path(args.onnx)
    check_output(out)  # before any work; the file is only replaced once the export is verified
    name, model, _ = _load(args, "cpu")
    data = load_mnist(args.data_dir).limit(args.limit)
    check = export_verified(model, out, data.test_images)
    print(f"{name} -> {out}: onnxruntime agrees with PyTorch on {check['same_labels']}/{check['images']} test labels, "
          f"max |log-prob difference| {check['max_abs_diff']:.2e} (OK)")


def cmd_bench(args) -> None:
    from . import bench

    if args.serve:
        _bench_serve(args)
        return
    if args.sweep:
        _bench_sweep(args)
        return
    model = resolve_name(args.model or ("final" if args.epochs else "Model_6"))
    if args.save:  # refused before the data is looked for
        _check_writable(Path(args.save).parent, Path(args.save))
    device = pick_device(args.device)
    runtime = _runtime(args, device)
    data = load_mnist(args.data_dir).limit(args.limit).to(device)
    if args.options:
        rows = bench.options(model, data, device, runtime, repeat=args.repeat or 3)
        res = {"model": model, "device": str(device), "options": rows}
        _save_bench(args, res)
        if args.json:
            print(json.dumps(res, indent=1))
        for r in rows:
            print(f"{r['img_s']:8.0f} images/s  {r['variant']}")
        return
    if args.epochs:
        res = bench.end_to_end(model, args.reference, data, device, runtime, args.epochs, repeat=args.repeat or 1)
        _save_bench(args, res)
        if args.json:
            print(json.dumps(res, indent=1))
            return

        def runs(key: str) -> str:
            return f", median of {', '.join(f'{v:.1f}' for v in res[key])}" if res["repeat"] > 1 else ""

        print(f"{res['model']}, own recipe, {res['epochs']} epochs with evaluation: {res['fast_seconds']:.1f} s"
              f"{runs('fast_runs')} (last test accuracy {res['fast_last_test_acc']:.2f}%)")
        print(f"{res['reference']}, baseline pipeline, whole run with its evaluation: {res['baseline_seconds']:.1f} s"
              f"{runs('baseline_runs')} (last test accuracy {res['baseline_last_test_acc']:.2f}%)")
        print(f"speed-up: {res['ratio']:.2f}x")
        if res["teacher"]:
            print(f"{res['model']} learns from {res['teacher']}: their training is not included")
        return
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    repeat = args.repeat or 3
    res = bench.compare(model, data, device, runtime, args.batches, repeat, **overrides)
    _save_bench(args, res)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['model']} on {res['device']} ({res['threads']} threads), median of {repeat} runs:")
    settings = ", ".join(f"{k}={v}" for k, v in res["settings"].items())
    print(f"  project pipeline (batch {res['batch_size']}, {settings}): {res['fast_img_s']:8.0f} images/s  "
          f"{res['fast_gflop_s']:.1f} GFLOP/s")
    print(f"  baseline pipeline (batch 64):  {res['baseline_img_s']:8.0f} images/s  "
          f"{res['baseline_gflop_s']:.1f} GFLOP/s")
    print(f"  ratio {res['ratio']:.2f}x; {res['train_flops_per_image'] / 1e6:.2f} MFLOP to train on one image")


def _bench_serve(args) -> None:
    """A bounded load test of `tinymnist serve` on loopback: requests/s and p50/p99 latency."""
    from .serve import bench_serve

    if args.save:
        _check_writable(Path(args.save).parent)
    res = bench_serve(args.model, clients=args.clients, requests=args.requests)
    _save_bench(args, res)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['model']} served on loopback: {res['clients']} clients x {res['requests_per_client']} requests, "
          f"{res['requests']} answered in {res['seconds']:.1f} s, {res['errors']} errors")
    print(f"  {res['req_s']:.0f} requests/s, latency p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    if res["errors"]:
        raise UsageError(f"{res['errors']} of {res['requests']} requests failed: {', '.join(res['error_kinds'])}")


def cmd_serve(args) -> None:
    from .serve import serve

    entry = _entry(args.code, args) if args.code else None
    serve(args.model, args.host, args.port, verbose=args.verbose, entry=entry, force=args.force)


def _save_bench(args, res: dict) -> None:
    """With --save FILE, the measurement becomes a record, with the machine it was taken on."""
    if args.save:
        from . import bench

        write_json(Path(args.save), {**res, "machine": bench.machine(), "command": "tinymnist " + " ".join(
            sys.argv[1:]) if sys.argv[1:] else "tinymnist bench", "torch": torch.__version__})
        print(f"saved {args.save}", file=sys.stderr)


def cmd_report(args) -> None:
    from .records import WEIGHTS_DIR
    from .ship import ship_weights

    results = Path(args.results)
    if args.out:  # a standalone report of any folder of records; the project's docs stay as they are
        entries = {}
        if args.model:
            entry = _entry(args.model, args)
            entries[entry.name] = entry
        print(f"wrote {report.folder_report(results, Path(args.out), args.data_dir, entries)}")
        return
    pages = report.pages(Path(args.readme), Path(args.docs))
    changed = [str(page) for page in pages if report.update_page(page, results, write=not args.check)]
    if args.check and changed:
        raise UsageError(f"out of date with the records in {args.results}: {', '.join(changed)} "
                         "(run `tinymnist report`)")
    print(f"{', '.join(changed)}: updated" if changed else f"{len(pages)} pages up to date")
    if not args.check:
        for path in ship_weights(results, WEIGHTS_DIR):
            print(f"shipped {path}")
        if not args.no_figures:
            for path in report.draw_figures(results, Path(args.figures), args.data_dir):
                print(f"drew {path}")


# --- parser ------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    p = Parser(prog="tinymnist", description="Design and train very small CNNs on MNIST under hard budgets.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("models", help="list the models with parameters, receptive field and target")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("summary", help="per-layer table: output shape, parameters, receptive field, jump")
    s.add_argument("model", help="a model name or role, or your own network: file.py:NAME or package.module:NAME")
    _model_ref_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("recipe", help="a model's (or a named) recipe, resolved; * marks what differs from the defaults")
    s.add_argument("name", help=f"a model, a role or a named recipe ({', '.join(RECIPES)})")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_recipe)

    s = sub.add_parser("train", help="train a model with its recipe; writes a record and a checkpoint per seed")
    s.add_argument("model", help="a model name or role, or your own network: file.py:NAME or package.module:NAME")
    _model_ref_args(s)
    s.add_argument("--recipe", help="a named recipe, a model's (its name), or a TOML file (default: the model's own; "
                                    "for your own network, the final model's)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="change a recipe field (repeatable), e.g. --set lr=0.05 --set augment.rotation=5")
    s.add_argument("--max-params", type=positive_int, help="refuse a model with more parameters than this")
    s.add_argument("--max-epochs", type=positive_int,
                   help="refuse a recipe with more epochs than this (the exercise's budget is 15)")
    s.add_argument("--epochs", type=positive_int, help="override the recipe's number of epochs")
    seeds = s.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=seed_int, default=1, help="random seed (default 1)")
    seeds.add_argument("--seeds", type=seed_list, help="several seeds, e.g. 1-5 or 1,3,7: one run and record each")
    s.add_argument("--lr", type=positive_float, help="override the recipe's initial learning rate")
    s.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    s.add_argument("--val", type=positive_int, help="hold out the last N training images as a validation set")
    s.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their last completed epoch; skip finished seeds")
    _data_args(s)
    s.add_argument("--out", help="folder for records and checkpoints (default results/; results-smoke/ with --limit, "
                                 "results/val/ with --val)")
    s.add_argument("--teachers", default=str(RESULTS_DIR),
                   help="records folder holding a taught recipe's teacher checkpoints (default results/)")
    s.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    _runtime_args(s)
    s.add_argument("--eval-batch-size", type=positive_int, help="runtime: images per evaluation batch (default 1000)")
    s.add_argument("--threads", type=positive_int, help="runtime: torch threads (default: torch's own)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="test accuracy of a saved checkpoint")
    s.add_argument("checkpoint", help="a checkpoint file, or a model name for its shipped weights")
    _data_args(s)
    s.add_argument("--json", action="store_true")
    _checkpoint_model_args(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="classify image files of handwritten digits")
    s.add_argument("checkpoint", help="a checkpoint file, or a model name for its shipped weights")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files, any size, colour or grey")
    s.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    s.add_argument("--json", action="store_true")
    _checkpoint_model_args(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export to ONNX and verify it with onnxruntime on the test set")
    s.add_argument("checkpoint", help="a checkpoint file, or a model name for its shipped weights")
    s.add_argument("--onnx", required=True, metavar="OUT.onnx")
    s.add_argument("--data-dir", help="folder with the MNIST IDX files (default $TINYMNIST_DATA, then ./data/mnist)")
    s.add_argument("--limit", type=positive_int, help="verify on only the first N test images")
    _checkpoint_model_args(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="images/s of the project's pipeline against the per-sample PIL baseline")
    s.add_argument("model", nargs="?", help="the network (default: Model_6; with --epochs, the final model)")
    s.add_argument("--batches", type=positive_int, default=100, help="timed batches per repetition")
    s.add_argument("--repeat", type=positive_int,
                   help="repetitions, the median is reported (default 3; with --epochs 1, as each is a whole run)")
    s.add_argument("--batch-size", type=positive_int, help="the project pipeline's batch size (default: the recipe's)")
    _runtime_args(s)
    s.add_argument("--epochs", type=positive_int,
                   help="instead, time N whole epochs of MODEL (default: the final model) with its own recipe "
                        "against the baseline")
    s.add_argument("--options", action="store_true",
                   help="instead, compare the project pipeline's speed options (dropout, layout, batch, compile)")
    s.add_argument("--reference", default="Model_6", help="the model the baseline trains with --epochs")
    s.add_argument("--serve", action="store_true",
                   help="instead, load-test `tinymnist serve` on loopback (MODEL default: final): requests/s, "
                        "p50/p99 latency")
    s.add_argument("--clients", type=positive_int, default=8, help="with --serve: concurrent clients (default 8)")
    s.add_argument("--requests", type=positive_int, default=250,
                   help="with --serve: requests per client (default 250)")
    s.add_argument("--sweep", action="store_true",
                   help="instead, time the same runs of MODEL (default: final) as a Ray sweep (2 workers x 1 thread) "
                        "and one after another (2 threads), alternating --repeat times: runs per hour, Ray's start-up "
                        "included")
    s.add_argument("--seeds", type=seed_list, help="with --sweep: the runs' seeds (default 1,2: one run a worker)")
    s.add_argument("--recipe", help="with --sweep: the runs' recipe (default: the model's own)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE", help="with --sweep: change a recipe field")
    s.add_argument("--save", metavar="FILE.json", help="also write the measurement to FILE.json as a record")
    _data_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", help="a local draw-a-digit page with the model's view and feature maps")
    s.add_argument("model", nargs="?", metavar="MODEL | CHECKPOINT",
                   help="also serve this model's shipped weights or this checkpoint file, shown first "
                        "(always served: final, tiny, Model_6)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--verbose", action="store_true", help="log every request on stderr")
    s.add_argument("--model", dest="code", metavar="FILE.py:NAME",
                   help="for a checkpoint of your own network: its code again (checked against the checkpoint)")
    _model_ref_args(s)
    s.add_argument("--force", action="store_true", help="load it even if the code differs from the checkpoint's")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("sweep", help="train every (model, seed, setting) as a task on Ray (local, or a cluster)")
    s.add_argument("models", nargs="+", metavar="MODEL", help="names, roles or your own networks (file.py:NAME)")
    _model_ref_args(s)
    s.add_argument("--seeds", type=seed_list, help="seeds, e.g. 1-10 or 1,3,7 (default 1)")
    s.add_argument("--recipe", help="a named recipe, a model's, or a TOML file (default: each model's own)")
    s.add_argument("--set", action="append", metavar="FIELD=V1,V2",
                   help="a recipe field's values (repeatable); several values make a grid, each setting in its "
                        "own folder MODEL+FIELD=VALUE")
    _scale_args(s)
    s.add_argument("--max-params", type=positive_int, help="refuse a model with more parameters than this")
    s.add_argument("--max-epochs", type=positive_int, help="refuse a recipe with more epochs than this")
    s.add_argument("--epochs", type=positive_int, help="override the recipe's number of epochs")
    s.add_argument("--lr", type=positive_float, help="override the recipe's initial learning rate")
    s.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    s.add_argument("--val", type=positive_int, help="hold out the last N training images as a validation set")
    _data_args(s)
    s.add_argument("--out", help="folder for records and checkpoints on this machine (default as train's)")
    s.add_argument("--teachers", default=str(RESULTS_DIR),
                   help="records folder holding a taught recipe's teacher checkpoints (default results/)")
    _runtime_args(s)
    s.add_argument("--eval-batch-size", type=positive_int, help="runtime: images per evaluation batch (default 1000)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("search", help="search a recipe with Optuna on the validation split, trials on Ray")
    s.add_argument("model", help="a model name or role, or your own network: file.py:NAME")
    _model_ref_args(s)
    s.add_argument("--trials", type=positive_int, required=True,
                   help="finished trials the study should hold (an interrupted search continues to this number)")
    s.add_argument("--space", help="a TOML search space replacing the default (src/tinymnist/space.toml)")
    s.add_argument("--val", type=positive_int, default=10_000,
                   help="validation images held out of the training set (default 10000); the test set is never read")
    s.add_argument("--recipe", help="the recipe the space's values change (default: the model's own)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE", help="change a field of that recipe (repeatable)")
    s.add_argument("--storage", help="an Optuna storage URL (default sqlite:///OUT.db beside --out)")
    s.add_argument("--study", help="the study's name in the storage (default: the model's)")
    s.add_argument("--out", help="the best recipe's TOML file (default results/search/MODEL.toml; its record .json)")
    s.add_argument("--max-params", type=positive_int, default=7_999,
                   help="the parameter budget (default 7999)")
    s.add_argument("--max-epochs", type=positive_int, default=15, help="the epoch budget (default 15)")
    _scale_args(s)
    s.add_argument("--data-dir", help="folder with the MNIST training files (default $TINYMNIST_DATA, ./data/mnist)")
    s.add_argument("--limit", type=positive_int, help="use only the first N training images (a smoke test)")
    s.add_argument("--teachers", default=str(RESULTS_DIR), help="records folder of a taught recipe's teachers")
    _runtime_args(s)
    s.add_argument("--eval-batch-size", type=positive_int, help="runtime: images per evaluation batch (default 1000)")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("report", help="regenerate the generated sections of README.md and docs/*.md from the records")
    s.add_argument("--results", default=str(RESULTS_DIR), help="folder of run records (default results/)")
    s.add_argument("--readme", default="README.md")
    s.add_argument("--docs", default="docs", help="folder of the documentation pages (every *.md in it)")
    s.add_argument("--check", action="store_true",
                   help="only check: fail (exit 2) if a page was out of date; draw and ship nothing")
    s.add_argument("--figures", default="docs/figures", help="folder for the PNG figures")
    s.add_argument("--no-figures", action="store_true")
    s.add_argument("--data-dir", help="MNIST folder, for the final model's mistakes and confusion matrix")
    s.add_argument("--out", help="instead, write a standalone report (report.md and PNG figures) of the records in "
                                 "--results to this folder")
    s.add_argument("--model", help="with --out: your network's code (file.py:NAME), to load its checkpoints")
    _model_ref_args(s)
    s.set_defaults(func=cmd_report)
    return p


def _checkpoint_model_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", help="for a checkpoint of your own network: its code again, file.py:NAME (checked "
                                   "against the reference and hash the checkpoint stores)")
    _model_ref_args(s)
    s.add_argument("--force", action="store_true", help="load it even if the code differs from the checkpoint's")


def _model_ref_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="an argument of your own network (repeatable), typed from its signature's defaults")


def _scale_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--workers", type=positive_int, help="runs at a time (default: this machine's cores / threads)")
    s.add_argument("--threads-per-run", type=positive_int, help="torch threads of each run (default 1)")
    s.add_argument("--address", help="join this Ray cluster (HOST:PORT of `ray start --head`) instead of starting "
                                     "a local one")


def _runtime_args(s: argparse.ArgumentParser) -> None:
    """Overrides of the device's default runtime (`runtime.default_runtime`): speed only, never results."""
    s.add_argument("--dropout-impl", choices=DROPOUTS, help="runtime: the dropout sampler")
    s.add_argument("--kernels", choices=KERNELS, help="runtime: the ReLU + BatchNorm (+ max-pool) and grid kernels")
    s.add_argument("--channels-last", type=lambda v: {"yes": True, "no": False}[v], choices=[True, False],
                   metavar="yes|no", help="runtime: the activations' memory layout")


def _data_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data-dir", help="folder with the MNIST IDX files (default $TINYMNIST_DATA, then ./data/mnist)")
    s.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    s.add_argument("--limit", type=positive_int, help="use only the first N training and N test images")


def main(argv: list[str] | None = None) -> int:
    # without __main__'s `run` (in-process, an old console script) the handlers are installed here, and restored
    previous = install_handlers()
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
        if received() is not None:  # a command (or a library) swallowed the interruption: it is one all the same
            raise interruption(received())
    except TinyMnistError as e:  # bad input; anything else is a bug and keeps its traceback
        if os.environ.get("TINYMNIST_DEBUG"):  # e.g. the traceback of the user's network that failed
            traceback.print_exception(e)
        print(f"tinymnist: error: {e}" if not str(e).startswith("tinymnist") else f"{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return interrupted(e, argv)
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        release_locks()
        restore_handlers(previous)
    return 0
