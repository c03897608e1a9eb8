"""`eval`, `predict`, `export` and `serve`: a trained network put to use, from a checkpoint or the shipped
weights (a checkpoint of the user's own network is loaded with its code named again by --model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import load_mnist
from ..engine import evaluate, pick_device
from ..records import load_checkpoint
from .options import FORCE, add_checkpoint_model, add_data, add_device, add_json, add_model_args, entry_of, port

CHECKPOINT = "a checkpoint file, or a model name for its shipped weights"


def load(args, device):
    """The checkpoint a command names, with the user's network named again by --model when it needs one."""
    entry = entry_of(args.model, args.model_arg) if args.model else None
    return load_checkpoint(args.checkpoint, device, entry, args.force, warn=lambda m: print(m, file=sys.stderr))


def eval_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("eval", help="test accuracy of a saved checkpoint")
    s.add_argument("checkpoint", help=CHECKPOINT)
    add_data(s)
    add_json(s)
    add_checkpoint_model(s)
    return s


def cmd_eval(args) -> None:
    device = pick_device(args.device)
    name, model, _ = load(args, device)
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


def predict_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("predict", help="classify image files of handwritten digits")
    s.add_argument("checkpoint", help=CHECKPOINT)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files, any size, colour or grey")
    add_device(s)
    add_json(s)
    add_checkpoint_model(s)
    return s


def cmd_predict(args) -> None:
    from ..predict import classify

    device = pick_device(args.device)
    _, model, _ = load(args, device)
    results = classify(model, [Path(p) for p in args.images], device)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['file']}: {r['digit']} (probability {r['probability']:.4f})")


def export_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("export", help="export to ONNX and verify it with onnxruntime on the test set")
    s.add_argument("checkpoint", help=CHECKPOINT)
    s.add_argument("--onnx", required=True, metavar="OUT.onnx")
    add_data(s, device=False, limit="verify on only the first N test images")
    add_checkpoint_model(s)
    return s


def cmd_export(args) -> None:
    from ..export import check_output, export_verified

    out = Path(args.onnx)
    check_output(out)  # before any work; the file is only replaced once the export is verified
    name, model, _ = load(args, "cpu")
    data = load_mnist(args.data_dir).limit(args.limit)
    check = export_verified(model, out, data.test_images)
    print(f"{name} -> {out}: onnxruntime agrees with PyTorch on {check['same_labels']}/{check['images']} test labels, "
          f"max |log-prob difference| {check['max_abs_diff']:.2e} (OK)")


def serve_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="a local draw-a-digit page with the model's view and feature maps")
    s.add_argument("model", nargs="?", metavar="MODEL | CHECKPOINT",
                   help="also serve this model's shipped weights or this checkpoint file, shown first "
                        "(always served: final, tiny, Model_6)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--verbose", action="store_true", help="log every request on stderr")
    s.add_argument("--model", dest="code", metavar="FILE.py:NAME",
                   help="for a checkpoint of your own network: its code again (checked against the checkpoint)")
    add_model_args(s)
    s.add_argument("--force", action="store_true", help=FORCE)
    return s


def cmd_serve(args) -> None:
    from ..serve import serve

    entry = entry_of(args.code, args.model_arg) if args.code else None
    serve(args.model, args.host, args.port, verbose=args.verbose, entry=entry, force=args.force)
