"""MNIST on disk and in memory: finding, downloading, verifying and parsing the four IDX files.

The data set is small enough (47 MB of pixels) to live in memory as uint8 tensors on the training device;
batches are index slices of a random permutation, so the training loop does no per-sample Python work.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import TinyMnistError
from .files import atomic_write_bytes, describe_missing, write_failure

MEAN, STD = 0.1307, 0.3081  # pixel mean and std of the training set, scaled to [0, 1]

# SHA-256 of the *decompressed* files: the published canonical values (mirrors re-wrap the gzip, so the
# compressed bytes differ between copies while the content does not).
FILES = {
    "train_images": ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
CHECKSUMS = {name: sha for name, sha in FILES.values()}

# Tried in order; yann.lecun.com has refused downloads for years, so it comes last.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DEFAULT_DIR = Path("data/mnist")
ENV_VAR = "TINYMNIST_DATA"


class DataError(TinyMnistError):
    """Missing, corrupt or unobtainable data; the message is meant for the user as it is."""


@dataclass
class MNIST:
    train_images: torch.Tensor  # (N, 28, 28) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor | None  # (M, 28, 28) uint8; None when loaded with `test=False` (a search)
    test_labels: torch.Tensor | None  # (M,) int64
    source: str  # the folder the files were read from
    val_images: torch.Tensor | None = None  # held out from the training set by `hold_out`
    val_labels: torch.Tensor | None = None
    checksums: dict[str, str] | None = None  # SHA-256 of each decompressed file: which data a run was trained on

    def to(self, device: torch.device | str) -> MNIST:
        return MNIST(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()})

    def limit(self, n: int | None) -> MNIST:
        """Only the first `n` training and `n` test images (for smoke tests)."""
        if n is None:
            return self
        test = {} if self.test_images is None else dict(test_images=self.test_images[:n],
                                                        test_labels=self.test_labels[:n])
        return replace(self, train_images=self.train_images[:n], train_labels=self.train_labels[:n], **test)

    def hold_out(self, n: int | None) -> MNIST:
        """Moves the last `n` training images to a validation set (to choose models without the test set)."""
        if not n:
            return self
        if n >= len(self.train_labels):
            raise DataError(f"--val {n} leaves no training images (the training set has {len(self.train_labels)})")
        return replace(self, train_images=self.train_images[:-n], train_labels=self.train_labels[:-n],
                       val_images=self.train_images[-n:], val_labels=self.train_labels[-n:])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1], where augmentation works."""
    return images.unsqueeze(1).float().div_(255)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> zero mean and unit variance over the training set, what the networks take."""
    return (x - MEAN) / STD


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) in MNIST's format -> the networks' input (B, 1, 28, 28); `to_mnist` in predict.py
    brings an outside image to that format."""
    return standardise(to_unit(images))


# The most data bytes an IDX file may declare: MNIST's largest file has 47,040,000; this leaves room for
# MNIST-like sets (Fashion-MNIST, KMNIST) while a hostile header cannot make us allocate gigabytes.
MAX_IDX_BYTES = 128 * 2**20


def read_idx(stream: BinaryIO, label: str, sha256: str | None = None) -> tuple[torch.Tensor, str]:
    """Reads an IDX file (gzip-compressed or not) from `stream` into a uint8 tensor, verifying everything.

    The header is read first and only the bytes it declares are read (or decompressed) after it, so a small
    file that decompresses to gigabytes, or a huge sparse one, is refused without being read. Returns the
    tensor and the SHA-256 of the decompressed file.
    """
    if stream.read(2) == b"\x1f\x8b":
        stream.seek(0)
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    else:
        stream.seek(0)
    try:
        return _read_idx(stream, label, sha256)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{label}: truncated or corrupt gzip data ({e})") from None


def _read_exactly(stream: BinaryIO, n: int) -> bytearray:
    """Up to `n` bytes, fewer at the end of the stream; read in place, as the pixels are the biggest object."""
    buf = bytearray(n)
    view, done = memoryview(buf), 0
    while done < n:
        got = stream.readinto(view[done : done + 2**24])
        if not got:
            break
        done += got
    view.release()
    del buf[done:]
    return buf


