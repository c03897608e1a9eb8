"""Issue 26, items 3 and 12: Ctrl-C and SIGTERM at any moment, and however many, end with one line and exit
status 130 or 143, and keep the state of the last finished epoch.

The tests wait for signs read from /proc (the handlers installed, a state file written), never a fixed sleep
racing the process; the item-3 test itself is `test_hardening.test_signal_during_imports_is_one_line`.
"""

import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, handles_sigterm, wait_for_proc
from tinymnist import cli
from tinymnist.cli import main

LINE = "tinymnist: interrupted (an interrupted training run continues with --resume)"


def train(out, mnist_dir, *, limit=512) -> subprocess.Popen:
    """A training run far longer than the test, on a slice, one thread."""
    return subprocess.Popen(
        [sys.executable, "-m", "tinymnist", "train", "Model_1", "--epochs", "40", "--limit", str(limit), "--data-dir",
         str(mnist_dir), "--out", str(out), "--device", "cpu", "--quiet", "--threads", "1"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def epochs_in_state(out):
    state = out / "Model_1" / "seed1.state.pt"
    return len(torch.load(state, weights_only=True)["history"]) if state.exists() else 0


def assert_interrupted(proc, out, code: int, epochs_before: int = 0) -> None:
    """Exit `code`, the one line, the state of the last finished epoch kept, the lock and temporary files gone."""
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and err.strip() == LINE, (proc.returncode, err)
    assert epochs_in_state(out) >= epochs_before  # loads: not half-written
    assert not list(out.rglob("*.lock")) and not list(out.rglob("*.tmp"))


def test_a_signal_at_any_moment_is_one_line(tmp_path, mnist_dir):
    # moments from the sign that the handlers are installed: the imports (about 1.1 s alone), the data's
    # loading, the first epoch; two runs at a time, one a core
    moments = [(0.0, signal.SIGINT), (0.1, signal.SIGTERM), (0.3, signal.SIGINT), (0.6, signal.SIGTERM),
               (1.0, signal.SIGINT), (1.6, signal.SIGTERM)]
    for pair in (moments[i:i + 2] for i in range(0, len(moments), 2)):
        runs = []
        for after, sig in pair:
            out = tmp_path / f"{after}"
            proc = train(out, mnist_dir)
            assert wait_for_proc(proc, handles_sigterm)
            runs.append((proc, time.monotonic() + after, sig, out))
        for proc, when, sig, _ in runs:
            time.sleep(max(0.0, when - time.monotonic()))
            proc.send_signal(sig)
        for proc, _, sig, out in runs:
            assert_interrupted(proc, out, 128 + sig)


@pytest.mark.parametrize("first, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_more_signals_during_the_cleanup_change_nothing(tmp_path, mnist_dir, first, code):
    # a second Ctrl-C landed in the cleanup (exit -2, no line); SIGTERM then Ctrl-C printed a traceback
    proc = train(tmp_path, mnist_dir)
    state = tmp_path / "Model_1" / "seed1.state.pt"
    assert wait_for_proc(proc, lambda pid: state.exists()), proc.communicate()[1]
    epochs = epochs_in_state(tmp_path)
    proc.send_signal(first)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # Ctrl-C after Ctrl-C, until the process is gone
        proc.send_signal(signal.SIGINT)
        time.sleep(0.001)
    assert_interrupted(proc, tmp_path, code, epochs)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interruption_a_command_swallowed_is_still_one(monkeypatch, capsys, sig, code):
    # `serve` caught KeyboardInterrupt and exited 0; so can any library
    def swallows(args):
        try:
            signal.raise_signal(sig)
            time.sleep(1)
        except KeyboardInterrupt:
            print("stopped")

    monkeypatch.setattr(cli, "cmd_models", swallows)
    assert main(["models"]) == code
    assert capsys.readouterr().err == "tinymnist: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # in-process: the handlers are put back
