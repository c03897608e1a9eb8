import json

import pytest
import torch

from conftest import cli, fails, run_cli
from tinymnist.model import REGISTRY


def test_models_json_lists_every_model():
    proc = run_cli("models", "--json")  # `python -m tinymnist` itself, as a user runs it
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(REGISTRY)
    assert all({"params", "rf", "target"} <= set(r) for r in rows)


def test_summary_json_and_table():
    info = json.loads(cli("summary", "Model_6", "--json").stdout)
    assert (info["model"], info["params"], info["rf"]) == ("Model_6", 7624, 28)
    assert {"name", "type", "output_shape", "params", "rf", "jump"} <= set(info["layers"][0])
    table = cli("summary", "Model_6").stdout
    assert "| conv1 | conv 3x3 1->8, no bias, ReLU, BN, dropout 0.05 | 8,26,26 | 72 + 16 | 3 | 1 | 48,672 |" in table
    assert "**7,624**" in table


def test_recipe_prints_the_final_models_whole_recipe_and_marks_what_differs():
    out = cli("recipe", "final").stdout
    assert out.startswith("Model_41: recipe ghost-clean-end")
    assert "* ghost_batch      64" in out and "  epochs           15" in out and "* lr               0.07" in out
    assert json.loads(cli("recipe", "reference", "--json").stdout)["schedule"] == "exp"
    fails(cli("recipe", "fastest"), "valid models: Model_1")