def _read_idx(stream: BinaryIO, label: str, sha256: str | None) -> tuple[torch.Tensor, str]:
    magic = _read_exactly(stream, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08 or not 1 <= magic[3] <= 4:
        raise DataError(f"{label}: not an unsigned-byte IDX file (wrong magic number {magic.hex() or 'none'})")
    ndim = magic[3]
    head = _read_exactly(stream, 4 * ndim)
    if len(head) < 4 * ndim:
        raise DataError(f"{label}: truncated header ({4 + len(head)} bytes)")
    dims = [int.from_bytes(head[4 * i : 4 * i + 4], "big") for i in range(ndim)]
    size = math.prod(dims)
    if size > MAX_IDX_BYTES:
        raise DataError(f"{label}: its header declares shape {tuple(dims)}, {size:,} bytes, more than the "
                        f"{MAX_IDX_BYTES:,} an MNIST-sized data set has")
    data = _read_exactly(stream, size)
    if len(data) < size:
        raise DataError(f"{label}: truncated: {len(data)} data bytes for shape {tuple(dims)} ({size} expected)")
    if stream.read(1):  # one byte is enough to know; the rest is never read
        raise DataError(f"{label}: longer than its header says: more than {size} data bytes for shape {tuple(dims)}")
    sha = hashlib.sha256(magic)
    sha.update(head)
    sha.update(data)
    digest = sha.hexdigest()
    if sha256 is not None and digest != sha256:
        raise DataError(f"{label}: checksum mismatch (SHA-256 {digest[:16]}..., expected {sha256[:16]}...)")
    if not data:  # torch.frombuffer refuses an empty buffer
        return torch.zeros(dims, dtype=torch.uint8), digest
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims), digest


def parse_idx(raw: bytes, label: str, sha256: str | None = None) -> torch.Tensor:
    """Parses the bytes of an IDX file (gzip-compressed or not) into a uint8 tensor, verifying everything."""
    return read_idx(io.BytesIO(raw), label, sha256)[0]


def resolve_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: `--data-dir`, else $TINYMNIST_DATA, else ./data/mnist."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_DIR


def find_file(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `folder` or in torchvision's `folder/MNIST/raw`."""
    for base in (folder, folder / "MNIST" / "raw"):
        for candidate in (base / name, base / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def download(folder: Path, name: str, sha256: str | None, mirrors=MIRRORS, timeout: float = 30.0) -> Path:
    """Fetches `name.gz` from the first mirror that serves verified content; writes it atomically."""
    errors = []
    for mirror in mirrors:
        url = f"{mirror}{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                raw = response.read()
            parse_idx(raw, url, sha256)  # never keep bytes that do not verify
        except (OSError, ValueError, DataError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        target = folder / f"{name}.gz"
        try:
            atomic_write_bytes(target, raw)  # a reader sees either no file or the whole verified file
        except OSError as e:  # a full disk, or a pipe or folder of that name
            raise DataError(write_failure(target, e)) from None
        return target
    raise DataError(
        f"MNIST file {name} is not in {folder} and could not be downloaded ({'; '.join(errors) or 'no mirrors'}); "
        f"put the four MNIST IDX files (.gz or not) in {folder}, or point --data-dir or ${ENV_VAR} at a folder "
        "that has them"
    )


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    allow_download: bool = True,
    mirrors=MIRRORS,
    checksums: dict[str, str | None] | None = CHECKSUMS,
    test: bool = True,
) -> MNIST:
    """Loads MNIST from the resolved data folder, downloading missing files into it when allowed.

    With `test=False` the test files are neither looked for nor opened, and the result has no test tensors:
    what a recipe search loads, so that choosing a recipe cannot see the test set.

    A folder named explicitly (option or environment) must exist; the default ./data/mnist is created.
    `checksums=None` skips verification (for the tests' small synthetic files).
    """
    folder = resolve_dir(data_dir)
    explicit = folder != DEFAULT_DIR
    if explicit and not folder.is_dir():
        why = describe_missing(folder, "folder")
        given = f"${ENV_VAR}={folder}" if not data_dir else f"data folder {folder}"
        hint = " (create it to download MNIST there)" if why == "does not exist" else ""
        raise DataError(f"{given} {why}{hint}")
    tensors, digests = {}, {}
    for key, (name, _) in FILES.items():
        if not test and key.startswith("test_"):
            continue
        sha = (checksums or {}).get(name)
        path = find_file(folder, name)
        if path is None:
            if not allow_download:
                raise DataError(f"MNIST file {name}[.gz] not found in {folder} or {folder / 'MNIST' / 'raw'}")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DataError(f"cannot create data folder {folder}: {e.strerror}") from None
            path = download(folder, name, sha, mirrors)
        try:
            with path.open("rb") as f:
                tensors[key], digests[name] = read_idx(f, str(path), sha)
        except OSError as e:  # opening; read_idx turns errors while reading into DataError
            raise DataError(f"cannot read {path}: {e.strerror}") from None
    for split in ("train", "test") if test else ("train",):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.shape[1:] != (28, 28) or labels.dim() != 1 or len(images) != len(labels):
            raise DataError(
                f"{split} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match "
                f"(expected (N, 28, 28) images and N labels)"
            )
    return MNIST(
        tensors["train_images"],
        tensors["train_labels"].long(),
        tensors.get("test_images"),
        tensors["test_labels"].long() if test else None,
        str(folder),
        checksums=digests,
    )
