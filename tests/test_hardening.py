"""Issue 19: hostile files, full disks, special paths and mixed resumes never cost data or show a traceback.

Each test names the issue's item it checks; docs/reliability.md lists them in its bad-input table.
"""

import gzip
import io
import json
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, cli, fails, maps, one_line, run_cli, tmpfs, wait_for_proc, write_fake_mnist
from tinymnist.cli import seed_list, write_json
from tinymnist.data import DataError, load_mnist, parse_idx
from tinymnist.engine import make_ema, make_optimizer, training_state
from tinymnist.export import ExportError, export_verified
from tinymnist.files import atomic_write_bytes, check_writable
from tinymnist.model import REGISTRY, create_model, get_entry
from tinymnist.predict import ImageError, load_grey, to_mnist_checked
from tinymnist.records import (
    CheckpointError,
    check_finished,
    load_checkpoint,
    load_state,
    lock_run,
    release_locks,
    run_identity,
    save_state,
)
from tinymnist.runtime import Runtime, apply

SHIPPED = ROOT / "src" / "tinymnist" / "weights" / "Model_41.pt"
FAST = ["--device", "cpu", "--quiet"]


# --- 1. special files are never replaced --------------------------------------------------------------


def test_writes_refuse_special_files_and_folders(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="special file"):
        atomic_write_bytes(fifo, b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and [p.name for p in tmp_path.iterdir()] == ["pipe"]
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path, b"x")
    with pytest.raises(CheckpointError, match="special file"):  # bench --save and records go through write_json
        write_json(fifo, {"a": 1})


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_export_onto_a_device_is_refused(tmp_path):
    fake = tmp_path / "fakenull"
    os.mknod(fake, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fails(cli("export", "Model_41", "--onnx", str(fake), "--limit", "50"), "special file")
    assert stat.S_ISCHR(os.stat(fake).st_mode)
    with pytest.raises(CheckpointError, match="special file"):
        write_json(fake, {})
    assert stat.S_ISCHR(os.stat(fake).st_mode)


# --- 2. a failed export keeps the previous file ---------------------------------------------------------


def test_failed_export_keeps_the_previous_file(tmp_path):
    keep = tmp_path / "k.onnx"
    keep.write_text("keep\n")
    fails(cli("export", "Model_41", "--onnx", str(keep), "--data-dir", "/nonexistent"), "does not exist")
    nan = tmp_path / "nan.pt"
    ckpt = torch.load(SHIPPED, weights_only=True)
    ckpt["state_dict"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, nan)
    fails(cli("export", str(nan), "--onnx", str(keep), "--limit", "20"), "NaN")
    assert keep.read_text() == "keep\n" and sorted(p.name for p in tmp_path.iterdir()) == ["k.onnx", "nan.pt"]


def test_export_mismatch_keeps_the_previous_file(tmp_path):
    pytest.importorskip("onnxruntime")
    keep = tmp_path / "k.onnx"
    keep.write_text("keep\n")
    _, model, _ = load_checkpoint("Model_41")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # a model load_checkpoint would refuse: onnxruntime and PyTorch cannot agree
    with pytest.raises(ExportError, match=r"does not match PyTorch.*left as it was"):
        export_verified(model, keep, torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8))
    assert keep.read_text() == "keep\n" and [p.name for p in tmp_path.iterdir()] == ["k.onnx"]


# --- 3. --resume never mixes runs -----------------------------------------------------------------------


def make_state(path: Path, model_name: str, recipe, run: dict, epochs_done: int = 1) -> None:
    """A genuine resumable state (untrained weights) as `train` would write it after `epochs_done` epochs."""
    model = apply(create_model(model_name), recipe, Runtime())
    optimizer = make_optimizer(model, recipe)
    ema = make_ema(model, recipe)
    history = [{"epoch": i + 1, "train_loss": 2.3, "train_acc": 10.0, "test_loss": 2.3, "test_acc": 10.0,
                "test_correct": 1, "lr": recipe.lr, "seconds": 0.1} for i in range(epochs_done)]
    save_state(path, model_name, recipe, training_state(model, optimizer, history, ema), run)


