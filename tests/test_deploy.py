"""predict on image files, ONNX export, and checkpoints given by model name."""

import json

import pytest
import torch
from PIL import Image

from conftest import ROOT, cli, fails
from tinymnist.data import load_mnist
from tinymnist.predict import ImageError, to_mnist


@pytest.fixture(scope="module")
def digits(mnist_dir):
    mnist = load_mnist(mnist_dir)
    return mnist.test_images[:20], mnist.test_labels[:20]


def photo_of(digit: torch.Tensor, dark_ink: bool, size=(150, 210), colour=True) -> Image.Image:
    """An MNIST digit blown up into a larger, off-centre picture, as a scan or photo of one might be."""
    img = Image.frombytes("L", (28, 28), bytes(digit.flatten().tolist())).resize((120, 120), Image.BILINEAR)
    if dark_ink:
        img = Image.eval(img, lambda v: 255 - v)
    canvas = Image.new("L", size, 255 if dark_ink else 0)
    canvas.paste(img, (10, 60))
    return canvas.convert("RGB") if colour else canvas


@pytest.mark.parametrize("dark_ink", [True, False])
def test_pictures_are_converted_like_mnist(digits, dark_ink):
    images, _ = digits
    for digit in images[:10]:
        converted = to_mnist(photo_of(digit, dark_ink).convert("L")).float()
        original = digit.float()
        corr = torch.corrcoef(torch.stack([converted.flatten(), original.flatten()]))[0, 1]
        assert corr > 0.8, corr


def test_blank_image_is_an_error():
    with pytest.raises(ImageError, match="blank"):
        to_mnist(Image.new("L", (50, 50), 255))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("ckpt")
    proc = cli("train", "Model_3", "--epochs", "1", "--limit", "2000", "--data-dir", str(mnist_dir),
               "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out / "Model_3" / "seed1.pt"


def test_predict_json_on_png_and_jpeg(tmp_path, digits, checkpoint):
    images, _ = digits
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    photo_of(images[0], True).save(png)
    photo_of(images[1], False).save(jpg, quality=90)
    proc = cli("predict", str(checkpoint), str(png), str(jpg), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["file"] for r in rows] == [str(png), str(jpg)]
    assert all(0 <= r["digit"] <= 9 and 0 < r["probability"] <= 1 for r in rows)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.write_text("not an image"), "not a readable image"),
        (lambda p: None, "does not exist"),
    ],
)
def test_predict_bad_files(tmp_path, checkpoint, make, fragment):
    target = tmp_path / "digit.png"
    make(target)
    fails(cli("predict", str(checkpoint), str(target)), fragment)


def test_predict_needs_images(checkpoint):
    fails(cli("predict", str(checkpoint)), "IMAGE")


def test_export_onnx_matches_pytorch(tmp_path, checkpoint, mnist_dir):
    out = tmp_path / "m.onnx"
    proc = cli("export", str(checkpoint), "--onnx", str(out), "--data-dir", str(mnist_dir))
    assert proc.returncode == 0, proc.stderr
    assert "agrees with PyTorch on 10000/10000 test labels" in proc.stdout and "(OK)" in proc.stdout
    assert out.stat().st_size > 10_000


def test_checkpoint_of_another_model_is_refused(tmp_path, checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"] = "Model_1"
    wrong = tmp_path / "wrong.pt"
    torch.save(ckpt, wrong)
    proc = cli("eval", str(wrong))
    assert proc.returncode == 2 and "weights do not fit Model_1" in proc.stderr


def test_truncated_checkpoint_is_refused(tmp_path, checkpoint):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:2000])
    fails(cli("eval", str(cut)), "not a readable checkpoint")


@pytest.mark.artifacts
@pytest.mark.parametrize("role", ["final", "tiny"])
def test_shipped_weights_reproduce_their_record(role, mnist_dir):
    """`tinymnist eval <role>` uses the shipped weights and matches the record they came from; every role is
    held (a vacant one fails here)."""
    from tinymnist.model import ROLES
    from tinymnist.records import WEIGHTS_DIR

    meta = json.loads((WEIGHTS_DIR / f"{ROLES[role]}.json").read_text())
    assert meta["model"] == ROLES[role] and meta["role"] == role
    record = json.loads((ROOT / meta["record"]).read_text())
    proc = cli("eval", role, "--json", "--data-dir", str(mnist_dir))  # a role works as a model name
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    last = record["epochs"][-1]
    assert res["accuracy"] == last["test_acc"] and res["correct"] == last["test_correct"]
    assert res["total"] == 10_000 and record["seed"] == meta["seed"]


def test_shipped_final_model_reads_pictures_of_digits(tmp_path, digits):
    images, labels = digits
    files = []
    for i in range(10):
        path = tmp_path / f"d{i}.{'png' if i % 2 else 'jpg'}"
        photo_of(images[i], dark_ink=i % 3 != 0, colour=i % 2 == 0).save(path)
        files.append(str(path))
    proc = cli("predict", "final", *files, "--json")
    assert proc.returncode == 0, proc.stderr
    predicted = [r["digit"] for r in json.loads(proc.stdout)]
    assert sum(p == t for p, t in zip(predicted, labels[:10].tolist())) >= 9
