"""`bench`: one command, five measurements, looked up in `MODES` by the first of --serve, --sweep,
--options and --epochs given (none: the same network through both pipelines). With --save FILE, the
measurement becomes a record, with the machine it was taken on."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..data import load_mnist
from ..engine import pick_device
from ..model import resolve_name
from ..records import write_json
from .options import (
    UsageError,
    add_data,
    add_json,
    add_recipe,
    add_runtime,
    add_seeds,
    ensure_writable,
    entry_of,
    positive_int,
    recipe_of,
    runtime_of,
)


def bench_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("bench", help="images/s of the project's pipeline against the per-sample PIL baseline")
    s.add_argument("model", nargs="?", help="the network (default: Model_6; with --epochs, the final model)")
    s.add_argument("--batches", type=positive_int, default=100, help="timed batches per repetition")
    s.add_argument("--repeat", type=positive_int,
                   help="repetitions, the median is reported (default 3; with --epochs 1, as each is a whole run)")
    s.add_argument("--batch-size", type=positive_int, help="the project pipeline's batch size (default: the recipe's)")
    add_runtime(s, eval_batch_size=False)
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
    add_seeds(s, "with --sweep: the runs' seeds (default 1,2: one run a worker)")
    add_recipe(s, "with --sweep: the runs' recipe (default: the model's own)", "with --sweep: change a recipe field")
    s.add_argument("--save", metavar="FILE.json", help="also write the measurement to FILE.json as a record")
    add_data(s)
    add_json(s)
    return s


def cmd_bench(args) -> None:
    mode = "serve" if args.serve else "sweep" if args.sweep else "options" if args.options else \
        "end-to-end" if args.epochs else "same-network"
    MODES[mode](args)


def _pipelines(args):
    """The network, device, runtime and data the pipeline measurements share; --save refused before the data
    is looked for."""
    model = resolve_name(args.model or ("final" if args.epochs else "Model_6"))
    if args.save:
        ensure_writable(Path(args.save).parent, Path(args.save))
    device = pick_device(args.device)
    runtime = runtime_of(args, device)
    return model, device, runtime, load_mnist(args.data_dir).limit(args.limit).to(device)


def same_network(args) -> None:
    """The same network through the project's pipeline and the per-sample PIL baseline: images/s."""
    from .. import bench as measure

    model, device, runtime, data = _pipelines(args)
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    repeat = args.repeat or 3
    res = measure.compare(model, data, device, runtime, args.batches, repeat, **overrides)
    _save(args, res)
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


def end_to_end(args) -> None:
    """--epochs N: whole runs of MODEL with its own recipe against the baseline's of --reference."""
    from .. import bench as measure

    model, device, runtime, data = _pipelines(args)
    res = measure.end_to_end(model, args.reference, data, device, runtime, args.epochs, repeat=args.repeat or 1)
    _save(args, res)
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


def options(args) -> None:
    """--options: the project pipeline's speed options, one row each."""
    from .. import bench as measure

    model, device, runtime, data = _pipelines(args)
    rows = measure.options(model, data, device, runtime, repeat=args.repeat or 3)
    res = {"model": model, "device": str(device), "options": rows}
    _save(args, res)
    if args.json:
        print(json.dumps(res, indent=1))
    for r in rows:
        print(f"{r['img_s']:8.0f} images/s  {r['variant']}")


def serve(args) -> None:
    """--serve: a bounded load test of `tinymnist serve` on loopback: requests/s and p50/p99 latency."""
    from ..serve import bench_serve

    if args.save:
        ensure_writable(Path(args.save).parent)
    res = bench_serve(args.model, clients=args.clients, requests=args.requests)
    _save(args, res)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['model']} served on loopback: {res['clients']} clients x {res['requests_per_client']} requests, "
          f"{res['requests']} answered in {res['seconds']:.1f} s, {res['errors']} errors")
    print(f"  {res['req_s']:.0f} requests/s, latency p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    if res["errors"]:
        raise UsageError(f"{res['errors']} of {res['requests']} requests failed: {', '.join(res['error_kinds'])}")


def sweep(args) -> None:
    """--sweep: the same runs as a sweep (2 workers x 1 thread) and one after another (2 threads each),
    alternating, --repeat times (default 3): the medians in runs per hour. --epochs and --batch-size change
    the runs' recipe."""
    from ..sweep import bench_sweep, import_ray

    import_ray()
    entry = entry_of(args.model or "final", None)
    recipe, _ = recipe_of(entry, args.recipe, args.set, {"epochs": args.epochs, "batch_size": args.batch_size})
    if args.save:
        ensure_writable(Path(args.save).parent, Path(args.save))
    res = bench_sweep(entry, recipe, runtime_of(args, pick_device("cpu")), args.seeds or [1, 2],
                      limit=args.limit, data_dir=args.data_dir, repeat=args.repeat or 3,
                      say=lambda line: print(line, flush=True))
    _save(args, res)
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


MODES = {"same-network": same_network, "end-to-end": end_to_end, "options": options, "serve": serve, "sweep": sweep}


def _save(args, res: dict) -> None:
    """With --save FILE, the measurement becomes a record, with the machine it was taken on."""
    if args.save:
        from .. import bench as measure

        write_json(Path(args.save), {**res, "machine": measure.machine(), "command": "tinymnist " + " ".join(
            sys.argv[1:]) if sys.argv[1:] else "tinymnist bench", "torch": torch.__version__})
        print(f"saved {args.save}", file=sys.stderr)
