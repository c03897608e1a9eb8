"""Interruption and resume, divergence, and records that survive failures."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli, fails

OPTIONS = ["--epochs", "4", "--limit", "384", "--seed", "3", "--device", "cpu", "--quiet"]
ARGS = ["Model_6", *OPTIONS]


def epochs_without_timings(path):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in json.loads(path.read_text())["epochs"]]


@pytest.mark.parametrize("model", ["Model_6", "Model_9"])  # with dropout; with a moving average of the weights
def test_killed_run_resumes_to_the_same_result(tmp_path, mnist_dir, model):
    args = [model, *OPTIONS]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert cli("train", *args, "--data-dir", str(mnist_dir), "--out", str(whole)).returncode == 0

    state = broken / model / "seed3.state.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinymnist", "train", *args, "--data-dir", str(mnist_dir), "--out", str(broken)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert state.exists() and not (broken / model / "seed3.json").exists()

    resumed = cli("train", *args, "--data-dir", str(mnist_dir), "--out", str(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {model} seed 3 after epoch" in resumed.stdout
    assert epochs_without_timings(broken / model / "seed3.json") == epochs_without_timings(
        whole / model / "seed3.json"
    )
    assert not state.exists()  # a finished run keeps only its record and checkpoint

    again = cli("train", *args, "--data-dir", str(mnist_dir), "--out", str(broken), "--resume")
    assert again.returncode == 0 and "already complete" in again.stdout


def test_resume_with_other_options_is_refused(tmp_path, mnist_dir):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinymnist", "train", *ARGS, "--data-dir", str(mnist_dir), "--out", str(out)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state = out / "Model_6" / "seed3.state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait()
    other = cli("train", *ARGS, "--lr", "0.5", "--data-dir", str(mnist_dir), "--out", str(out), "--resume")
    fails(other, "another recipe")


def test_diverging_run_stops_cleanly_and_keeps_existing_records(tmp_path, mnist_dir):
    out = tmp_path / "out"
    good = cli("train", "Model_1", "--epochs", "1", "--limit", "128", "--data-dir", str(mnist_dir),
               "--out", str(out), "--quiet")
    assert good.returncode == 0, good.stderr
    record = out / "Model_1" / "seed1.json"
    before = record.read_bytes(), record.with_suffix(".pt").read_bytes()
    bad = cli("train", "Model_1", "--epochs", "2", "--limit", "128", "--lr", "1e20", "--data-dir",
              str(mnist_dir), "--out", str(out), "--quiet")
    fails(bad, "became nan")
    assert (record.read_bytes(), record.with_suffix(".pt").read_bytes()) == before
