"""ONNX export of a trained model, verified against PyTorch with onnxruntime on the MNIST test set.

onnx, onnxscript and onnxruntime are an optional extra: `pip install tinymnist[onnx]`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .data import preprocess
from .errors import TinyMnistError
from .files import atomic_write_bytes, check_target, write_failure
from .model import log_probs


class ExportError(TinyMnistError):
    pass


@contextlib.contextmanager
def quiet():
    """The exporter logs about optional torchvision operators and deprecations; none of it concerns us."""
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("torch").setLevel(level)


def onnx_bytes(model: nn.Module) -> bytes:
    """`model` (in eval mode, batch size free) as the bytes of an ONNX file."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail early with a clear message)
    except ImportError:
        raise ExportError("ONNX export needs the optional extra: pip install 'tinymnist[onnx]'") from None
    model = model.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="tinymnist-onnx-") as folder:
        tmp = os.path.join(folder, "model.onnx")
        with quiet():
            program = torch.onnx.export(
                model, (torch.zeros(1, 1, 28, 28),), dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
        program.save(tmp, external_data=False)
        with open(tmp, "rb") as f:
            return f.read()


def _write(out: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(out, data)
    except OSError as e:
        raise ExportError(write_failure(out, e)) from None


def check_output(out: Path) -> None:
    """Refuses an output that is not a regular file or a new path before any work is done."""
    try:
        check_target(out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror}") from None


def export_onnx(model: nn.Module, out: Path) -> None:
    """Writes `model` (in eval mode, batch size free) to `out` atomically."""
    check_output(out)
    _write(out, onnx_bytes(model))


def export_verified(model: nn.Module, out: Path, images: torch.Tensor, tolerance: float = 1e-4) -> dict:
    """Exports `model`, verifies the ONNX bytes on `images`, and only then moves them onto `out`: a failed
    export or a mismatch leaves an earlier file at `out` as it was. Returns `verify_onnx`'s figures."""
    check_output(out)
    data = onnx_bytes(model)
    check = verify_onnx(data, model, images)
    if check["same_labels"] != check["images"] or not check["max_abs_diff"] <= tolerance:  # NaN is a mismatch
        raise ExportError(
            f"the exported model does not match PyTorch within {tolerance:g} ({check['same_labels']}/"
            f"{check['images']} same labels, max |log-prob difference| {check['max_abs_diff']:.2e}); "
            f"{out} was left as it was"
        )
    _write(out, data)
    return check


def verify_onnx(onnx: Path | bytes, model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> dict:
    """Runs the ONNX file (a path or its bytes) with onnxruntime on `images`; compares with PyTorch's
    log-probabilities."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX verification needs the optional extra: pip install 'tinymnist[onnx]'") from None
    session = ort.InferenceSession(onnx if isinstance(onnx, bytes) else str(onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    expected = log_probs(model.cpu(), images.cpu(), batch_size)
    got = torch.cat([
        torch.from_numpy(session.run(None, {name: preprocess(images[i : i + batch_size].cpu()).numpy()})[0])
        for i in range(0, len(images), batch_size)
    ])
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    return {"images": len(images), "same_labels": same, "max_abs_diff": float((got - expected).abs().max())}
