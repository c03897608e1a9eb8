"""`tinymnist serve`: a local draw-a-digit page and the JSON API behind it, and a bounded loopback load test.

The server is the standard library's `http.server.ThreadingHTTPServer`: one page, three static files and two
API routes need no framework, and the package gains no runtime dependency. The page's HTML, JS and CSS come
from `static/` in the package (no CDN), read once at start-up. Models are loaded at start-up into a dict; a
request picks one by its key and never names a file, a checkpoint or code. An image goes through the same
preprocessing as `predict` (`predict.ink` and `predict.fit_mnist`, then `data.preprocess` inside
`model.log_probs`).

    request.py   what a client sends: a PNG or JSON body decoded within bounds; `RequestError`
    models.py    the models served, loaded at start-up; the answer for one image; `doubt` about the input
    server.py    the HTTP handler and server, the bounds on connections, bodies and work; `serve`
    loadtest.py  `bench --serve`: the loopback load test (`load_test`, `bench_serve`)

Each name is importable from here; a bound is read in the module that defines it (`server.WORKERS`), so a
test that changes one changes it there.

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

from .loadtest import bench_serve, load_test
from .models import (
    ABOUT,
    CHANNELS_SHOWN,
    MAX_INK,
    PART,
    SHIPPED,
    SMALL,
    UNSURE,
    Served,
    count_parts,
    doubt,
    load_models,
    load_served,
    predict_image,
)
from .request import (
    MAX_DIGITS,
    MAX_JSON_DEPTH,
    MAX_PIXELS,
    RequestError,
    decode_grey,
    decode_json,
    decode_png,
    drawn_digit_png,
    json_depth,
)
from .server import (
    BODY_SECONDS,
    DISCARD_BYTES,
    DISCARD_SECONDS,
    MAX_BODY,
    MAX_CONNECTIONS,
    QUEUE_SECONDS,
    SECURITY_HEADERS,
    STALL_SECONDS,
    STATIC,
    WORKERS,
    Handler,
    ServeError,
    Server,
    make_server,
    one_thread_per_request,
    serve,
)

__all__ = [
    "ABOUT", "BODY_SECONDS", "CHANNELS_SHOWN", "DISCARD_BYTES", "DISCARD_SECONDS", "MAX_BODY", "MAX_CONNECTIONS",
    "MAX_DIGITS", "MAX_INK", "MAX_JSON_DEPTH", "MAX_PIXELS", "PART", "QUEUE_SECONDS", "SECURITY_HEADERS", "SHIPPED",
    "SMALL", "STALL_SECONDS", "STATIC", "UNSURE", "WORKERS", "Handler", "RequestError", "ServeError", "Served",
    "Server", "bench_serve", "count_parts", "decode_grey", "decode_json", "decode_png", "doubt", "drawn_digit_png",
    "json_depth", "load_models", "load_served", "load_test", "make_server", "one_thread_per_request",
    "predict_image", "serve",
]
