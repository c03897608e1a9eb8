import gzip
import hashlib

import pytest
import torch

from conftest import idx_bytes, write_fake_mnist
from tinymnist import data
from tinymnist.augment import augment_batch
from tinymnist.data import DataError, load_mnist, parse_idx
from tinymnist.recipes import Augment

NAMES = [name for name, _ in data.FILES.values()]


def test_reads_gzip_and_plain_files(tmp_path):
    write_fake_mnist(tmp_path / "gz", compress=True)
    write_fake_mnist(tmp_path / "raw", compress=False)
    a = load_mnist(tmp_path / "gz", checksums=None, allow_download=False)
    b = load_mnist(tmp_path / "raw", checksums=None, allow_download=False)
    assert a.train_images.shape == (32, 28, 28) and a.train_images.dtype == torch.uint8
    assert a.test_labels.shape == (16,) and a.test_labels.dtype == torch.int64
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)


def test_reads_torchvision_layout(tmp_path):
    write_fake_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_mnist(tmp_path, checksums=None, allow_download=False).train_labels) == 32


def test_folder_precedence_option_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.resolve_dir(tmp_path / "opt") == tmp_path / "opt"
    assert data.resolve_dir(None) == tmp_path / "env"
    monkeypatch.delenv(data.ENV_VAR)
    assert data.resolve_dir(None) == data.DEFAULT_DIR


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: gzip.compress(raw)[:-20], "truncated or corrupt gzip"),
        (lambda raw: gzip.compress(raw)[:10] + b"\xff" * 30, "truncated or corrupt gzip"),
        (lambda raw: raw[:-100], "truncated"),
        (lambda raw: raw + b"\x00", "longer than its header says"),
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "wrong magic number"),
        (lambda raw: b"PK\x03\x04" + raw[4:], "wrong magic number"),
        (lambda raw: b"", "wrong magic number"),
    ],
)
def test_damaged_files_are_named_in_a_clear_error(tmp_path, damage, message):
    write_fake_mnist(tmp_path, compress=False)
    target = tmp_path / "t10k-images-idx3-ubyte"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        load_mnist(tmp_path, checksums=None, allow_download=False)
    assert "t10k-images-idx3-ubyte" in str(err.value) and "\n" not in str(err.value)


def test_wrong_checksum_is_refused(tmp_path):
    write_fake_mnist(tmp_path)  # valid IDX files, but not the real MNIST content
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        load_mnist(tmp_path, allow_download=False)


def test_checksum_is_of_the_decompressed_content():
    raw = idx_bytes(torch.zeros(3, 2, 2))
    sha = hashlib.sha256(raw).hexdigest()
    assert parse_idx(gzip.compress(raw, mtime=0), "x", sha).shape == (3, 2, 2)
    assert parse_idx(gzip.compress(raw, compresslevel=1, mtime=7), "x", sha).shape == (3, 2, 2)


def test_missing_explicit_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nope")


def test_download_tries_mirrors_in_order_and_verifies(tmp_path):
    bad, good = tmp_path / "bad", tmp_path / "good"
    write_fake_mnist(good)
    bad.mkdir()
    for name in NAMES:  # the first mirror serves corrupt copies of every file
        (bad / f"{name}.gz").write_bytes(b"\x1f\x8b garbage")
    checksums = {name: hashlib.sha256(gzip.decompress((good / f"{name}.gz").read_bytes())).hexdigest()
                 for name in NAMES}
    dest = tmp_path / "dest"
    dest.mkdir()
    mnist = load_mnist(dest, mirrors=[bad.as_uri() + "/", good.as_uri() + "/"], checksums=checksums)
    assert len(mnist.train_labels) == 32
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in NAMES)  # no partial files left


def test_offline_download_fails_with_one_line_saying_where_to_put_files(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError) as err:
        load_mnist(dest, mirrors=[(tmp_path / "nothing").as_uri() + "/"])
    msg = str(err.value)
    assert "\n" not in msg and str(dest) in msg and "--data-dir" in msg
    assert list(dest.iterdir()) == []


def test_real_mnist_verifies_and_has_the_published_label_counts(mnist_dir):
    mnist = load_mnist(mnist_dir)
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.test_labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = mnist.train_images.float() / 255
    assert x.mean().item() == pytest.approx(data.MEAN, abs=1e-4) and x.std().item() == pytest.approx(data.STD, abs=1e-4)


def test_augmentation_is_per_sample_and_stays_in_range():
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # the same bar in every image
    out = augment_batch(x, Augment())
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1])  # each image draws its own parameters


def test_augmentation_with_zero_strength_is_identity():
    x = torch.rand(4, 1, 28, 28)
    none = Augment(rotation=0, shear=0, translate=0, scale_min=1, scale_max=1, brightness=0, contrast=0)
    assert torch.allclose(augment_batch(x, none), x, atol=1e-5)


def test_rotation_moves_pixels_about_the_centre():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 13:15, 4:24] = 1.0  # a horizontal bar through the centre
    rotated = augment_batch(x, Augment(rotation=90, shear=0, translate=0, scale_min=1, scale_max=1, brightness=0,
                                       contrast=0))
    # whatever the angle drawn, the centre stays lit and the mass stays centred
    assert rotated[0, 0, 13:15, 13:15].mean() > 0.5
    ys, xs = torch.nonzero(rotated[0, 0] > 0.5, as_tuple=True)
    assert abs(ys.float().mean() - 13.5) < 1 and abs(xs.float().mean() - 13.5) < 1
