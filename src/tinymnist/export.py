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


def export_onnx(model: nn.Module, out: Path) -> None:
    """Writes `model` (in eval mode, batch size free) to `out` atomically."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail early with a clear message)
    except ImportError:
        raise ExportError("ONNX export needs the optional extra: pip install 'tinymnist[onnx]'") from None
    model = model.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with quiet():
            program = torch.onnx.export(
                model, (torch.zeros(1, 1, 28, 28),), dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
        program.save(tmp, external_data=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify_onnx(path: Path, model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> dict:
    """Runs the ONNX file with onnxruntime on `images` and compares with PyTorch's log-probabilities."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX verification needs the optional extra: pip install 'tinymnist[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    expected = log_probs(model.cpu(), images.cpu(), batch_size)
    got = torch.cat([
        torch.from_numpy(session.run(None, {name: preprocess(images[i : i + batch_size].cpu()).numpy()})[0])
        for i in range(0, len(images), batch_size)
    ])
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    return {"images": len(images), "same_labels": same, "max_abs_diff": float((got - expected).abs().max())}
