"""Sweeps and searches on Ray (`tinymnist sweep`, `search`, `bench --sweep`), on slices of MNIST.

One local Ray instance of 2 CPUs serves the whole module (the commands use an instance already running in
their process as it is), so Ray's start-up is paid once.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tinymnist.cli import main
from tinymnist.records import release_locks

pytestmark = pytest.mark.scale
ROOT = Path(__file__).resolve().parents[1]


def _require(name: str):
    try:
        return __import__(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (pip install 'tinymnist[scale]')")
        pytest.skip(f"{name} is not installed: pip install 'tinymnist[scale]'")


@pytest.fixture(scope="module")
def ray_local():
    ray = _require("ray")
    _require("optuna")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def without_seconds(rec: dict) -> dict:
    rec = json.loads(json.dumps(rec))
    for row in rec["epochs"]:
        row.pop("seconds")
    return rec


def records(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): without_seconds(json.loads(p.read_text())) for p in folder.glob("*/seed*.json")}


SLICE = ["--limit", "256", "--epochs", "2", "--quiet"]


def test_a_sweep_writes_trains_records_and_skips_them_after(tmp_path, mnist_dir, ray_local, capsys):
    args = ["--data-dir", str(mnist_dir), "--limit", "256", "--epochs", "2"]
    assert main(["sweep", "Model_8", "--seeds", "1-2", "--set", "lr=0.05,0.1", "--workers", "2",
                 "--out", str(tmp_path / "sweep"), *args]) == 0
    out = capsys.readouterr().out
    assert out.count("Model_8+lr=") >= 4 and "| Model_8 (lr=0.05) |" in out  # a line per run, then the table
    for seed in (1, 2):
        assert main(["train", "Model_8", "--seed", str(seed), "--set", "lr=0.05", "--threads", "1", "--out",
                     str(tmp_path / "train"), "--quiet", *args]) == 0
    swept, trained = records(tmp_path / "sweep"), records(tmp_path / "train")
    assert sorted(swept) == [f"Model_8+lr={lr}/seed{s}.json" for lr in ("0.05", "0.1") for s in (1, 2)]
    for seed in (1, 2):  # the same record, epoch for epoch, all but the seconds
        assert swept[f"Model_8+lr=0.05/seed{seed}.json"] == trained[f"Model_8/seed{seed}.json"]
    assert (tmp_path / "sweep" / "Model_8+lr=0.1" / "seed2.pt").is_file()
    assert not list((tmp_path / "sweep").glob("*/*.state.pt"))
    capsys.readouterr()
    assert main(["sweep", "Model_8", "--seeds", "1-2", "--set", "lr=0.05,0.1", "--out", str(tmp_path / "sweep"),
                 *args]) == 0
    assert capsys.readouterr().out.count("already recorded") == 4


def test_a_killed_worker_is_retried_and_its_run_continues(tmp_path, mnist_dir, ray_local):
    from tinymnist.judge import Budget
    from tinymnist.model import get_entry
    from tinymnist.recipes import apply_settings
    from tinymnist.runtime import default_runtime
    from tinymnist.sweep import Run, sweep

    entry = get_entry("Model_8")
    recipe = apply_settings(entry.recipe, ["epochs=4"])
    runs = [Run(entry, recipe, seed, entry.slug) for seed in (1, 2)]
    common = dict(workers=2, threads=1, limit=1024, data_dir=mnist_dir, say=lambda line: None)
    runtime = default_runtime("cpu")
    sweep(runs, tmp_path / "whole", runtime, lambda e: Budget(hold=e.hold), **common)
    release_locks()
    pids, killed = {}, []

    def watch(news):
        for key, (pid, rows, _) in news.items():
            pids.setdefault(key, set()).add(pid)
            if not killed and key == "0" and 1 <= len(rows) < 4:
                os.kill(pid, signal.SIGKILL)  # mid-run, after its first epoch
                killed.append(pid)

    sweep(runs, tmp_path / "killed", runtime, lambda e: Budget(hold=e.hold), watch=watch, **common)
    release_locks()
    assert killed, "the run ended before the test could kill its worker"
    assert len(pids["0"]) == 2  # started again on another worker
    assert records(tmp_path / "killed") == records(tmp_path / "whole")


def test_a_sweep_of_the_users_network_names_its_file(tmp_path, mnist_dir, ray_local):
    net = tmp_path / "mynet.py"
    net.write_text("import torch.nn as nn\n\ndef Small(width: int = 4):\n    return nn.Sequential("
                   "nn.Conv2d(1, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))\n")
    ref = f"{net}:Small"
    assert main(["sweep", ref, "--model-arg", "width=6", "--out", str(tmp_path / "out"), "--data-dir",
                 str(mnist_dir), "--limit", "128", "--epochs", "1"]) == 0
    rec = json.loads((tmp_path / "out" / "mynet.Small" / "seed1.json").read_text())
    import hashlib

    assert rec["model"] == ref
    assert rec["source"] == {"ref": ref, "sha256": hashlib.sha256(net.read_bytes()).hexdigest(), "args": {"width": 6}}


def train_only(tmp_path: Path, mnist_dir: Path) -> Path:
    """A data folder holding only MNIST's training files: a search that opened the test files would fail."""
    folder = tmp_path / "train-only"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        found = next(p for p in (mnist_dir / name, mnist_dir / f"{name}.gz") if p.exists())
        (folder / found.name).symlink_to(found)
    return folder


