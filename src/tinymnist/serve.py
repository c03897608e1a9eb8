"""`tinymnist serve`: a local draw-a-digit page and the JSON API behind it, and a bounded loopback load test.

The server is the standard library's `http.server.ThreadingHTTPServer`: one page, three static files and two
API routes need no framework, and the package gains no runtime dependency. The page's HTML, JS and CSS come
from `static/` in the package (no CDN), read once at start-up. Models are loaded at start-up into a dict; a
request picks one by its key and never names a file, a checkpoint or code. An image goes through the same
preprocessing as `predict` (`predict.ink` and `predict.fit_mnist`, then `data.preprocess` inside
`model.log_probs`).

The API (the page uses it; so can `curl`):

    GET  /api/models      {"default": KEY, "models": [{"key", "model", "role", "about", "params", "rf",
                           "test_acc", "source", "head", "layers": [{"name", "type", "rf", "jump", "shape"}]}]}
    POST /api/predict[?model=KEY][&features=0]
         a PNG (Content-Type: image/png) of at most 1,048,576 pixels, either way round (dark ink on light paper
         or light on dark); the page sends its canvas so, encoded at once with `canvas.toDataURL`:
           curl --data-binary @digit.png -H 'Content-Type: image/png' http://127.0.0.1:8000/api/predict
         or JSON (Content-Type: application/json): {"image": 28 rows of 28 grey values 0-255, "model": KEY}
      -> {"model", "digit", "probabilities": 10 numbers, "image": the 28x28 the model sees,
          "doubt": null, or {"kind", "message"} when the input is unlike one digit (see `doubt`): the digit
                   and probabilities are then the model's guess, not an answer,
          "features": per convolutional layer its most active maps as PNG data URLs (not with features=0)}

A body is at most 1 MiB (413); an error is JSON {"error", "status"}: 400 a bad image or JSON, 404 an unknown
model or page, 408 a body that does not arrive in time, 413 too large, 415 another type, 503 busy (with
Retry-After).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from .errors import TinyMnistError
from .model import REGISTRY, count_params, log_probs, resolve_name
from .predict import ImageError, ImageTooLarge, fit_mnist, ink, open_grey
from .records import WEIGHTS_DIR, load_checkpoint, resolve_checkpoint
from .summary import layer_table
from .usernet import ScoresAsLogProbs

SHIPPED = ("final", "tiny", "Model_6")  # the models the page offers: the two roles and the reference's last step
ABOUT = {  # what each role means, for the page's model menu
    "final": "the final model: the one the main job trains, chosen to meet the final target",
    "tiny": "the tiny model: the smallest that holds the target accuracy with under 4,000 parameters",
}
CHANNELS_SHOWN = 6  # feature maps per layer: the most active channels for the digit

# Bounds on what a client can make the server hold. Every request's memory is bounded by MAX_BODY and
# MAX_PIXELS; WORKERS bounds how many are decoded and run at once, MAX_CONNECTIONS how many are open.
MAX_BODY = 1 << 20  # bytes of a request body (413 beyond)
MAX_PIXELS = 1024 * 1024  # of a posted PNG, from its header (the page sends 280x280; a 4096x4096 one took 420 MB)
MAX_JSON_DEPTH = 8  # nesting of a JSON body (the API's is 3 deep), checked before Python's parser recurses
MAX_DIGITS = 12  # of a JSON integer (a grey value has 3; Python refuses to convert over 4,300 with a ValueError)
WORKERS = 4  # requests decoded and answered at once; the others wait up to QUEUE_SECONDS, then get a 503
QUEUE_SECONDS = 5.0
MAX_CONNECTIONS = 64  # open at once; one more is answered 503 and closed before a thread is started for it
STALL_SECONDS = 10  # a connection that sends nothing for this long (mid-request or idle) is closed
BODY_SECONDS = 10.0  # for a whole body to arrive (408 beyond): sending slowly cannot hold a connection for long
DISCARD_BYTES = 64 << 20  # of a refused body read and dropped, so the client is done sending and reads the 413
DISCARD_SECONDS = 5.0
STATIC = {  # route -> (file in the package's static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
# everything the page loads comes from this server: no CDN, no inline script
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ServeError(TinyMnistError):
    pass


class RequestError(TinyMnistError):
    """A bad request: answered with `status` and a JSON error, and the server carries on. `unread` bytes of
    its body are still on the way: read and dropped after the answer (up to a bound)."""

    def __init__(self, status: HTTPStatus, message: str, unread: int = 0):
        super().__init__(message)
        self.status, self.unread = status, unread


# --- models ---------------------------------------------------------------------------------------------


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


# --- requests -------------------------------------------------------------------------------------------


def decode_png(body: bytes) -> Image.Image:
    """A PNG's bytes -> grey PIL image, as `predict` reads a file (transparent pixels are paper), and at most
    MAX_PIXELS of them, known from the header before any is decoded."""
    if not body.startswith(b"\x89PNG\r\n\x1a\n"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "not a PNG image")
    try:
        return open_grey(io.BytesIO(body), "the PNG", MAX_PIXELS, formats=("PNG",))
    except ImageTooLarge as e:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(e)) from None
    except ImageError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """How deeply a JSON text nests its arrays and objects (brackets inside strings do not count)."""
    steps = torch.frombuffer(bytearray(_STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)), dtype=torch.uint8)
    if not len(steps):
        return 0
    opens = (steps == ord("[")) | (steps == ord("{"))
    return int((opens.int() * 2 - 1).cumsum(0).max())


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number of {len(text.lstrip('-')):,} digits")
    return int(text)


def decode_json(body: bytes):
    """A JSON body, its nesting and its numbers bounded before Python's parser sees them (a body nested 100,000
    deep or a 5,000-digit integer would raise inside it)."""
    if json_depth(body) > MAX_JSON_DEPTH:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(body, parse_int=_bounded_int)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number too long
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad JSON ({e})") from None


def decode_grey(body: bytes) -> tuple[Image.Image, dict]:
    """A JSON body {"image": 28 rows of 28 grey values 0-255, ...} -> grey PIL image, and the JSON object."""
    obj = decode_json(body)
    rows = obj.get("image") if isinstance(obj, dict) else None
    if not (isinstance(rows, list) and len(rows) == 28
            and all(isinstance(r, list) and len(r) == 28 for r in rows)):
        raise RequestError(HTTPStatus.BAD_REQUEST, 'expected {"image": 28 rows of 28 grey values 0-255}')
    values = [v for r in rows for v in r]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
        raise RequestError(HTTPStatus.BAD_REQUEST, "grey values must be whole numbers from 0 to 255")
    return Image.frombytes("L", (28, 28), bytes(values)), obj


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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    server_version = "tinymnist"
    timeout = STALL_SECONDS  # on the socket: a client that stalls, mid-request or idle, is dropped
    wbufsize = 1 << 16  # an answer's head and body leave in one write (`_send` flushes once): Nagle's algorithm
    disable_nagle_algorithm = True  # and delayed ACKs cost ~40 ms per answer when they left in two

    # --- answers
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message, "status": int(status)})

    def log_message(self, format, *args) -> None:  # quiet unless asked (--verbose): one line per request
        if self.server.verbose:
            super().log_message(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line or header, an unknown method) as JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client left
            self._error(HTTPStatus(code), message or HTTPStatus(code).phrase)

    def handle_expect_100(self) -> bool:
        """A client that asks before it sends a body (curl does for large ones) hears at once that it is too
        large, and need not send it."""
        if self._declared_length() > MAX_BODY:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY:,} bytes")
            return False
        super().handle_expect_100()  # "100 Continue", into the write buffer
        self.wfile.flush()
        return True

    def _guard(self, handle) -> None:
        try:
            try:
                handle()
            except RequestError as e:
                self._error(e.status, str(e))
                self._discard(e.unread)
            except OSError:
                raise
            except Exception:  # noqa: BLE001  a bug: logged with its traceback, answered as one, the server lives on
                traceback.print_exc(file=sys.stderr)
                self.close_connection = True
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (logged by the server)")
        except OSError:  # the client left or stalled (a socket timeout is an OSError too)
            self.close_connection = True

    # --- routes
    def do_GET(self) -> None:
        self._guard(self._get)

    def do_HEAD(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path in self.server.static:
            body, content_type = self.server.static[path]
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/api/models":
            self._json(HTTPStatus.OK, {"default": self.server.default,
                                       "models": [m.info for m in self.server.models.values()]})
        elif path == "/api/predict":
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, "POST an image to /api/predict")
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    # --- the body
    def _declared_length(self) -> int:
        """The Content-Length: 0 if there is none, -1 if it is not a number of bytes."""
        length = (self.headers.get("Content-Length") or "0").strip()
        return int(length) if length.isascii() and length.isdigit() and len(length) < 20 else -1

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        n = self._declared_length()
        if n < 0:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if n > MAX_BODY:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY:,} bytes", unread=n)
        return self._receive(n)

    def _receive(self, n: int) -> bytes:
        """`n` bytes of body within BODY_SECONDS in all, however slowly they come (408 after)."""
        deadline = time.monotonic() + BODY_SECONDS
        parts, got = [], 0
        try:
            while got < n:
                self.connection.settimeout(max(0.01, min(self.timeout, deadline - time.monotonic())))
                part = self.rfile.read1(min(n - got, 1 << 16))
                if not part:
                    self.close_connection = True
                    raise RequestError(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
                parts.append(part)
                got += len(part)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"{got:,} of the body's {n:,} bytes came in "
                               f"{BODY_SECONDS:g} s") from None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(parts)

    def _discard(self, n: int) -> None:
        """Reads and drops up to DISCARD_BYTES of a refused body, for at most DISCARD_SECONDS: a client that
        sends its whole body before it reads (as most do) then reads the answer, where closing the connection
        at once would reset it under the client's feet (a broken pipe, the answer lost)."""
        deadline, left = time.monotonic() + DISCARD_SECONDS, min(n, DISCARD_BYTES)
        with contextlib.suppress(OSError):
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                self.connection.settimeout(min(self.timeout, wait))
                part = self.rfile.read1(min(left, 1 << 16))
                if not part:
                    break
                left -= len(part)

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/predict":
            self._read_body()
            raise RequestError(HTTPStatus.NOT_FOUND if url.path not in self.server.static and url.path != "/api/models"
                               else HTTPStatus.METHOD_NOT_ALLOWED, f"cannot POST to {url.path}")
        body = self._read_body()
        query = parse_qs(url.query)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in ("image/png", "application/json"):
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"Content-Type {content_type or 'missing'}: send image/png or application/json")
        if not body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty body")
        features = query.get("features", ["1"])[0] not in ("0", "false", "no")
        with self.server.worker():  # decoding and the model's work: a bounded number at once
            img, obj = (decode_png(body), {}) if content_type == "image/png" else decode_grey(body)
            key = obj.get("model") or query.get("model", [self.server.default])[0]
            if not isinstance(key, str):
                raise RequestError(HTTPStatus.BAD_REQUEST,
                                   "the model is a name: one of " + ", ".join(self.server.models))
            served = self.server.models.get(key)
            if served is None:
                raise RequestError(HTTPStatus.NOT_FOUND,
                                   f"unknown model {key!r}; served: {', '.join(self.server.models)}")
            answer = predict_image(served, img, features)
        self._json(HTTPStatus.OK, answer)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never keeps the process alive
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], models: dict[str, Served], default: str, verbose: bool = False):
        self.models, self.default, self.verbose = models, default, verbose
        folder = resources.files("tinymnist") / "static"
        self.static = {route: (folder.joinpath(name).read_bytes(), ctype) for route, (name, ctype) in STATIC.items()}
        self.static["/favicon.ico"] = (drawn_digit_png(32), "image/png")  # browsers ask for it on every load
        self.workers = threading.BoundedSemaphore(WORKERS)
        self.connections, self.lock = 0, threading.Lock()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

    @contextlib.contextmanager
    def worker(self):
        """Holds one of the WORKERS places for a request's work, waiting up to QUEUE_SECONDS for it (503)."""
        if not self.workers.acquire(timeout=QUEUE_SECONDS):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                               f"busy: {WORKERS} requests are being answered and others wait; try again")
        try:
            yield
        finally:
            self.workers.release()

    def process_request(self, request, client_address) -> None:
        """A thread for the connection, unless MAX_CONNECTIONS are open: then a 503 and it is closed."""
        with self.lock:
            full = self.connections >= MAX_CONNECTIONS
            self.connections += not full
        if full:
            body = json.dumps({"error": f"busy: {MAX_CONNECTIONS} connections are open; try again",
                               "status": 503}).encode()
            head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                    f"{len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
            with contextlib.suppress(OSError):
                request.setblocking(False)  # a few hundred bytes fit any socket buffer: never waits
                request.send(head + body)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed()

    def _closed(self) -> None:
        with self.lock:
            self.connections -= 1