@pytest.fixture(scope="module")
def data_checksums(mnist_dir):
    return load_mnist(mnist_dir).checksums


@pytest.mark.parametrize(
    "options, difference",
    [
        (["--limit", "1000"], "--limit 500, not 1000"),
        (["--limit", "500", "--val", "100"], "--val none, not 100"),
        (["--limit", "500", "--epochs", "3"], "another recipe (epochs 2, not 3)"),
        (["--limit", "500", "--lr", "0.5"], "another recipe (lr 0.01, not 0.5)"),
    ],
)
def test_resume_refuses_a_state_of_other_options(tmp_path, mnist_dir, data_checksums, options, difference):
    recipe = REGISTRY["Model_1"].recipe.with_overrides(epochs=2)
    state = tmp_path / "Model_1" / "seed1.state.pt"
    state.parent.mkdir()
    make_state(state, "Model_1", recipe, run_identity(500, None, data_checksums))
    err = fails(cli("train", "Model_1", "--epochs", "2", *options, "--resume", "--data-dir", mnist_dir, "--out",
                    tmp_path, *FAST))
    assert difference in err and str(state) in err, err
    assert state.exists() and not state.with_name("seed1.json").exists()


def test_resume_refuses_a_state_of_other_data(tmp_path, mnist_dir, data_checksums):
    recipe = REGISTRY["Model_1"].recipe.with_overrides(epochs=2)
    state = tmp_path / "Model_1" / "seed1.state.pt"
    state.parent.mkdir(parents=True)
    other = {name: "0" * 64 for name in data_checksums}  # e.g. a copy of Fashion-MNIST under MNIST's names
    make_state(state, "Model_1", recipe, run_identity(500, None, other))
    fails(cli("train", "Model_1", "--epochs", "2", "--limit", "500", "--resume", "--data-dir", mnist_dir, "--out",
              tmp_path, *FAST), "data (checksums differ)")


def test_resume_accepts_the_same_run(tmp_path, mnist_dir, data_checksums):
    recipe = REGISTRY["Model_1"].recipe.with_overrides(epochs=2)
    state = tmp_path / "Model_1" / "seed1.state.pt"
    state.parent.mkdir()
    make_state(state, "Model_1", recipe, run_identity(200, None, data_checksums))
    proc = cli("train", "Model_1", "--epochs", "2", "--limit", "200", "--resume", "--data-dir", mnist_dir, "--out",
               tmp_path, *FAST)
    assert proc.returncode == 0 and "resuming Model_1 seed 1 after epoch 1" in proc.stdout, proc.stderr
    rec = json.loads((tmp_path / "Model_1" / "seed1.json").read_text())
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2] and rec["data"] == data_checksums
    assert not state.exists()


def test_finished_record_of_another_recipe_is_not_skipped(tmp_path, mnist_dir, data_checksums):
    recipe = REGISTRY["Model_1"].recipe.with_overrides(epochs=2)
    record = tmp_path / "Model_1" / "seed1.json"
    record.parent.mkdir()
    row = {"epoch": 1, "test_acc": 50.0}
    rec = {"model": "Model_1", "params": 1, "seed": 1, "recipe": recipe.to_dict(),
           "epochs": [row, {**row, "epoch": 2}], "limit": 300, "val": None, "data": data_checksums}
    record.write_text(json.dumps(rec))
    fails(cli("train", "Model_1", "--epochs", "3", "--limit", "300", "--resume", "--data-dir", mnist_dir, "--out",
              tmp_path, *FAST), "finished run of Model_1 with another recipe (epochs 2, not 3)")
    fails(cli("train", "Model_1", "--epochs", "2", "--limit", "400", "--resume", "--data-dir", mnist_dir, "--out",
              tmp_path, *FAST), "--limit 300, not 400")
    assert check_finished(record, "Model_1", recipe, run_identity(300, None, data_checksums)) == rec


# --- 4. one run per record at a time --------------------------------------------------------------------


