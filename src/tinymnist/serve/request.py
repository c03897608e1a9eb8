"""What a client sends to `serve`: a PNG or a JSON body decoded to a grey image within bounds (its pixels known
from the header before any is decoded; a JSON body's nesting and numbers bounded before Python's parser sees
them), and `RequestError`, a bad request answered with its HTTP status. Also the request the page sends, drawn:
the load test's, and the favicon.
"""

from __future__ import annotations

import io
import json
import re
from http import HTTPStatus

import torch
from PIL import Image, ImageDraw

from ..errors import TinyMnistError
from ..predict import ImageError, ImageTooLarge, open_grey

# Bounds on what a request's body may make the server hold, besides its bytes (`server.MAX_BODY`)
MAX_PIXELS = 1024 * 1024  # of a posted PNG, from its header (the page sends 280x280; a 4096x4096 one took 420 MB)
MAX_JSON_DEPTH = 8  # nesting of a JSON body (the API's is 3 deep), checked before Python's parser recurses
MAX_DIGITS = 12  # of a JSON integer (a grey value has 3; Python refuses to convert over 4,300 with a ValueError)


class RequestError(TinyMnistError):
    """A bad request: answered with `status` and a JSON error, and the server carries on. `unread` bytes of
    its body are still on the way: read and dropped after the answer (up to a bound)."""

    def __init__(self, status: HTTPStatus, message: str, unread: int = 0):
        super().__init__(message)
        self.status, self.unread = status, unread


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


def drawn_digit_png(size: int = 280) -> bytes:
    """A "7" drawn as two strokes on white, as the page's canvas sends it: the load test's request, and the favicon."""
    img = Image.new("L", (size, size), "white")
    s = size / 280
    ImageDraw.Draw(img).line([(80 * s, 60 * s), (200 * s, 60 * s), (120 * s, 230 * s)], fill=0,
                             width=round(18 * s), joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