def test_a_search_never_reads_the_test_set_and_continues_its_study(tmp_path, mnist_dir, ray_local, capsys):
    from tinymnist.recipes import load_recipe_file

    data = train_only(tmp_path, mnist_dir)
    out = tmp_path / "best.toml"
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 0.02\nhigh = 0.2\nlog = true\n\n[augment_scale]\nlow = 0.5\nhigh = 1.5\n")
    cmd = ["search", "Model_8", "--space", str(space), "--val", "256", "--limit", "768", "--set", "epochs=3",
           "--data-dir", str(data), "--out", str(out)]
    assert main([*cmd, "--trials", "2"]) == 0
    assert "best: trial" in capsys.readouterr().out
    assert main([*cmd, "--trials", "3"]) == 0  # the same command, more trials: the study continues
    result = json.loads(out.with_suffix(".json").read_text())
    assert [t["number"] for t in result["trials"]] == [0, 1, 2]
    assert all(len(t["val_acc"]) == 3 for t in result["trials"] if t["state"] == "complete")
    recipe = load_recipe_file(str(out))  # a recipe file `train --recipe` takes
    assert recipe.epochs == 3 and recipe.lr == result["best"]["params"]["lr"]


def test_scale_errors_are_one_line(tmp_path, mnist_dir, ray_local, capsys):
    def fails(argv, *words):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err

    base = ["--data-dir", str(mnist_dir), "--limit", "128", "--out", str(tmp_path / "o")]
    fails(["sweep", "Model_8", "--set", "lr=0.1,,0.2", *base], "lr=0.1,,0.2")
    fails(["sweep", "Model_8", "--set", "nope=1,2", *base], "nope", "valid")
    fails(["sweep", "Model_8", "--set", "lr=0.1,fast", *base], "lr=fast")
    fails(["sweep", "Model_8", "--address", "127.0.0.1:1", *base], "127.0.0.1:1", "cannot reach")
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 0.01\nhigh = 0.1\n[speed]\nlow = 1\nhigh = 2\n")
    fails(["search", "Model_8", "--trials", "1", "--space", str(space), *base[:2]], "speed", "valid: ", "lr")
    fails(["search", "Model_8", "--trials", "1", "--storage", "nosuchdb://x/y", "--out", str(tmp_path / "b.toml"),
           *base[:2]], "--storage nosuchdb://x/y")
    fails(["search", "Model_8", "--trials", "2", "--max-params", "100", "--out", str(tmp_path / "c.toml"),
           *base[:4]], "none of the 2 trials")
    assert not list(tmp_path.glob("o/*/*.json"))


def test_bench_sweep_times_both_ways(tmp_path, mnist_dir, ray_local):
    save = tmp_path / "bench.json"
    assert main(["bench", "--sweep", "Model_8", "--seeds", "1-2", "--limit", "256", "--set", "epochs=1",
                 "--repeat", "2", "--data-dir", str(mnist_dir), "--save", str(save)]) == 0
    res = json.loads(save.read_text())
    assert res["kind"] == "sweep" and res["runs"] == 2 and res["sweep_runs_per_hour"] > 0
    assert res["sequential_runs_per_hour"] > 0 and res["machine"]
    assert len(res["sweep_runs"]) == len(res["sequential_runs"]) == len(res["load_sweep"]) == 2
    # each way's runs, each repetition: what they reached says whether the timing was of runs that learn
    assert [len(accs) for accs in res["sweep_last_test_acc"] + res["sequential_last_test_acc"]] == [2] * 4
    assert res["ratio"] == round(statistics.median(res["sequential_runs"]) / statistics.median(res["sweep_runs"]), 3)


def test_train_needs_neither_ray_nor_optuna_and_sweep_says_how_to_install():
    code = ("import sys; sys.modules['ray'] = None; sys.modules['optuna'] = None\n"
            "from tinymnist.cli import main\n"
            "sys.exit(main(['sweep', 'Model_8']))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "pip install 'tinymnist[scale]'" in done.stderr
    code = "import sys, tinymnist.cli, tinymnist.run; print('ray' in sys.modules or 'optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip() == "False"


def test_a_pruned_trial_stops_its_worker(tmp_path, mnist_dir, ray_local, monkeypatch, capsys):
    import optuna

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)  # every trial, after its 1st epoch
    out = tmp_path / "best.toml"
    assert main(["search", "Model_8", "--trials", "2", "--val", "256", "--limit", "768", "--set", "epochs=3",
                 "--data-dir", str(mnist_dir), "--out", str(out)]) == 2
    assert "none of the 2 trials" in capsys.readouterr().err
    study = optuna.load_study(study_name="Model_8", storage=f"sqlite:///{out.with_suffix('.db')}")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(len(t.user_attrs["val_acc"]) < 3 for t in study.trials)  # stopped before their last epoch
