"""The HTTP side of `serve`: the standard library's `ThreadingHTTPServer` with one handler for the page, its
static files and the two API routes, and the bounds on what a client can make it hold (a body's bytes and
time, the requests worked on and the connections open at once); `serve` runs it until interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import torch

from ..errors import TinyMnistError
from .models import Served, load_models, predict_image
from .request import RequestError, decode_grey, decode_png, drawn_digit_png

# Bounds on what a client can make the server hold. Every request's memory is bounded by MAX_BODY and
# `request.MAX_PIXELS`; WORKERS bounds how many are decoded and run at once, MAX_CONNECTIONS how many are open.
MAX_BODY = 1 << 20  # bytes of a request body (413 beyond)
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


def one_thread_per_request() -> None:
    """Each request runs its few small tensor operations on one torch thread: the concurrent requests are the
    parallelism. Splitting a 28x28 forward pass over threads costs more than it saves, far more on a busy
    machine, where a thread that waits for the others is often descheduled."""
    torch.set_num_threads(1)


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