def test_second_run_on_the_same_record_is_refused(tmp_path, mnist_dir):
    record = tmp_path / "Model_1" / "seed1.json"
    lock_run(record)  # as a first run would hold it
    try:  # the second run is another process: a lock is between processes
        proc = run_cli("train", "Model_1", "--epochs", "1", "--limit", "200", "--data-dir", str(mnist_dir),
                       "--out", str(tmp_path), *FAST)
        fails(proc, "another tinymnist run is writing")
        assert not record.exists()
    finally:
        release_locks()
    assert not record.with_suffix(".lock").exists()


def test_a_crashed_runs_lock_is_stale(tmp_path, mnist_dir):
    lock = tmp_path / "Model_1" / "seed1.lock"
    lock.parent.mkdir()
    lock.write_text("999999999\n")  # left by a killed run: nobody holds its flock
    proc = cli("train", "Model_1", "--epochs", "1", "--limit", "200", "--data-dir", mnist_dir, "--out", tmp_path,
               *FAST)
    assert proc.returncode == 0 and (tmp_path / "Model_1" / "seed1.json").exists() and not lock.exists()


def test_write_probe_has_a_unique_name(tmp_path):
    (tmp_path / ".tinymnist-write-test").mkdir()  # the old fixed name, as a concurrent start could leave it
    check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".tinymnist-write-test"]


# --- 5. IDX files cannot exhaust memory -----------------------------------------------------------------

HEADER = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 28, 28))


@pytest.fixture(scope="module")
def bomb_dir(tmp_path_factory, mnist_dir):
    """Real MNIST, except that train-images is a ~1 MB gzip of a valid header and 1 GB of zeros."""
    folder = tmp_path_factory.mktemp("bomb")
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(mnist_dir / name)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(2**24)
    with open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(z.compress(HEADER))
        f.writelines(z.compress(zeros) for _ in range(64))
        f.write(z.flush())
    return folder


def test_gzip_bomb_is_refused_without_decompressing_it(bomb_dir):
    assert (bomb_dir / "train-images-idx3-ubyte.gz").stat().st_size < 2_000_000
    start = time.perf_counter()
    with pytest.raises(DataError, match="longer than its header says"):
        load_mnist(bomb_dir, allow_download=False)
    assert time.perf_counter() - start < 10


def test_declared_size_has_a_ceiling_and_sparse_files_are_not_read(tmp_path):
    huge = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 28, 28))
    with pytest.raises(DataError, match="more than the"):
        parse_idx(gzip.compress(huge + bytes(1000)), "huge")
    write_fake_mnist(tmp_path, compress=False)
    sparse = tmp_path / "train-images-idx3-ubyte"
    with open(sparse, "wb") as f:
        f.write(HEADER)
        f.truncate(6 * 2**30)  # 6 GB, but no block is written
    with pytest.raises(DataError, match="longer than its header says"):
        load_mnist(tmp_path, checksums=None, allow_download=False)


def peak_rss_mb(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Runs the CLI in a fresh parent process, which reports its child's peak resident memory."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.returncode); "
             "sys.stderr.write(p.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "tinymnist", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=True)
    kb, code = proc.stdout.split()
    return int(kb) / 1024, subprocess.CompletedProcess(args, int(code), "", proc.stderr)


def test_gzip_bomb_peak_memory_stays_below_real_mnist(bomb_dir, mnist_dir):
    bomb_mb, bomb = peak_rss_mb("eval", "Model_41", "--data-dir", str(bomb_dir), "--device", "cpu")
    real_mb, real = peak_rss_mb("eval", "Model_41", "--data-dir", str(mnist_dir), "--device", "cpu")
    fails(bomb, "longer than its header says")
    assert real.returncode == 0, real.stderr
    print(f"peak memory: gzip bomb {bomb_mb:.0f} MB, real MNIST {real_mb:.0f} MB")
    assert bomb_mb < real_mb


# --- 6 and 11. options are checked when parsed ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seeds", "0-100000000"], "at most 1000 seeds"),
        (["--seeds", "1-"], "expected seeds like"),
        (["--seeds", "1,2-"], "expected seeds like"),
        (["--seeds", "4294967296"], "expected seeds like"),
        (["--seed", "99999999999999999999"], "expected a seed from 0 to 4294967295"),
        (["--lr", "1e39"], "positive number up to 3.4e+38"),
        (["--lr", "inf"], "positive number"),
        (["--epochs", "99999999999999999999"], "positive whole number up to"),
    ],
)
def test_out_of_range_options_are_refused_at_parse_time(args, fragment):
    start = time.perf_counter()
    fails(cli("train", "Model_1", *args, "--data-dir", "/nonexistent"), fragment)  # no data is loaded
    assert time.perf_counter() - start < 1


