"""The redesign changed no result: Model_41 trains to the same figures, epoch for epoch, as the code before it
(a385764), on this machine and thread count (`scripts/compare-with-commit.sh`; a slice here, the whole run
is the script's own example)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

BEFORE = "a385764"


def test_model_41_trains_as_it_did_before_the_redesign(mnist_dir):
    known = subprocess.run(["git", "cat-file", "-e", f"{BEFORE}^{{commit}}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"commit {BEFORE} is not in this clone")
        pytest.skip(f"commit {BEFORE} is not in this clone (a shallow one?)")
    proc = subprocess.run(
        ["bash", "scripts/compare-with-commit.sh", BEFORE, "Model_41", "--limit", "1000", "--epochs", "2",
         "--threads", "1", "--data-dir", str(mnist_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Model_41 seed1: 2 epochs, the same" in proc.stdout
