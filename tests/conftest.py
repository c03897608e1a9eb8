import contextlib
import gzip
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# One thread per process, here and in the subprocesses (OMP_NUM_THREADS set by the caller wins): the suite's
# networks are tiny, and on a busy machine two OpenMP threads wait for each other at every operation (an epoch
# of 384 images took 13 s instead of 0.5 s). Tests that are about threads pass --threads themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items):
    """A test that reads the real MNIST trains or evaluates on it: it is a slow one (-m "not slow" skips them)."""
    for item in items:
        if "mnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", autouse=True)
def own_signal_handlers():
    """Each test module starts with the process's signal handlers as they were: one that starts Ray in this
    process (test_scale, test_sweep26) leaves Ray's SIGTERM handler behind, which later in-process tests of
    `cli.main` would read as their own."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


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
    """`python -m tinymnist ARGS` in a subprocess, as a user would run it: for tests whose point is the process
    (signals, memory limits, what it imports, the entry point itself). Anything else uses `cli`, seconds faster."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tinymnist", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=full_env,
        timeout=600,
    )


MAIN = str(ROOT / "src" / "tinymnist" / "__main__.py")  # sys.argv[0] of `python -m tinymnist`
IGNORED = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # hidden by Python


def cli(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`tinymnist ARGS` in this process (no second import of torch): `cli.main`'s exit status and what it wrote,
    as `run_cli` returns them. Run as the subprocess would be: from `cwd` (the project's root by default), with
    `env` added, sys.argv set, Python's warnings shown as a fresh process shows them, and what C code writes to
    the file descriptors included. The process's state is restored afterwards (locks, threads, random numbers,
    current directory, environment)."""
    from tinymnist import records
    from tinymnist.cli import main

    argv = [str(a) for a in args]
    saved_env, saved_argv, saved_cwd, threads = dict(os.environ), sys.argv, os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        os.chdir(cwd or ROOT)
        sys.argv = [MAIN, *argv]
        with torch.random.fork_rng(devices=[]), _fd_captured(1) as fd_out, _fd_captured(2) as fd_err, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            for category in IGNORED:
                warnings.simplefilter("ignore", category)
            state = random.getstate()
            try:
                code = main(argv)
            finally:
                random.setstate(state)
                records.release_locks()
        shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    finally:
        torch.set_num_threads(threads)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["tinymnist", *argv], code, out.getvalue() + fd_out.text,
                                       err.getvalue() + shown + fd_err.text)


class _Captured:
    text = ""


@contextlib.contextmanager
def _fd_captured(fd: int):
    """What is written straight to file descriptor `fd` (by C code) meanwhile, in `.text` once done."""
    captured = _Captured()
    with tempfile.TemporaryFile() as f:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = os.dup(fd)
        os.dup2(f.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            f.seek(0)
            captured.text = f.read().decode(errors="replace")


def one_line(text: str) -> str:
    """The only line of `text` (an error's stderr), with no traceback in it."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def fails(proc: subprocess.CompletedProcess, fragment: str = "", code: int = 2) -> str:
    """Asserts that a `cli` or `run_cli` result ended with exit status `code` (2: bad input) and one line on
    stderr, the project's ("tinymnist..."), that holds `fragment`; returns that line."""
    assert proc.returncode == code, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("tinymnist") and fragment in line, line
    return line


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


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` (a small disk to fill), unmounted after; skips where mount is refused."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
