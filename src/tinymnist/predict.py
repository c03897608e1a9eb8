"""Classifying image files of handwritten digits: converting a photo or scan the way MNIST digits were made.

MNIST digits are grey, bright ink on black, size-normalised to fit a 20x20 box with their aspect ratio kept,
and centred by centre of mass in a 28x28 field. `to_mnist` does the same to any PNG or JPEG, whichever way
round its ink and paper are.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import TinyMnistError
from .files import describe_missing
from .model import log_probs


class ImageError(TinyMnistError):
    pass


class ImageTooLarge(ImageError):
    """More pixels than accepted, known from the header alone."""


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width).float()


FORMATS = ("PNG", "JPEG")  # the raster formats the README promises; others (EPS!) may hand the file to other programs
MAX_PIXELS = 25_000_000  # a 50-megapixel photo's worth is too much to decode for a 28x28 digit; 5000x5000 is plenty


def load_grey(path: Path) -> Image.Image:
    """Reads a PNG or JPEG file as a grey image; anything else, or anything damaged or huge, is an ImageError."""
    if not path.is_file():
        raise ImageError(f"{path} {describe_missing(path)}")
    return open_grey(path, str(path))


def open_grey(source: Path | BinaryIO, name: str, max_pixels: int = MAX_PIXELS,
              formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """Decodes an image (a file or its bytes as a stream) as a grey image: one of `formats`, of at most
    `max_pixels` pixels (decided from the header, before any pixel is decoded); whatever is damaged, huge or
    of another format is an ImageError that names the image as `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            img = Image.open(source, formats=formats)
        with img:
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{name} is {img.width}x{img.height} pixels, more than the {max_pixels:,} "
                                    "accepted; crop or shrink it")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                paper = Image.new("RGBA", img.size, "white")  # transparent means paper
                img = Image.alpha_composite(paper, img.convert("RGBA"))
            return img.convert("L")
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours, refused in Image.open
        raise ImageTooLarge(f"{name} has more than {max_pixels:,} pixels; crop or shrink it") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not a readable image (not a {' or '.join(formats)} file)") from None
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (decoders raise many kinds of errors on damaged files: SyntaxError...)
        raise ImageError(f"{name} is not a readable image ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def ink(img: Image.Image) -> torch.Tensor:
    """A grey PIL image -> (H, W) float tensor of its ink, bright (peak 255) on zero paper, whichever way round
    its ink and paper were; an ImageError if there is none."""
    x = _to_tensor(img)
    border = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])
    if border.median() > 127:  # light paper: make the ink the bright part, as in MNIST
        x = 255 - x
    x = (x - torch.cat([x[0], x[-1], x[:, 0], x[:, -1]]).median()).clamp_(min=0)  # paper to zero
    peak = x.max()
    if peak < 16:
        raise ImageError("no digit found (the image is blank)")
    return x * (255 / peak)


def to_mnist(img: Image.Image) -> torch.Tensor:
    """A grey PIL image -> (28, 28) uint8 tensor in MNIST's format."""
    return fit_mnist(ink(img))


def fit_mnist(x: torch.Tensor) -> torch.Tensor:
    """An image's `ink` -> (28, 28) uint8 tensor: the ink fitted to a 20x20 box, centred by mass in 28x28."""
    ys, xs = torch.nonzero(x > 0.2 * 255, as_tuple=True)  # the ink's bounding box
    top, bottom, left, right = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    crop = x[top:bottom, left:right]
    h, w = crop.shape
    scale = 20 / max(h, w)  # the longer side becomes 20 pixels, the aspect ratio is kept
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)
    small = small[0, 0].clamp_(0, 255)
    # centre of mass of the ink to (14, 14), where MNIST digits have it on average
    total = small.sum()
    cy = (small.sum(1) * torch.arange(small.shape[0])).sum() / total
    cx = (small.sum(0) * torch.arange(small.shape[1])).sum() / total
    oy = min(max(round(14 - cy.item()), 0), 28 - small.shape[0])
    ox = min(max(round(14 - cx.item()), 0), 28 - small.shape[1])
    field = torch.zeros(28, 28)
    field[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
    return field.round().byte()


def classify(model: torch.nn.Module, paths: list[Path], device: torch.device | str = "cpu") -> list[dict]:
    """Digit and probability for each image file; every file is checked before any is classified."""
    if not paths:
        raise ImageError("no image files given")
    images = torch.stack([to_mnist_checked(p) for p in paths]).to(device)
    probs = log_probs(model, images).exp()
    p, digit = probs.max(1)
    return [{"file": str(f), "digit": int(d), "probability": round(float(q), 4)} for f, d, q in zip(paths, digit, p)]


def to_mnist_checked(path: Path) -> torch.Tensor:
    image = load_grey(path)  # its errors name the file already
    try:
        return to_mnist(image)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None