def test_runtime_flags_are_validated_and_a_bad_recipe_override_is_one_line(mnist_dir):
    fails(cli("train", "Model_9", "--kernels", "turbo"), "invalid choice: 'turbo'")
    fails(cli("train", "Model_9", "--set", "lr=1e39", "--data-dir", str(mnist_dir), "--limit", "64"),
          "lr must be finite")


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
    """Bugs are not disguised as bad input: only the project's own errors become one line."""
    from tinymnist import cli as module

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(module, "cmd_models", broken)
    with pytest.raises(KeyError, match="a bug"):
        module.main(["models"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("runs")
    proc = cli("train", "Model_6", "--epochs", "2", "--limit", "512", "--seeds", "1-2", "--data-dir",
               str(mnist_dir), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_train_writes_a_record_and_checkpoint_per_seed(smoke_run):
    out, proc = smoke_run
    for seed in (1, 2):
        rec = json.loads((out / "Model_6" / f"seed{seed}.json").read_text())
        assert rec["model"] == "Model_6" and rec["params"] == 7624 and rec["seed"] == seed
        assert rec["recipe"]["epochs"] == 2 and rec["recipe"]["dropout"] == 0.05 and rec["limit"] == 512
        assert rec["torch"] == torch.__version__ and rec["device"] == "cpu"
        assert rec["runtime"]["kernels"] == "fast+pool" and rec["runtime"]["dropout"] == "fast"  # the CPU's defaults
        assert "kernels" not in rec["recipe"]  # speed is not part of the recipe
        assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
        for e in rec["epochs"]:
            assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"} <= set(e)
            assert 0 <= e["test_acc"] <= 100
        assert (out / "Model_6" / f"seed{seed}.pt").is_file()
    assert proc.stdout.count("epoch  2/2") == 2 and "target NOT MET" in proc.stdout


def test_same_seed_same_record_other_seed_differs(smoke_run, mnist_dir, tmp_path):
    out, _ = smoke_run
    again = cli("train", "Model_6", "--epochs", "2", "--limit", "512", "--seed", "1", "--data-dir",
                str(mnist_dir), "--out", str(tmp_path), "--device", "cpu")
    assert again.returncode == 0, again.stderr

    def strip(path):
        rec = json.loads(path.read_text())
        return [{k: v for k, v in e.items() if k != "seconds"} for e in rec["epochs"]]

    assert strip(tmp_path / "Model_6" / "seed1.json") == strip(out / "Model_6" / "seed1.json")
    assert strip(out / "Model_6" / "seed2.json") != strip(out / "Model_6" / "seed1.json")


def test_eval_reproduces_the_last_test_accuracy(smoke_run, mnist_dir):
    out, _ = smoke_run
    rec = json.loads((out / "Model_6" / "seed1.json").read_text())
    proc = cli("eval", str(out / "Model_6" / "seed1.pt"), "--data-dir", str(mnist_dir), "--limit", "512",
               "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["model"] == "Model_6" and res["total"] == 512
    assert res["accuracy"] == rec["epochs"][-1]["test_acc"]
    assert res["correct"] == rec["epochs"][-1]["test_correct"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "Model_99"], "valid models: Model_1"),
        (["summary", "nope"], "unknown model 'nope'"),
        (["train", "Model_1", "--epochs", "0"], "positive whole number"),
        (["train", "Model_1", "--epochs", "-3"], "positive whole number"),
        (["train", "Model_1", "--limit", "0"], "positive whole number"),
        (["train", "Model_1", "--batch-size", "0"], "positive whole number"),
        (["train", "Model_1", "--batch-size", "-64"], "positive whole number"),
        (["train", "Model_1", "--val", "0"], "positive whole number"),
        (["train", "Model_1", "--lr", "0"], "positive number"),
        (["train", "Model_1", "--lr", "nan"], "positive number"),
        (["train", "Model_1", "--seeds", "-1"], "expected seeds like 1-5"),
        (["train", "Model_1", "--seeds", "5-1"], "expected seeds like 1-5"),
        (["train", "Model_1", "--seeds", "x"], "expected seeds like 1-5"),
        (["train", "Model_1", "--device", "tpu"], "unknown device"),
        (["train", "Model_1", "--data-dir", "/nonexistent/mnist"], "does not exist"),
        (["eval", "/nonexistent/ckpt.pt"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args, fragment):
    fails(cli(*args), fragment)


def test_eval_refuses_files_that_are_not_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    fails(cli("eval", str(junk)), "not a readable checkpoint")


class Evil:
    def __reduce__(self):
        return (print, ("PWNED",))


def test_eval_refuses_pickled_code_without_running_it(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": "Model_6", "state_dict": {}, "payload": Evil()}, evil)
    proc = cli("eval", str(evil))
    fails(proc, "refused")
    assert "PWNED" not in proc.stdout


def test_train_into_unwritable_folder_fails_cleanly(tmp_path, mnist_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = cli("train", "Model_1", "--limit", "64", "--epochs", "1", "--data-dir", str(mnist_dir),
               "--out", str(blocker / "sub"))
    fails(proc, "not writable")


def test_bench_runs_both_pipelines_on_a_few_batches(mnist_dir):
    proc = cli("bench", "Model_6", "--batches", "3", "--repeat", "1", "--json", "--data-dir", str(mnist_dir),
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["fast_img_s"] > 0 and res["baseline_img_s"] > 0
    assert res["ratio"] == pytest.approx(res["fast_img_s"] / res["baseline_img_s"], rel=0.01)
    assert res["train_flops_per_image"] == 6 * 1_068_480
    assert res["settings"] == {"dropout_impl": "fast", "channels_last": True, "kernels": "fast+pool"}  # CPU runtime


def test_bench_epochs_times_the_final_model_end_to_end(mnist_dir):
    proc = cli("bench", "--epochs", "1", "--limit", "640", "--json", "--data-dir", str(mnist_dir),
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["epochs"] == 1 and res["fast_seconds"] > 0 and res["baseline_seconds"] > 0
    assert res["model"] == json.loads(cli("summary", "final", "--json").stdout)["model"]
    assert res["repeat"] == 1 and res["fast_runs"] == [res["fast_seconds"]] and res["teacher"] is None
    other = cli("bench", "Model_9", "--epochs", "1", "--repeat", "2", "--limit", "640", "--json", "--data-dir",
                str(mnist_dir), "--device", "cpu")
    assert other.returncode == 0, other.stderr
    res = json.loads(other.stdout)
    assert res["model"] == "Model_9" and res["repeat"] == 2
    assert len(res["fast_runs"]) == len(res["baseline_runs"]) == 2
    assert res["fast_seconds"] == pytest.approx(sum(res["fast_runs"]) / 2, abs=0.1)  # the median of two
    base, fast = res["baseline_seconds"], res["fast_seconds"]  # rounded to 0.1 s: the ratio is of the unrounded
    assert (base - 0.05) / (fast + 0.05) - 0.01 <= res["ratio"] <= (base + 0.05) / max(fast - 0.05, 1e-9) + 0.01


def test_roles_name_one_final_and_at_most_one_tiny():
    rows = json.loads(cli("models", "--json").stdout)
    roles = [r["role"] for r in rows]
    assert roles.count("final") == 1 and roles.count("tiny") <= 1
    assert set(roles) <= {"final", "tiny", None}
    final = next(r["name"] for r in rows if r["role"] == "final")
    assert json.loads(cli("summary", "final", "--json").stdout)["model"] == final


def test_corrupt_data_file_fails_cleanly_and_writes_nothing(tmp_path, mnist_dir):
    import shutil

    data = tmp_path / "mnist"
    shutil.copytree(mnist_dir, data)
    target = data / "t10k-labels-idx1-ubyte.gz"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:-50])
    out = tmp_path / "out"
    proc = cli("train", "Model_1", "--epochs", "1", "--limit", "64", "--data-dir", str(data), "--out", str(out))
    fails(proc, "t10k-labels-idx1-ubyte.gz")
    assert not out.exists()