def make_server(models: dict[str, Served], default: str, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False) -> Server:
    try:
        return Server((host, port), models, default, verbose)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


# --- load test ------------------------------------------------------------------------------------------


def drawn_digit_png(size: int = 280) -> bytes:
    """A "7" drawn as two strokes on white, as the page's canvas sends it: the load test's request."""
    img = Image.new("L", (size, size), "white")
    s = size / 280
    ImageDraw.Draw(img).line([(80 * s, 60 * s), (200 * s, 60 * s), (120 * s, 230 * s)], fill=0,
                             width=round(18 * s), joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def load_test(host: str, port: int, body: bytes, model: str, clients: int = 8, requests: int = 250,
              features: bool = True, timeout: float = 30.0) -> dict:
    """`clients` threads, each with one keep-alive connection, each POSTing `body` (a PNG) to /api/predict
    `requests` times: requests/s over the whole run and latency percentiles. Every request is counted:
    answered 200, answered otherwise, or failed."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    path = f"/api/predict?model={model}" + ("" if features else "&features=0")

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        mine, bad = [], []
        for _ in range(requests):
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "image/png"})
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status != 200 or b'"digit"' not in answer:
                    bad.append(f"status {resp.status}")
            except (OSError, http.client.HTTPException) as e:
                bad.append(type(e).__name__)
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            mine.append(time.perf_counter() - start)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return {
        "clients": clients,
        "requests_per_client": requests,
        "requests": len(ms),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": round(seconds, 2),
        "req_s": round(len(ms) / seconds, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 2),
    }


def one_thread_per_request() -> None:
    """Each request runs its few small tensor operations on one torch thread: the concurrent requests are the
    parallelism. Splitting a 28x28 forward pass over threads costs more than it saves, far more on a busy
    machine, where a thread that waits for the others is often descheduled."""
    torch.set_num_threads(1)


def bench_serve(model: str | None = None, clients: int = 8, requests: int = 250) -> dict:
    """Starts the server on a free loopback port in this process and load-tests it with the page's request
    (a 280x280 PNG of a drawn digit, feature maps included)."""
    one_thread_per_request()
    models, default = load_models(model)
    server = make_server(models, default, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = drawn_digit_png()
        load_test("127.0.0.1", server.server_address[1], body, default, clients=clients, requests=2)  # warm-up
        res = load_test("127.0.0.1", server.server_address[1], body, default, clients=clients, requests=requests)
    finally:
        server.shutdown()
        server.server_close()
    return {"kind": "serve", "model": models[default].name, "model_key": default,
            "request": f"POST /api/predict, a {len(body):,}-byte 280x280 PNG of a drawn digit, feature maps included",
            "where": "loopback; the clients run in the server's process", "torch_threads": torch.get_num_threads(),
            **res}


def serve(source: str | None = None, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False,
          entry=None, force: bool = False) -> None:
    """Loads the models, prints the address and serves until interrupted."""
    one_thread_per_request()
    models, default = load_models(source, entry, force)
    server = make_server(models, default, host, port, verbose)
    print(f"serving {', '.join(f'{k} ({m.name})' for k, m in models.items())} at {server.url}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}, not only this machine's loopback", file=sys.stderr)
    try:
        server.serve_forever()  # until Ctrl-C or SIGTERM: cli.main says so in one line and exits 130 or 143
    finally:
        server.server_close()
