"""`tinymnist serve`: the JSON API with every bad input, a bounded loopback load test, and the page in a real
headless Chromium driven by Selenium (drawing with pointer events), which saves docs/figures/serve.png."""

import http.client
import io
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import ROOT
from tinymnist import predict, serve
from tinymnist.cli import main
from tinymnist.predict import classify, to_mnist
from tinymnist.records import load_checkpoint, resolve_checkpoint


@pytest.fixture(scope="module")
def server():
    models, default = serve.load_models()
    srv = serve.make_server(models, default, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            headers: dict | None = None) -> tuple[int, dict | bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        hdrs = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body, {**hdrs, **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        is_json = resp.getheader("Content-Type", "").startswith("application/json")
        return resp.status, json.loads(raw) if is_json else raw, dict(resp.getheaders())
    finally:
        conn.close()


def digit_png(strokes: list[list[tuple[int, int]]], size: int = 280, ink: int = 0, paper: int = 255) -> bytes:
    img = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(img)
    for points in strokes:
        draw.line(points, fill=ink, width=18, joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def broken_chunk_png() -> bytes:
    """A white PNG whose IDAT chunk's length field says 5 bytes: Pillow raises SyntaxError while decoding."""
    buf = io.BytesIO()
    Image.new("L", (280, 280), 255).save(buf, "PNG")
    png = buf.getvalue()
    at = png.index(b"IDAT") - 4
    return png[:at] + (5).to_bytes(4, "big") + png[at + 4:]


ONE = [[(140, 50), (140, 230)]]
ZERO = [[(140 + round(60 * math.sin(2 * math.pi * t / 24)), 140 - round(90 * math.cos(2 * math.pi * t / 24)))
         for t in range(25)]]  # an ellipse, one stroke from the top


def predict_png(srv, png: bytes, model: str = "final", query: str = "") -> dict:
    status, answer, _ = request(srv, "POST", f"/api/predict?model={model}{query}", png, "image/png")
    assert status == 200, answer
    return answer


# --- the API ------------------------------------------------------------------------------------------


def test_the_page_and_its_files_come_from_the_package_with_no_cdn(server):
    for path in serve.STATIC:
        status, body, headers = request(server, "GET", path)
        assert status == 200 and body
        assert b"http://" not in body and b"https://" not in body and b"//cdn" not in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_models_lists_the_shipped_models_with_params_accuracy_and_layers(server):
    status, answer, _ = request(server, "GET", "/api/models")
    assert status == 200 and answer["default"] == "final"
    models = {m["key"]: m for m in answer["models"]}
    assert list(models) == ["final", "tiny", "Model_6"]
    assert models["final"]["model"] == load_checkpoint("final")[0] and models["final"]["role"] == "final"
    for m in models.values():
        assert m["params"] > 0 and 98 < m["test_acc"] < 100
        assert m["layers"] and all(layer["rf"] >= 3 for layer in m["layers"])


@pytest.mark.parametrize("model", serve.SHIPPED)
def test_predict_a_drawn_one_and_zero_with_probabilities_image_and_feature_maps(server, model):
    for strokes, digit in ((ONE, 1), (ZERO, 0)):
        answer = predict_png(server, digit_png(strokes), model)
        assert answer["digit"] == digit and answer["model"] == model
        assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-5
        assert len(answer["image"]) == 28 and all(len(row) == 28 for row in answer["image"])
        layers = answer["features"]
        assert [f["layer"] for f in layers] == [m["name"] for m in server.models[model].info["layers"]]
        for f in layers:
            assert 0 < len(f["maps"]) <= serve.CHANNELS_SHOWN and f["rf"] >= 3
            assert all(src.startswith("data:image/png;base64,") for src in f["maps"])


def test_one_preprocessing_path_the_api_and_predict_agree(server, tmp_path):
    png = digit_png(ZERO, ink=255, paper=0)  # light ink on dark paper: to_mnist handles either way round
    (tmp_path / "zero.png").write_bytes(png)
    answer = predict_png(server, png, "tiny", "&features=0")
    assert "features" not in answer
    with Image.open(tmp_path / "zero.png") as img:
        assert answer["image"] == to_mnist(img.convert("L")).tolist()
    [mine] = classify(load_checkpoint("tiny")[1], [tmp_path / "zero.png"])
    assert mine["digit"] == answer["digit"] and abs(mine["probability"] - max(answer["probabilities"])) < 1e-4
    # the 28x28 grey values the API returned, sent back as JSON, give the same answer
    status, again, _ = request(server, "POST", "/api/predict", json.dumps({"image": answer["image"], "model": "tiny"})
                               .encode(), "application/json")
    assert status == 200 and again["digit"] == answer["digit"]


BAD = [
    # (content type, body, expected status, a word of the message)
    ("image/png", b"", 400, "empty"),
    ("image/png", b"GIF89a not a png at all", 400, "not a PNG"),
    ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 400, "not a readable image"),
    ("image/png", digit_png([]), 400, "blank"),
    ("application/json", b"", 400, "empty"),
    ("application/json", b"{not json", 400, "bad JSON"),
    ("application/json", b"[1, 2, 3]", 400, "28 rows"),
    ("application/json", json.dumps({"image": [[0] * 28] * 27}).encode(), 400, "28 rows"),
    ("application/json", json.dumps({"image": [[0] * 27] * 28}).encode(), 400, "28 rows"),
    ("application/json", json.dumps({"image": [[300] * 28] * 28}).encode(), 400, "0 to 255"),
    ("application/json", json.dumps({"image": [["a"] * 28] * 28}).encode(), 400, "0 to 255"),
    ("application/json", json.dumps({"image": [[0] * 28] * 28}).encode(), 400, "blank"),
    ("application/json", json.dumps({"image": [[9] * 28] * 28, "model": ["final"]}).encode(), 400, "a name"),
    ("text/plain", b"7", 415, "Content-Type"),
    (None, b"7", 415, "Content-Type"),
    ("image/jpeg", b"\xff\xd8\xff", 415, "Content-Type"),
    ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * (serve.MAX_BODY + 1), 413, "over"),
    # issue 26, item 10: each was a 500 with a traceback in the log, or a broken pipe
    ("application/json", b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper"),
    ("application/json", b'{"image": [[' + b"1" * 5000 + b"]]}", 400, "5,000 digits"),
    ("application/json", json.dumps({"image": "[" * 100_000}).encode(), 400, "28 rows"),  # brackets in a string
    ("image/png", broken_chunk_png(), 400, "not a readable image"),
    ("application/json", b"[" + b"0," * 10_000_000 + b"0]", 413, "over"),  # 20 MB
]


@pytest.mark.parametrize(("content_type", "body", "status", "word"), BAD,
                         ids=[f"{i}-{b[2]}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_json_4xx_and_the_server_carries_on(server, content_type, body, status, word):
    got, answer, _ = request(server, "POST", "/api/predict", body, content_type)
    assert got == status and answer["status"] == status and word in answer["error"]
    assert predict_png(server, digit_png(ONE))["digit"] == 1


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/api/predict?model=Model_11", 404),  # a registered model that is not served
    ("POST", "/api/predict?model=../../etc/passwd", 404),
    ("POST", "/api/predict?model=results/Model_6/seed1.pt", 404),
    ("GET", "/static/../serve.py", 404),
    ("GET", "/etc/passwd", 404),
    ("GET", "/api/predict", 405),
    ("POST", "/api/models", 405),
    ("POST", "/nowhere", 404),
])
def test_unknown_models_and_paths_are_json_errors_and_name_no_file(server, method, path, status):
    body = digit_png(ONE) if method == "POST" else None
    got, answer, _ = request(server, method, path, body, "image/png" if body else None)
    assert got == status and answer["status"] == status
    assert predict_png(server, digit_png(ONE))["digit"] == 1


def test_an_image_of_too_many_pixels_is_refused_before_decoding(server):
    for size in (5000, 4096):  # 4096x4096 compresses to 88 kB and cost 420 MB to decode
        img = Image.new("1", (size, size), 1)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        got, answer, _ = request(server, "POST", "/api/predict", buf.getvalue(), "image/png")
        assert got == 413 and f"{size}x{size} pixels" in answer["error"] and "1,048,576" in answer["error"]
    assert predict_png(server, digit_png([[(500, 180), (500, 840)]], size=1024), query="&features=0")["digit"] == 1


def test_a_broken_connection_leaves_the_server_serving(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as s:
        s.sendall(b"POST /api/predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n\x89PNG")
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as s:
        s.sendall(b"BREW /pot HTTP/1.1\r\n\r\n")
        answer = b"".join(iter(lambda: s.recv(1000), b""))  # the server closes the connection after it
        assert answer.startswith(b"HTTP/1.1 501") and b'"error":' in answer and b"application/json" in answer
    assert predict_png(server, digit_png(ONE))["digit"] == 1


def ellipse(cx: int, cy: int, rx: int, ry: int) -> list[tuple[int, int]]:
    return [(cx + round(rx * math.sin(2 * math.pi * t / 24)), cy - round(ry * math.cos(2 * math.pi * t / 24)))
            for t in range(25)]


def scribble(seed: int, n: int, low: int, high: int) -> list[list[tuple[int, int]]]:
    rng = random.Random(seed)
    return [[(rng.randint(low, high), rng.randint(low, high)) for _ in range(n)]]


DOT = [[(140, 140), (141, 140)]]
TWO_DIGITS = [[(60, 60), (60, 220)], ellipse(180, 140, 50, 80)]  # "1" and "0" side by side
SCRIBBLE = scribble(1, 40, 40, 240)
PAST_EVERY_EDGE = [[(140, 140), (-20, 40), (300, 120), (-20, 200), (140, 300), (140, -20)]]  # from inside the pad
UNLIKE = [(DOT, "small"), (SCRIBBLE, "ink"), (TWO_DIGITS, "parts"), (PAST_EVERY_EDGE, "edges")]


def test_inputs_unlike_one_digit_are_said_so_not_answered_with_confidence(server):
    for strokes, kind in UNLIKE:
        answer = predict_png(server, digit_png(strokes), query="&features=0")
        assert answer["doubt"] and answer["doubt"]["kind"] == kind, (kind, answer["doubt"])
    for strokes in (ONE, ZERO, [[(80, 60), (200, 60), (120, 230)], [(110, 150), (190, 150)]]):
        answer = predict_png(server, digit_png(strokes), query="&features=0")
        assert answer["doubt"] is None
        again = request(server, "POST", "/api/predict", json.dumps({"image": answer["image"]}).encode(),
                        "application/json")[1]  # the model's 28x28 view, sent back, is one digit too
        assert again["doubt"] is None
    probs = torch.tensor([0.05, 0.5, 0.4] + [0.05 / 7] * 7)
    image = predict.fit_mnist(predict.ink(Image.open(io.BytesIO(digit_png(ONE))).convert("L")))
    assert serve.doubt(image.float(), image, probs) == {"kind": "unsure", "message": "not sure: 1 (50 %) or 2 (40 %)"}


def test_the_favicon_and_what_the_page_explains(server):
    status, body, headers = request(server, "GET", "/favicon.ico")
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    assert b'rel="icon" href="/favicon.ico"' in request(server, "GET", "/")[1]
    models = {m["key"]: m for m in request(server, "GET", "/api/models")[1]["models"]}
    assert "final target" in models["final"]["about"] and "4,000" in models["tiny"]["about"]
    assert models["Model_6"]["about"].startswith("LR schedule")  # its step's line in the registry
    # the answer sees all 28x28 pixels though the last maps see 20x20: global pooling, named
    assert models["final"]["rf"] == 28 and models["final"]["layers"][-1]["rf"] == 20
    assert models["final"]["head"] == {"name": "gap", "type": "avg-pool 5", "rf": 28}
    trans = next(la for la in models["Model_6"]["layers"] if la["name"] == "trans1")
    assert trans["type"].startswith("conv 1x1")


def test_serve_logs_with_verbose_and_ends_on_a_signal_with_the_interrupted_line():
    import selectors
    import signal

    procs = {sig: subprocess.Popen([sys.executable, "-m", "tinymnist", "serve", "--port", "0", "--verbose"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for sig in (signal.SIGINT, signal.SIGTERM)}  # started together: torch's import takes seconds
    try:
        for sig, proc in procs.items():
            with selectors.DefaultSelector() as sel:  # wait for the address it prints
                sel.register(proc.stdout, selectors.EVENT_READ)
                assert sel.select(timeout=120), "serve printed nothing"
            line = proc.stdout.readline()
            assert line.startswith("serving "), line + proc.stderr.read()
            url = line.split(" at ")[-1].strip()
            conn = http.client.HTTPConnection(url.split("/")[2], timeout=30)
            conn.request("GET", "/api/models")
            assert conn.getresponse().status == 200
            conn.close()
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
            assert '"GET /api/models HTTP/1.1" 200' in err  # --verbose: one line per request
            assert err.rstrip().endswith("tinymnist: interrupted") and "Traceback" not in err, err
            assert proc.returncode == 128 + sig
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def _raw(srv, data: bytes, timeout: float = 10) -> bytes:
    """Sends `data` on a new connection and reads until the server closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=timeout) as s:
        s.sendall(data)
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_a_body_that_stops_coming_is_answered_408_in_time(server, monkeypatch):
    monkeypatch.setattr(serve.server, "BODY_SECONDS", 0.5)  # where the handler reads it
    start = time.monotonic()
    answer = _raw(server, b"POST /api/predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                  b"\x89PNG")
    assert answer.startswith(b"HTTP/1.1 408") and b"4 of the body's 5,000 bytes" in answer
    assert time.monotonic() - start < 5


def test_a_body_too_large_is_refused_before_it_is_sent_when_the_client_asks(server):
    answer = _raw(server, b"POST /api/predict HTTP/1.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 20000000\r\nExpect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer and b"Connection: close" in answer
    got, answer, _ = request(server, "POST", "/api/predict", digit_png(ONE), "image/png", {"Expect": "100-continue"})
    assert got == 200 and answer["digit"] == 1  # a body within bounds is asked for and answered


class Held:
    """Within `with`, every request to a served model waits inside its work until `release`; counts the
    requests that entered and those that left."""

    def __init__(self, served):
        self.served, self.gate, self.lock, self.first = served, threading.Event(), threading.Lock(), threading.Event()
        self.entered = self.left = 0

    def __enter__(self):
        run = self.served.run

        def held(*args, **kwargs):
            with self.lock:
                self.entered += 1
            self.first.set()
            self.gate.wait(30)
            try:
                return run(*args, **kwargs)
            finally:
                with self.lock:
                    self.left += 1

        self.served.run = held
        return self

    def release(self) -> None:
        self.gate.set()

    def wait_all_left(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.left < self.entered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.left == self.entered

    def __exit__(self, *exc):
        self.gate.set()
        del self.served.run  # the method again


def test_work_is_bounded_and_a_request_beyond_it_is_told_to_come_back(server, monkeypatch):
    monkeypatch.setattr(serve.server, "WORKERS", 1)  # where the server reads them
    monkeypatch.setattr(serve.server, "QUEUE_SECONDS", 0.2)
    srv = serve.make_server(server.models, server.default, "127.0.0.1", 0)  # the same models, other bounds
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with Held(srv.models["final"]) as held:
            first = []
            thread = threading.Thread(target=lambda: first.append(predict_png(srv, digit_png(ONE))))
            thread.start()
            assert held.first.wait(30)  # the first request is in the model's work, holding the one place
            got, answer, headers = request(srv, "POST", "/api/predict", digit_png(ONE), "image/png")
            assert got == 503 and "busy" in answer["error"] and headers["Retry-After"] == "1"
            held.release()
            thread.join(30)
        assert first[0]["digit"] == 1 and predict_png(srv, digit_png(ONE))["digit"] == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_connections_are_bounded(server, monkeypatch):
    import socket

    monkeypatch.setattr(serve.server, "MAX_CONNECTIONS", 2)  # where the server reads it
    srv = serve.make_server(server.models, server.default, "127.0.0.1", 0)  # the same models, other bounds
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10) for _ in range(2)]
        try:  # the server accepts in order: these two hold the places
            answer = _raw(srv, b"GET /api/models HTTP/1.1\r\n\r\n")
        except ConnectionResetError:  # a reset can overtake the 503 on its way
            answer = b""
        assert answer.startswith(b"HTTP/1.1 503") or answer == b""
        for s in idle:
            s.close()
        deadline = time.monotonic() + 10
        while srv.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert request(srv, "GET", "/api/models")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_each_answer_leaves_in_one_write(server, monkeypatch):
    """Head and body in one write: in two, Nagle's algorithm held the body back for the client's delayed ACK,
    about 40 ms per answer on a kept-alive connection."""
    import socket

    port, writes = server.server_address[1], []
    for name in ("send", "sendall"):
        original = getattr(socket.socket, name)

        def counted(self, data, *args, _original=original):
            if self.getsockname()[1] == port:  # the server's end of a connection
                writes.append(bytes(data[:12]))
            return _original(self, data, *args)

        monkeypatch.setattr(socket.socket, name, counted)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for method, path, body in (("GET", "/", None), ("GET", "/api/models", None),
                                   ("POST", "/api/predict", digit_png(ONE)), ("GET", "/nowhere", None)):
            writes.clear()
            conn.request(method, path, body, {"Content-Type": "image/png"} if body else {})
            conn.getresponse().read()
            assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1"), (path, writes)
    finally:
        conn.close()


def test_load_on_loopback_no_errors_no_request_lost(server):
    start = time.perf_counter()
    res = serve.load_test("127.0.0.1", server.server_address[1], digit_png(ONE), "final", clients=8, requests=60)
    assert res["requests"] == 8 * 60 and res["errors"] == 0, res
    assert res["p99_ms"] >= res["p50_ms"] > 0 and time.perf_counter() - start < 120


def test_the_cli_serves_the_shipped_models_and_a_checkpoint_file(tmp_path):
    shutil.copyfile(resolve_checkpoint("tiny"), tmp_path / "mine.pt")
    models, default = serve.load_models(str(tmp_path / "mine.pt"))
    assert default == "mine.pt" and list(models) == ["final", "tiny", "Model_6", "mine.pt"]
    assert models["mine.pt"].info["source"] == "checkpoint mine.pt" and models["mine.pt"].info["test_acc"] is None
    assert serve.load_models("tiny")[1] == "tiny" and serve.load_models("Model_41")[1] == "final"
    assert main(["serve", str(tmp_path / "missing.pt")]) == 2 and main(["serve", "Model_11"]) == 2  # not shipped


# --- the page in a real browser ----------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FIGURE = ROOT / "docs" / "figures" / "serve.png"


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test cannot run on CI: {reason}")
    pytest.skip(reason)


def _ensure_chromium() -> None:
    """Debian's chromium and chromium-driver: installed if missing and we can (root with apt-get)."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("chromium and chromedriver are missing and cannot be installed here (needs root and "
                     "apt-get): apt-get install chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode:
            _unavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[browser]')")
    _ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,960",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition: str, timeout: float = 20.0):
    """Polls a JS expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {condition};")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {condition}")


def _draw(driver, strokes: list[list[tuple[int, int]]], wait: bool = True):
    """Draws strokes on the pad with real pointer input (a pen): points in canvas pixels, 0-280, wherever and
    however large the pad is shown; then waits for the answer to the last stroke."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.interaction import POINTER_PEN
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    scale = driver.execute_script("return arguments[0].getBoundingClientRect().width", pad) / 280
    before = int(driver.execute_script("return document.body.dataset.answers"))
    actions = ActionBuilder(driver, mouse=PointerInput(POINTER_PEN, "pen"), duration=10)
    for points in strokes:
        (x0, y0), rest = points[0], points[1:]
        actions.pointer_action.move_to(pad, round((x0 - 140) * scale), round((y0 - 140) * scale)).pointer_down()
        for x, y in rest:
            actions.pointer_action.move_to(pad, round((x - 140) * scale), round((y - 140) * scale))
        actions.pointer_action.pointer_up()
    actions.perform()
    if wait:
        _wait(driver, f"document.body.dataset.busy === '0' && Number(document.body.dataset.answers) > {before}")


def _shown(driver) -> dict:
    return driver.execute_script("""return {
        digit: document.getElementById('digit').textContent,
        probs: [...document.querySelectorAll('#bars li')].map(li => Number(li.dataset.p)),
        layers: [...document.querySelectorAll('#features .layer')].map(d => d.querySelector('b').textContent),
        maps: [...document.querySelectorAll('#features img')].filter(i => i.complete && i.naturalWidth > 0).length,
        seen: Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data)
              .filter((v, i) => i % 4 === 0 && v > 0).length,
        info: document.getElementById('model-info').textContent,
        status: document.getElementById('status').textContent};""")


def _clear(driver):
    driver.find_element("id", "clear").click()
    assert _shown(driver)["digit"] == "?"


@pytest.mark.browser
def test_in_a_real_browser_drawing_shows_prediction_view_and_feature_maps_for_each_model(server, browser):
    from selenium.webdriver.support.ui import Select

    start = time.perf_counter()
    browser.get(server.url)
    _wait(browser, "document.body.dataset.ready === '1'")
    select = Select(browser.find_element("id", "model"))
    assert [o.get_attribute("value") for o in select.options] == ["final", "tiny", "Model_6"]
    for key in ("final", "tiny", "Model_6"):
        select.select_by_value(key)
        info = server.models[key].info
        assert f"{info['params']:,} parameters" in _shown(browser)["info"]
        assert f"test accuracy {info['test_acc']:.2f} %" in _shown(browser)["info"]
        for strokes, digit in ((ONE, "1"), (ZERO, "0")):
            _clear(browser)
            _draw(browser, strokes)
            shown = _shown(browser)
            assert shown["digit"] == digit, shown["status"]
            assert len(shown["probs"]) == 10 and abs(sum(shown["probs"]) - 1) < 1e-5
            assert max(shown["probs"]) == shown["probs"][int(digit)]
            assert shown["seen"] > 20  # the model's 28x28 view has ink
            assert [t.split()[0] for t in shown["layers"]] == [la["name"] for la in info["layers"]]
            assert all("RF" in t for t in shown["layers"]) and shown["maps"] >= len(info["layers"])
    # switching the model with a digit on the pad asks the new model
    before = int(browser.execute_script("return document.body.dataset.answers"))
    select.select_by_value("final")
    _wait(browser, f"document.body.dataset.busy === '0' && Number(document.body.dataset.answers) > {before}")
    assert _shown(browser)["digit"] == "0" and "Model_41" in _shown(browser)["status"]
    # a seven drawn in two strokes, for the screenshot in the README
    _clear(browser)
    _draw(browser, [[(80, 60), (200, 60), (120, 230)], [(110, 150), (190, 150)]])
    assert _shown(browser)["digit"] == "7"
    _wait(browser, "[...document.querySelectorAll('#features img')].every(i => i.complete)")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(FIGURE))
    assert FIGURE.stat().st_size > 10_000
    print(f"browser test: {time.perf_counter() - start:.1f} s")


SEVEN = [[(80, 60), (200, 60), (120, 230)], [(110, 150), (190, 150)]]
# the page's requests to /api/predict: when each was sent, and the most in flight at once (an aborted one is
# no longer in flight)
LOG_REQUESTS = """
    window.sent = []; window.maxOpen = 0; let open = 0;
    const fetch0 = window.fetch;
    window.fetch = function (url, options) {
        if (!String(url).startsWith('/api/predict')) return fetch0.apply(this, arguments);
        window.sent.push({t: performance.now(), url: String(url)});
        window.maxOpen = Math.max(window.maxOpen, ++open);
        let done = false;
        const close = () => { if (!done) { done = true; open -= 1; } };
        options.signal.addEventListener('abort', close);
        const answer = fetch0.apply(this, arguments);
        answer.then(close, close);
        return answer;
    };"""
WATCH_DIGIT = """
    window.digits = [];
    new MutationObserver(() => window.digits.push(document.getElementById('digit').textContent))
        .observe(document.getElementById('digit'), {childList: true, characterData: true, subtree: true});"""
LAYOUT = """
    const box = (id) => document.getElementById(id).getBoundingClientRect();
    return {width: innerWidth, height: innerHeight, scroll: document.documentElement.scrollWidth,
            pad: box('pad').toJSON(), digit: box('digit').toJSON(),
            rights: [...document.querySelectorAll('#features .layer img')].map(i => i.getBoundingClientRect().right),
            ink: Array.from(document.getElementById('pad').getContext('2d').getImageData(80, 140, 1, 1).data)};"""


@pytest.mark.browser
def test_in_a_real_browser_answers_are_fresh_few_honest_and_fit_a_phone(server, browser):
    from selenium.webdriver.support.ui import Select

    start = time.perf_counter()
    browser.get(server.url)
    _wait(browser, "document.body.dataset.ready === '1'")
    visible = "return getComputedStyle(document.getElementById('working')).visibility"
    # item 16: the pad is encoded at once, not by canvas.toBlob, which Chromium may put off for seconds
    browser.execute_script("HTMLCanvasElement.prototype.toBlob = function () {};")  # never calls back
    _draw(browser, ONE)
    assert _shown(browser)["digit"] == "1" and browser.execute_script(visible) == "hidden"

    # item 18: while the pen moves, one request at a time, at most every 150 ms, without feature maps; on
    # pen-up one with them
    browser.execute_script(LOG_REQUESTS)
    _clear(browser)
    _draw(browser, [[(40 + 2 * i, 140 + round(60 * math.sin(i / 12))) for i in range(100)]])  # about 1 s
    sent = browser.execute_script("return window.sent")
    previews = [r["t"] for r in sent if "features=0" in r["url"]]
    assert "features=0" not in sent[-1]["url"] and len(previews) == len(sent) - 1 >= 3, sent
    assert min(b - a for a, b in itertools.pairwise(previews)) >= 140 and browser.execute_script(
        "return window.maxOpen") == 1
    assert len(sent) <= (sent[-1]["t"] - sent[0]["t"]) / 150 + 2 and _shown(browser)["maps"] > 0

    # item 15: Clear while the answer is on its way: it is dropped when it comes, and "working" shows meanwhile
    with Held(server.models["final"]) as held:
        _clear(browser)
        _draw(browser, ONE, wait=False)
        assert held.first.wait(30) and browser.execute_script(visible) == "visible"
        counts = browser.execute_script("return [document.body.dataset.answers, document.body.dataset.dropped]")
        browser.find_element("id", "clear").click()
        browser.execute_script(WATCH_DIGIT)
        held.release()
        held.wait_all_left()
    # the answers came and were dropped (or never arrived, their requests aborted): nothing but "?" was shown
    _wait(browser, f"Number(document.body.dataset.answers) > {counts[0]} || "
                   f"Number(document.body.dataset.dropped) > {counts[1]}")
    assert _shown(browser)["digit"] == "?" and set(browser.execute_script("return window.digits")) <= {"?"}
    assert browser.execute_script(visible) == "hidden" and _shown(browser)["status"].startswith("Draw a digit")
    _draw(browser, ZERO)
    assert _shown(browser)["digit"] == "0"

    # item 19: what is unlike one digit is said so, and nothing of an earlier answer stays beside it
    _clear(browser)
    _draw(browser, SEVEN)
    assert _shown(browser)["digit"] == "7"
    for strokes, words in ((PAST_EVERY_EDGE, "every edge"), (None, ""), (DOT, "too small"),
                           (None, ""), (TWO_DIGITS, "2 separate marks")):
        if strokes is None:
            _clear(browser)
            continue
        _draw(browser, strokes)  # the first over the 7
        shown = _shown(browser)
        assert shown["digit"] == "?" and words in shown["status"] and sum(shown["probs"]) == 0, shown

    # item 20: a phone's width: no sideways scrolling, the maps wrap, the pad scales to the width and the
    # answer is in view above it while drawing; strokes land where the pen went
    for width, height in ((390, 844), (320, 568)):
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True})
        try:
            _wait(browser, f"innerWidth === {width}")
            _clear(browser)
            _draw(browser, ZERO)
            layout = browser.execute_script(LAYOUT)
            assert _shown(browser)["digit"] == "0" and layout["ink"][0] < 128  # ink at (80, 140) of the pad
            assert layout["scroll"] <= width and layout["rights"] and max(layout["rights"]) <= width, layout
            assert width - 40 <= layout["pad"]["width"] <= width and layout["pad"]["bottom"] <= height, layout
            assert layout["digit"]["top"] >= 0 and layout["digit"]["bottom"] <= layout["pad"]["top"], layout
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # item 21: what RF, the layers' names and the roles mean
    rf = browser.execute_script("return document.querySelector('#model-info abbr').title")
    assert "conv5, RF 20" in rf and "gap (avg-pool 5)" in rf and "all 28x28 pixels" in rf
    legend = browser.execute_script("return document.querySelector('.legend').textContent")
    assert all(server.models[k].info["about"] in legend for k in serve.SHIPPED) and "trans1" in legend
    Select(browser.find_element("id", "model")).select_by_value("Model_6")
    _clear(browser)
    _draw(browser, ONE)
    rows = browser.execute_script("return [...document.querySelectorAll('#features .layer .name')].map(d => "
                                  "[d.textContent, d.title])")
    trans = next(r for r in rows if r[0].startswith("trans1"))
    assert "conv 1x1 16->8" in trans[0] and "receptive field 6" in trans[1]
    print(f"browser test: {time.perf_counter() - start:.1f} s")
