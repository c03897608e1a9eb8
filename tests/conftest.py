import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """A test that reads the real MNIST trains or evaluates on it: it is a slow one (-m "not slow" skips them)."""
    for item in items:
        if "mnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder: $TINYMNIST_DATA, else ../shared/data/mnist. Required on CI."""
    folder = Path(os.environ.get("TINYMNIST_DATA") or ROOT.parent / "shared" / "data" / "mnist")
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"MNIST not found at {folder}")
        pytest.skip(f"MNIST not found at {folder}")
    return folder


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """An unsigned-byte IDX file holding `tensor`."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    return header + tensor.to(torch.uint8).contiguous().numpy().tobytes()


def write_fake_mnist(folder: Path, n_train=32, n_test=16, compress=True) -> None:
    """Four small, valid IDX files with random content under MNIST's file names."""
    g = torch.Generator().manual_seed(0)
    parts = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.randint(0, 10, (n_train,), generator=g),
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (n_test,), generator=g),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in parts.items():
        raw = idx_bytes(t)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def fake_data(n=96):
    """A small in-memory MNIST of random digits: n training images, the first 48 of them as the test set."""
    from tinymnist.data import MNIST

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return MNIST(images, labels, images[:48], labels[:48], "fake")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m tinymnist ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tinymnist", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=full_env,
        timeout=600,
    )


def wait_for_proc(proc: subprocess.Popen, sign, timeout: float = 120) -> bool:
    """Waits until `sign(pid)` holds for a running process (it reads /proc/PID/...), polling every millisecond:
    a sign of where the process is, with no marker in the product. False if the process ended first."""
    if not Path(f"/proc/{proc.pid}").is_dir():
        pytest.skip("needs Linux's /proc")
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if sign(proc.pid):
                return True
        except OSError:  # the process is ending
            pass
        time.sleep(0.001)
    return False


def handles_sigterm(pid: int) -> bool:
    """tinymnist's handlers are installed: Python catches SIGINT from its start, SIGTERM only once they are."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def maps(name: str):
    """A sign: the process has mapped a shared library whose path holds `name` (it is importing it)."""
    return lambda pid: name in Path(f"/proc/{pid}/maps").read_text()
