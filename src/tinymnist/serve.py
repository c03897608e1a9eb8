"""`tinymnist serve`: a local draw-a-digit page and the JSON API behind it, and a bounded loopback load test.

The server is the standard library's `http.server.ThreadingHTTPServer`: one page, three static files and two
API routes need no framework, and the package gains no runtime dependency. The page's HTML, JS and CSS come
from `static/` in the package (no CDN), read once at start-up. Models are loaded at start-up into a dict; a
request picks one by its key and never names a file, a checkpoint or code. An image goes through the same
preprocessing as `predict` (`predict.to_mnist`, then `data.preprocess` inside `model.log_probs`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
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
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from torch import nn

from .errors import TinyMnistError
from .model import REGISTRY, ScoresAsLogProbs, count_params, log_probs, resolve_name
from .predict import to_mnist
from .records import WEIGHTS_DIR, load_checkpoint, resolve_checkpoint
from .summary import layer_table

SHIPPED = ("final", "tiny", "Model_6")  # the models the page offers: the two roles and the reference's last step
MAX_BODY = 1 << 20  # bytes of a request body (413 beyond)
MAX_PIXELS = 4096 * 4096  # of a decoded PNG: a larger one is refused before its pixels are decoded
CHANNELS_SHOWN = 6  # feature maps per layer: the most active channels for the digit
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
    """A bad request: answered with `status` and a JSON error, and the server carries on."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


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
            served.conv_layers[row.name] = {"rf": row.rf, "jump": row.jump, "shape": row.output_shape}
            blocks[row.name].register_forward_hook(served._hook(row.name))
    meta_path = resolve_checkpoint(source).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.parent == WEIGHTS_DIR and meta_path.is_file() else {}
    served.info = {
        "key": key,
        "model": name,
        "role": meta.get("role"),
        "params": count_params(model),
        "rf": rows[-1].rf,
        "test_acc": meta.get("test_acc"),  # the shipped weights' recorded test accuracy (seed 1, last epoch)
        "source": "shipped weights" if meta else f"checkpoint {Path(source).name}",
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
    """A PNG's bytes -> grey PIL image; transparent pixels count as paper (white), as in `predict`."""
    if not body.startswith(b"\x89PNG\r\n\x1a\n"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "not a PNG image")
    try:
        with Image.open(io.BytesIO(body), formats=["PNG"]) as img:
            if img.width * img.height > MAX_PIXELS:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"image of {img.width}x{img.height} pixels; at most {MAX_PIXELS:,} pixels")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                paper = Image.new("RGBA", img.size, "white")
                img = Image.alpha_composite(paper, img.convert("RGBA"))
            return img.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"not a readable PNG image ({e})") from None


def decode_grey(body: bytes) -> tuple[Image.Image, dict]:
    """A JSON body {"image": 28 rows of 28 grey values 0-255, ...} -> grey PIL image, and the JSON object."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad JSON ({e})") from None
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
    """The API's answer for one grey image: digit, probabilities, the 28x28 the model sees, feature maps."""
    try:
        image = to_mnist(img)
    except TinyMnistError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None
    probs, maps = served.run(image, features)
    probs = probs / probs.sum()  # exp of log-softmax sums to 1 up to float rounding
    out = {
        "model": served.key,
        "digit": int(probs.argmax()),
        "probabilities": [float(p) for p in probs],
        "image": image.tolist(),  # 28 rows of 28 grey values: MNIST-style, bright ink on black
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    server_version = "tinymnist"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped

    # --- answers
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

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

    def _guard(self, handle) -> None:
        try:
            try:
                handle()
            except RequestError as e:
                self._error(e.status, str(e))
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
        if path in STATIC:
            body, content_type = self.server.static[path]
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/api/models":
            self._json(HTTPStatus.OK, {"default": self.server.default,
                                       "models": [m.info for m in self.server.models.values()]})
        elif path == "/api/predict":
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, "POST an image to /api/predict")
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        try:
            n = int(length) if length is not None else 0
        except ValueError:
            n = -1
        if n < 0:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if n > MAX_BODY:
            self.close_connection = True
            left = n if n <= 16 * MAX_BODY else 0  # read what was sent, so the client sees the answer, not a reset
            while left > 0 and (chunk := self.rfile.read(min(1 << 16, left))):
                left -= len(chunk)
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY:,} bytes")
        body = self.rfile.read(n)
        if len(body) < n:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        return body

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/predict":
            self._read_body()
            raise RequestError(HTTPStatus.NOT_FOUND if url.path not in STATIC and url.path != "/api/models"
                               else HTTPStatus.METHOD_NOT_ALLOWED, f"cannot POST to {url.path}")
        body = self._read_body()
        query = parse_qs(url.query)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in ("image/png", "application/json"):
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"Content-Type {content_type or 'missing'}: send image/png or application/json")
        if not body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty body")
        obj = {}
        if content_type == "image/png":
            img = decode_png(body)
        else:
            img, obj = decode_grey(body)
        key = obj.get("model") or query.get("model", [self.server.default])[0]
        if not isinstance(key, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the model is a name: one of " + ", ".join(self.server.models))
        served = self.server.models.get(key)
        if served is None:
            raise RequestError(HTTPStatus.NOT_FOUND,
                               f"unknown model {key!r}; served: {', '.join(self.server.models)}")
        features = query.get("features", ["1"])[0] not in ("0", "false", "no")
        self._json(HTTPStatus.OK, predict_image(served, img, features))


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never keeps the process alive
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], models: dict[str, Served], default: str, verbose: bool = False):
        self.models, self.default, self.verbose = models, default, verbose
        folder = resources.files("tinymnist") / "static"
        self.static = {route: (folder.joinpath(name).read_bytes(), ctype) for route, (name, ctype) in STATIC.items()}
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"


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
    server = make_server(models, default, host, port)
    print(f"serving {', '.join(f'{k} ({m.name})' for k, m in models.items())} at {server.url}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}, not only this machine's loopback", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
