"""`bench --serve`: a bounded loopback load test of `serve`, its clients threads in the server's process, each
with one keep-alive connection: requests per second and latency percentiles, every request counted.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time

import torch

from .models import load_models
from .request import drawn_digit_png
from .server import make_server, one_thread_per_request


def load_test(host: str, port: int, body: bytes, model: str, *, clients: int = 8, requests: int = 250,
              features: bool = True, timeout: float = 30.0) -> dict:
    """`clients` threads, each with one keep-alive connection, each POSTing `body` (a PNG) to /api/predict
    `requests` times: requests/s over the whole run and latency percentiles. Every request is counted:
    answered 200, answered otherwise, or failed. The options after `model` are keyword-only."""
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
