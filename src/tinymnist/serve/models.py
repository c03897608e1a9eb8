"""The model side of `serve`: the models loaded at start-up (weights-only, with hooks that keep each
convolution block's output), the answer for one image (digit, probabilities, the 28x28 the model sees, feature
maps), and whether the input looks like one digit at all (`doubt`).
"""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import TinyMnistError
from ..model import REGISTRY, count_params, log_probs, resolve_name
from ..predict import fit_mnist, ink
from ..records import WEIGHTS_DIR, load_checkpoint, resolve_checkpoint
from ..summary import layer_table
from ..usernet import ScoresAsLogProbs
from .request import RequestError

SHIPPED = ("final", "tiny", "Model_6")  # the models the page offers: the two roles and the reference's last step
ABOUT = {  # what each role means, for the page's model menu
    "final": "the final model: the one the main job trains, chosen to meet the final target",
    "tiny": "the tiny model: the smallest that holds the target accuracy with under 4,000 parameters",
}
CHANNELS_SHOWN = 6  # feature maps per layer: the most active channels for the digit


@dataclass
class Served:
    """A model loaded at start-up, with what the page shows of it and hooks that keep each block's output."""

    key: str
    name: str
    model: nn.Module
    info: dict
    conv_layers: dict[str, dict] = field(default_factory=dict)  # block name -> {"rf", "jump", "shape"}
    _captured: threading.local = field(default_factory=threading.local)

    def run(self, image: torch.Tensor, features: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Probabilities (10,) for one (28, 28) uint8 image, and the convolution blocks' outputs (C, H, W).

        The hooks write to a thread-local dict, so concurrent requests never see each other's maps."""
        self._captured.maps = {} if features else None
        try:
            probs = log_probs(self.model, image[None]).exp()[0]
            return probs, self._captured.maps or {}
        finally:
            self._captured.maps = None

    def _hook(self, name: str):
        def keep(module, inputs, output):
            maps = getattr(self._captured, "maps", None)
            if maps is not None:
                maps[name] = output[0].detach()

        return keep


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def load_served(key: str, source: str, entry=None, force: bool = False) -> Served:
    """Loads `source` (a model name, role or checkpoint file; of the user's network `entry`, named again by
    --model) weights-only, and hooks its convolution layers: the layers of `summary.layer_table` (blocks of a
    registered network, leaf modules of the user's) with a convolution whose output is larger than 1x1."""
    name, model, _ = load_checkpoint(source, "cpu", entry, force, warn=lambda m: print(m, file=sys.stderr))
    model.eval()
    rows = layer_table(model)
    blocks = dict((model.net if isinstance(model, ScoresAsLogProbs) else model).named_modules())
    served = Served(key, name, model, {})
    for row in rows:
        if len(row.output_shape) == 3 and row.output_shape[1] > 1 and _has_conv(blocks[row.name]):
            served.conv_layers[row.name] = {"type": row.type, "rf": row.rf, "jump": row.jump,
                                            "shape": row.output_shape}
            blocks[row.name].register_forward_hook(served._hook(row.name))
    # the layer after the last map shown that sees the whole input (global pooling, usually): why the model's
    # field is larger than its last map's
    last = max((i for i, row in enumerate(rows) if row.name in served.conv_layers), default=-1)
    head = next((row for row in rows[last + 1:] if row.rf > rows[last].rf), None) if last >= 0 else None
    meta_path = resolve_checkpoint(source).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.parent == WEIGHTS_DIR and meta_path.is_file() else {}
    served.info = {
        "key": key,
        "model": name,
        "role": meta.get("role"),
        "about": ABOUT.get(meta.get("role")) or (REGISTRY[name].target if name in REGISTRY else "your network"),
        "params": count_params(model),
        "rf": rows[-1].rf,
        "test_acc": meta.get("test_acc"),  # the shipped weights' recorded test accuracy (seed 1, last epoch)
        "source": "shipped weights" if meta else f"checkpoint {Path(source).name}",
        "head": head and {"name": head.name, "type": head.type, "rf": head.rf},
        "layers": [{"name": n, **v} for n, v in served.conv_layers.items()],
    }
    return served


def load_models(extra: str | None = None, entry=None, force: bool = False) -> tuple[dict[str, Served], str]:
    """The shipped models by key (`SHIPPED`), plus `extra` (a model name or role, or a checkpoint file, of the
    user's network `entry` if it is one) if given; and the key to show first."""
    models = {key: load_served(key, key) for key in SHIPPED}
    if extra is None:
        return models, SHIPPED[0]
    if extra in models:
        return models, extra
    same = next((k for k, m in models.items() if extra in REGISTRY and m.name == resolve_name(extra)), None)
    if same:  # "Model_41" is the shipped "final"
        return models, same
    key = Path(extra).name if Path(extra).suffix else extra
    models[key] = load_served(key, extra, entry, force)
    return models, key


def _png_data_url(x: torch.Tensor) -> str:
    """A (H, W) tensor -> a grey PNG data URL, scaled so its own range spans black to white."""
    lo, hi = x.min(), x.max()
    grey = ((x - lo) / (hi - lo) * 255 if hi > lo else torch.zeros_like(x)).round().byte()
    buf = io.BytesIO()
    Image.frombytes("L", (grey.shape[1], grey.shape[0]), grey.contiguous().numpy().tobytes()).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def predict_image(served: Served, img: Image.Image, features: bool = True) -> dict:
    """The API's answer for one grey image: digit, probabilities, the 28x28 the model sees, whether the input
    looks like one digit at all, and feature maps."""
    try:
        x = ink(img)
    except TinyMnistError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None
    image = fit_mnist(x)
    probs, maps = served.run(image, features)
    probs = probs / probs.sum()  # exp of log-softmax sums to 1 up to float rounding
    out = {
        "model": served.key,
        "digit": int(probs.argmax()),
        "probabilities": [float(p) for p in probs],
        "image": image.tolist(),  # 28 rows of 28 grey values: MNIST-style, bright ink on black
        "doubt": doubt(x, image, probs),
    }
    if features:
        out["features"] = []
        for name, layer in served.conv_layers.items():
            fmap = maps[name]  # (C, H, W)
            top = fmap.mean((1, 2)).argsort(descending=True)[:CHANNELS_SHOWN].sort().values
            out["features"].append({
                "layer": name, "rf": layer["rf"], "jump": layer["jump"], "shape": list(fmap.shape),
                "channels": [int(c) for c in top], "maps": [_png_data_url(fmap[c]) for c in top],
            })
    return out


# --- is it one digit? ------------------------------------------------------------------------------------
# A classifier names a digit for anything; these say when the input is unlike the one centred digit each of
# MNIST's is. Together they doubt 0.5 % of MNIST's 10,000 test digits as 28x28 images and 0.6 % scaled to
# 280x280 as the page's canvas (through `ink` and `fit_mnist`, with Model_41): nearly all as unsure, the
# rest as two parts.
SMALL = 0.15  # the ink's bounding box spans less of the image's longer side: a dot (MNIST's span 0.61 at least)
PART = 0.10  # a separate mark holding at least this share of the ink counts as a second part
MAX_INK = 0.35  # share of the 28x28 field that is ink (> half bright); MNIST's digits have at most 0.33
UNSURE = 0.6  # the model's probability for its digit below this is a guess (0.4 % of MNIST's test digits)


def doubt(x: torch.Tensor, image: torch.Tensor, probs: torch.Tensor) -> dict | None:
    """None if the input can be taken for one digit, else {"kind", "message"}: from the image's `ink` `x`
    (H, W), the 28x28 `image` the model saw and its probabilities."""
    edges = (x[0], x[-1], x[:, 0], x[:, -1])
    ys, xs = torch.nonzero(x > 0.2 * 255, as_tuple=True)  # the ink's bounding box, as `fit_mnist` finds it
    span = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1) / max(x.shape)
    if all(bool((e > 0.2 * 255).any()) for e in edges):
        return {"kind": "edges", "message": "the ink runs off every edge of the image: not one digit inside it"}
    if span < SMALL:
        return {"kind": "small", "message": "too small for a digit (a dot?): draw it larger"}
    parts = count_parts(image)
    if parts > 1:
        return {"kind": "parts", "message": f"{parts} separate marks, not one digit"}
    if float((image > 127).float().mean()) > MAX_INK:
        return {"kind": "ink", "message": "too much ink for one digit (a scribble?)"}
    top = probs.argsort(descending=True)[:2].tolist()
    if float(probs[top[0]]) < UNSURE:
        guesses = " or ".join(f"{d} ({100 * float(probs[d]):.0f} %)" for d in top)
        return {"kind": "unsure", "message": f"not sure: {guesses}"}
    return None


def count_parts(image: torch.Tensor) -> int:
    """Separate marks in a (28, 28) MNIST-style image: 8-connected groups of ink once gaps of up to 2 pixels
    are closed (a stroke lifted and put down again), each holding at least PART of the ink."""
    mask = F.max_pool2d((image > 32).float()[None, None], 3, stride=1, padding=1)[0, 0].bool().tolist()
    weight = image.tolist()
    seen, masses = set(), []
    for start in ((y, x) for y in range(28) for x in range(28) if mask[y][x]):
        if start in seen:
            continue
        seen.add(start)
        todo, mass = [start], 0
        while todo:  # flood fill
            y, x = todo.pop()
            mass += weight[y][x]
            for n in ((y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                if 0 <= n[0] < 28 and 0 <= n[1] < 28 and mask[n[0]][n[1]] and n not in seen:
                    seen.add(n)
                    todo.append(n)
        masses.append(mass)
    return sum(m >= PART * sum(masses) for m in masses)