def test_seed_ranges_are_not_expanded_before_they_are_bounded():
    assert seed_list("1-3,2,7") == [1, 2, 3, 7]
    start = time.perf_counter()
    with pytest.raises(Exception, match="at most 1000"):
        seed_list("0-4294967295")
    assert time.perf_counter() - start < 0.1


# --- 7 and 10. images ---------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, bits: int = 1) -> bytes:
    """A PNG whose IHDR declares width x height grey pixels, with a tiny IDAT: decoding it would allocate."""
    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(100))) + \
        png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim width x height."""
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def digit_png() -> bytes:
    img = Image.new("L", (40, 40), 255)
    img.paste(0, (15, 8, 25, 32))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (lambda: jpeg_with_size(60000, 60000), "more than 25,000,000 pixels"),
        (lambda: png_header_only(30000, 30000), "more than 25,000,000 pixels"),
        (lambda: png_header_only(12000, 12000, 8), "12000x12000 pixels, more than the 25,000,000"),
        (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a PNG or JPEG"),
        (lambda: b"GIF89a" + bytes(40), "not a PNG or JPEG"),
    ],
)
def test_huge_and_foreign_images_are_refused_before_decoding(tmp_path, content, fragment):
    path = tmp_path / "digit.img"
    path.write_bytes(content())
    start = time.perf_counter()
    with pytest.raises(ImageError, match=fragment):
        load_grey(path)
    assert time.perf_counter() - start < 1


def test_png_with_a_shortened_idat_length(tmp_path):
    raw = bytearray(digit_png())
    idat = raw.index(b"IDAT") - 4
    length = struct.unpack(">I", raw[idat : idat + 4])[0]
    raw[idat : idat + 4] = struct.pack(">I", length // 2)
    path = tmp_path / "short.png"
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=r"short\.png is not a readable image"):
        load_grey(path)


def test_huge_image_through_the_cli(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_with_size(60000, 60000))
    fails(cli("predict", "Model_41", str(path)), "more than 25,000,000 pixels")


# --- 8. a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "tiny", "64k") as folder:
        yield folder


def test_full_disk_is_one_line_and_loses_nothing(tiny_disk, mnist_dir):
    args = ["train", "Model_1", "--epochs", "2", "--limit", "200", "--data-dir", str(mnist_dir), "--out",
            str(tiny_disk), *FAST]
    line = fails(cli(*args), "No space left on device")
    assert "nothing was lost" in line and "--resume" in line
    leftovers = [p.name for p in (tiny_disk / "Model_1").iterdir()]
    assert not any(name.endswith(".tmp") for name in leftovers), leftovers  # no half-written file
    fails(cli(*args, "--resume"), "No space left on device")  # still no traceback
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)  # space freed
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [e["epoch"] for e in json.loads((tiny_disk / "Model_1" / "seed1.json").read_text())["epochs"]] == [1, 2]


# --- 9 and 14. crafted checkpoints, states and records --------------------------------------------------


def shipped():
    return torch.load(SHIPPED, weights_only=True)


def crafted_checkpoints():
    good = shipped()
    sd = good["state_dict"]
    first = next(iter(sd))
    return {
        "model is a list": ({**good, "model": ["Model_41"]}, "model name is a list"),
        "recipe is a string": ({**good, "recipe": "sgd"}, "recipe is a str"),
        "dropout is a string": ({**good, "recipe": {"dropout": "x"}}, "dropout must be a number, not 'x'"),
        "state_dict is a tensor": ({**good, "state_dict": torch.zeros(3)}, "not a dictionary of named tensors"),
        "wrong shape": ({**good, "state_dict": {**sd, first: torch.zeros(1, 2)}}, f"{first} is (1, 2), expected"),
        "missing key": ({**good, "state_dict": {k: v for k, v in sd.items() if k != first}}, f"{first} missing"),
        "not a tensor": ({**good, "state_dict": {**sd, first: 3}}, f"{first} is a int"),
        "NaN": ({**good, "state_dict": {**sd, first: sd[first].clone().fill_(float("nan"))}}, "NaN or infinite"),
        "infinite": ({**good, "state_dict": {**sd, first: sd[first].clone().fill_(float("inf"))}}, "NaN or infinite"),
        "a list": ([1, 2], "not a tinymnist checkpoint"),
    }


@pytest.mark.parametrize("case", list(crafted_checkpoints()))
def test_crafted_checkpoints_are_refused_with_the_file_named(tmp_path, case):
    content, fragment = crafted_checkpoints()[case]
    path = tmp_path / "crafted.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=r"crafted\.pt") as err:
        load_checkpoint(path)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_nan_checkpoint_is_refused_by_eval_and_predict(tmp_path):
    path = tmp_path / "nan.pt"
    torch.save(crafted_checkpoints()["NaN"][0], path)
    image = tmp_path / "digit.png"
    image.write_bytes(digit_png())
    fails(cli("predict", str(path), str(image), "--json"), "NaN or infinite")
    fails(cli("eval", str(path), "--limit", "10"), "NaN or infinite")


def valid_state(tmp_path) -> tuple[Path, dict, object, dict]:
    recipe = REGISTRY["Model_41"].recipe.with_overrides(epochs=2)
    run = run_identity(100, None, {"x": "y"})
    path = tmp_path / "seed1.state.pt"
    make_state(path, "Model_41", recipe, run)
    return path, torch.load(path, weights_only=True), recipe, run


def test_crafted_states_are_refused_with_the_file_named(tmp_path):
    path, good, recipe, run = valid_state(tmp_path)
    assert load_state(path, get_entry("Model_41"), recipe, run)["history"] == good["history"]
    first = next(iter(good["model"]))
    opt = good["optimizer"]
    cases = {
        "empty file": b"",
        "a list": [1],
        "recipe is a string": {**good, "recipe": "sgd"},
        "no run": {k: v for k, v in good.items() if k != "run"},
        "model is a tensor": {**good, "model": torch.zeros(2)},
        "wrong shape": {**good, "model": {**good["model"], first: torch.zeros(2)}},
        "missing model": {k: v for k, v in good.items() if k != "model"},
        "missing rng": {k: v for k, v in good.items() if k != "rng"},
        "rng of floats": {**good, "rng": torch.zeros(5)},
        "history is a dict": {**good, "history": {}},
        "history too long": {**good, "history": good["history"] * 3},
        "optimizer is a list": {**good, "optimizer": []},
        "optimizer lr a string": {**good, "optimizer": {**opt, "param_groups": [
            {**g, "lr": "x"} for g in opt["param_groups"]]}},
        "optimizer buffers of another shape": {**good, "optimizer": {**opt, "state": {
            0: {"momentum_buffer": torch.zeros(3)}}}},
    }
    for case, content in cases.items():
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(CheckpointError, match=r"seed1.state\.pt") as err:
            load_state(path, get_entry("Model_41"), recipe, run)
        assert "\n" not in str(err.value), case


def test_crafted_records_are_refused_with_the_file_named(tmp_path, mnist_dir):
    record = tmp_path / "Model_1" / "seed1.json"
    record.parent.mkdir()
    for content in ("[1, 2]", "", "{\"epochs\": [{\"test_acc\": \"x\"}]}", "\xff"):
        record.write_text(content, errors="surrogateescape") if content != "\xff" else record.write_bytes(b"\xff")
        fails(cli("train", "Model_1", "--limit", "100", "--epochs", "1", "--resume", "--data-dir", mnist_dir,
                  "--out", tmp_path, *FAST), str(record))


def test_empty_state_file_with_resume(tmp_path, mnist_dir):
    state = tmp_path / "Model_1" / "seed1.state.pt"
    state.parent.mkdir()
    state.write_bytes(b"")
    fails(cli("train", "Model_1", "--limit", "100", "--epochs", "1", "--resume", "--data-dir", mnist_dir, "--out",
              tmp_path, *FAST), f"{state}: not a readable training state")


# --- 12. a batch of one image for BatchNorm -------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["Model_6", "--limit", "65"], "65 training images in batches of 64 leave a batch of one image"),
        (["Model_41", "--val", "31"], "59969 training images in batches of 256 leave a ghost batch of 64 of one"),
        (["Model_6", "--limit", "200", "--batch-size", "199"], "leave a batch of one image"),
    ],
)
def test_batch_of_one_for_batchnorm_is_refused_before_training(tmp_path, mnist_dir, args, fragment):
    err = fails(cli("train", *args, "--data-dir", mnist_dir, "--out", tmp_path, *FAST), fragment)
    assert "--limit, --val or --batch-size" in err, err
    assert not list(tmp_path.rglob("*.pt"))


# --- 13. interruptions at any moment --------------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_imports_is_one_line(sig, code):
    pytest.importorskip("numpy")
    proc = subprocess.Popen([sys.executable, "-m", "tinymnist", "models"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # the moment the signal was lost (issue 26): torch's import initialising numpy, inside torch's C++ code
    assert wait_for_proc(proc, maps("_multiarray_umath")), "the process ended before it imported numpy"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and one_line(err) == "tinymnist: interrupted", err


def test_sigterm_during_training_is_the_same_line_as_ctrl_c(tmp_path, mnist_dir):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinymnist", "train", "Model_1", "--epochs", "50", "--limit", "2000", "--data-dir",
         str(mnist_dir), "--out", str(out), *FAST], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    state = out / "Model_1" / "seed1.state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert one_line(err) == "tinymnist: interrupted (an interrupted training run continues with --resume)"
    assert not (out / "Model_1" / "seed1.lock").exists()


# --- 15. messages ---------------------------------------------------------------------------------------


def test_messages_say_what_is_wrong(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    fails(cli("eval", "Model_41", "--data-dir", loop), "is a symbolic link loop")
    fails(cli("eval", "Model_41", "--data-dir", a_file), "is a file, not a folder")
    fails(cli("eval", tmp_path), "is a folder, not a file")
    fails(cli("predict", "Model_41", loop), "is a symbolic link loop")
    fails(cli("eval", "Model_41", env={"TINYMNIST_DATA": str(a_file)}),
          f"$TINYMNIST_DATA={a_file} is a file, not a folder")


def test_unsafe_checkpoint_message_has_no_advice_to_load_it_unsafely(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": "Model_41", "state_dict": {}, "x": Path("/")}, evil)  # a pickled class
    err = fails(cli("eval", evil), "refused, not a plain weights checkpoint")
    assert "weights_only" not in err, err


def test_interruption_of_export_does_not_speak_of_training(capsys):
    from tinymnist.errors import interrupted

    assert interrupted(KeyboardInterrupt(), ["export", "final", "--onnx", "x.onnx"]) == 130
    assert capsys.readouterr().err == "tinymnist: interrupted\n"
    assert interrupted(KeyboardInterrupt(signal.SIGTERM), ["train", "final"]) == 143
    assert "--resume" in capsys.readouterr().err


# --- fuzzing --------------------------------------------------------------------------------------------


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        i = rng.randrange(len(data)) if data else 0
        if kind < 0.5 and data:
            data[i] = rng.randrange(256)
        elif kind < 0.7:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind < 0.85:
            del data[i : i + rng.randint(1, 64)]
        else:
            data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def fuzz_seeds():
    jpeg = io.BytesIO()
    img = Image.open(io.BytesIO(digit_png())).convert("RGB")
    img.save(jpeg, "JPEG")
    progressive = io.BytesIO()
    img.save(progressive, "JPEG", progressive=True)
    rgba = io.BytesIO()
    img.convert("RGBA").save(rgba, "PNG")
    return [digit_png(), jpeg.getvalue(), progressive.getvalue(), rgba.getvalue()]


def test_fuzzed_images_raise_only_image_errors(tmp_path):
    rng = random.Random(19)
    path = tmp_path / "fuzz.img"
    seeds, outcomes = fuzz_seeds(), {"ok": 0, "refused": 0}
    start = time.perf_counter()
    for case in range(3000):
        path.write_bytes(mutate(seeds[case % len(seeds)], rng))
        try:
            to_mnist_checked(path)
            outcomes["ok"] += 1
        except ImageError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and time.perf_counter() - start < 60, outcomes


def test_fuzzed_checkpoints_and_states_raise_only_checkpoint_errors(tmp_path):
    rng = random.Random(19)
    state_path, _, recipe, run = valid_state(tmp_path)
    seeds = [(SHIPPED.read_bytes(), "checkpoint"), (state_path.read_bytes(), "state")]
    path = tmp_path / "fuzz.pt"
    refused = 0
    for case in range(400):
        raw, kind = seeds[case % 2]
        path.write_bytes(mutate(raw, rng))
        try:
            load_checkpoint(path) if kind == "checkpoint" else load_state(path, get_entry("Model_41"), recipe, run)
        except CheckpointError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 100


def test_fuzzed_files_through_the_cli(tmp_path):
    rng = random.Random(7)
    seeds = fuzz_seeds()
    images = []
    for i in range(6):
        path = tmp_path / f"fuzz{i}.png"
        path.write_bytes(mutate(seeds[i % len(seeds)], rng))
        images.append(path)
        proc = cli("predict", "Model_41", str(path))
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode == 2:
            fails(proc)
    for i in range(3):
        path = tmp_path / f"fuzz{i}.pt"
        path.write_bytes(mutate(SHIPPED.read_bytes(), rng))
        proc = cli("predict", str(path), str(images[0]))
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr


def test_fuzzed_states_through_train_resume(tmp_path, mnist_dir, data_checksums):
    rng = random.Random(5)
    recipe = REGISTRY["Model_1"].recipe.with_overrides(epochs=2)
    state = tmp_path / "Model_1" / "seed1.state.pt"
    state.parent.mkdir()
    make_state(state, "Model_1", recipe, run_identity(100, None, data_checksums))
    good = state.read_bytes()
    for _ in range(2):
        state.write_bytes(mutate(good, rng))
        proc = cli("train", "Model_1", "--epochs", "2", "--limit", "100", "--resume", "--data-dir", str(mnist_dir),
                   "--out", str(tmp_path), *FAST)
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode == 2:
            fails(proc)


def test_fuzzed_idx_files_raise_only_data_errors():
    rng = random.Random(3)
    raw = HEADER[:4] + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28)) + bytes(range(256)) * 15 + bytes(80)
    seeds = [raw, gzip.compress(raw)]
    refused = 0
    for case in range(1000):
        try:
            parse_idx(mutate(seeds[case % 2], rng), "fuzz")
        except DataError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 500


def test_bench_save_onto_a_special_file_is_refused_before_measuring(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    start = time.perf_counter()
    fails(cli("bench", "Model_1", "--save", str(fifo), "--limit", "64", "--batches", "1"), "special file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and time.perf_counter() - start < 30


def test_the_bad_input_table_names_only_tests_that_exist():
    table = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", table))

    def tests_in(path: Path) -> set[str]:
        return set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))

    everywhere = set().union(*(tests_in(p) for p in Path(__file__).parent.glob("test_*.py")))  # issue 26's too
    assert named and named <= everywhere, named - everywhere
    defined = tests_in(Path(__file__))
    assert defined - named <= {"test_the_bad_input_table_names_only_tests_that_exist"}, defined - named
    for file, name in re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", table):  # tests in other files
        assert re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE), f"{file}::{name}"


def test_download_onto_a_pipe_is_one_line(tmp_path):
    from tinymnist.data import download

    raw = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 7]))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "x.gz").write_bytes(raw)
    os.mkfifo(tmp_path / "x.gz")
    with pytest.raises(DataError, match=r"x\.gz: it is a special file"):
        download(tmp_path, "x", None, mirrors=(mirror.as_uri() + "/",))
