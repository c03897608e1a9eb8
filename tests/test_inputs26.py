"""Issue 26's receptive fields and bad inputs: fields at the real 28x28 input (1), the budget counted before
the network is built (8), a user's network failing in one line (7), crafted checkpoints (9, 13, 14) and
recipe and search-space files (6)."""

import json
import random
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib

import pytest
import torch
from torch import nn

from conftest import ROOT, cli, fails, fake_data
from tinymnist.engine import fit
from tinymnist.model import BudgetError, ModelCodeError, UserNetworkError, create_model, get_entry, resolve
from tinymnist.recipes import Recipe, RecipeError, load_recipe_file
from tinymnist.records import CheckpointError, load_checkpoint, save_checkpoint
from tinymnist.runtime import default_runtime
from tinymnist.search import SearchError, check_recipe_fields, load_space
from tinymnist.summary import analytic_rf, measured_rf, summary_dict


def limited(limit_mb: int) -> str:
    """Python code that caps the process's address space (a hostile input must fail inside it, not kill us)."""
    return f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit_mb << 20}, {limit_mb << 20})); "


# --- 1. receptive fields at the 28x28 input -----------------------------------------------------------


def issue_net() -> nn.Sequential:
    """The issue's example: a net ending in nn.AdaptiveAvgPool2d(1), once reported as RF 124."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 3), nn.ReLU(), nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def test_global_pooling_sees_the_28x28_image_not_the_measuring_canvas(tmp_path):
    net = issue_net()
    fields = measured_rf(net)
    assert fields == {k: v for k, v in analytic_rf(net).items() if k in fields}
    assert fields["7"] == (12, 2) and fields["10"] == (28, 0)  # conv 3, pool 4, conv 8, conv 12, the whole image
    assert summary_dict("net", net)["rf"] == 28
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n\ndef MyNet():\n    return nn.Sequential(\n"
        "        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.MaxPool2d(2),\n"
        "        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.BatchNorm2d(16),\n"
        "        nn.Conv2d(16, 16, 3), nn.ReLU(), nn.BatchNorm2d(16),\n"
        "        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))\n")
    proc = cli("summary", f"{tmp_path / 'net.py'}:MyNet", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["rf"] == 28 and info["layers"][-1]["rf"] == 28


def test_a_padded_layer_before_the_pool_is_clipped_to_the_image():
    """Model_1's 6x6 average pool follows a padded convolution: 22 + 5 x 2 = 32 on paper, 28 in the image."""
    info = summary_dict("Model_1", create_model("Model_1"))
    rows = {r["name"]: (r["rf"], r["jump"]) for r in info["layers"]}
    assert rows["conv6"] == (22, 2) and rows["gap"] == (28, 0) and info["rf"] == 28


def test_strides_dilation_padding_and_adaptive_pools_by_hand():
    strided = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, dilation=2),
                            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))  # 13 + 4 x 4 = 29 on paper
    padded = nn.Sequential(nn.Conv2d(1, 4, 5, padding=4), nn.Conv2d(4, 4, 5, padding=4), nn.AvgPool2d(4),
                           nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    for net, by_hand in [
        (strided, {"0": (3, 2), "1": (11, 2), "2": (13, 4), "3": (28, 0)}),
        # the field reaches both edges at block 4 (its neighbour's only the right one: jump 4), then both
        # neighbours' fields are the whole image (jump 0)
        (padded, {"0": (5, 1), "1": (9, 1), "2": (12, 4), "3": (20, 4), "4": (28, 4), "5": (28, 0)}),
    ]:
        assert measured_rf(net) == by_hand
        assert analytic_rf(net) == by_hand


def random_net(rng: random.Random) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(["conv", "conv", "max", "avg", "adaptive"])
        if kind == "conv":
            k, s, d = rng.choice([1, 2, 3, 5]), rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3])
            pad = "same" if s == 1 and rng.random() < 0.15 else rng.randint(0, 3)
            mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
            layer = nn.Conv2d(1 if not layers else 3, 3, k, stride=s, padding=pad, dilation=d, padding_mode=mode)
        elif kind == "adaptive":
            layer = nn.AdaptiveAvgPool2d(rng.choice([1, 2, 3, 5]))
        else:
            k = rng.choice([2, 3])
            pool = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
            layer = pool(k, rng.choice([1, 2, 3]), rng.randint(0, k // 2), ceil_mode=rng.random() < 0.3)
        layers.append(nn.Sequential(layer, nn.ReLU()))
        try:
            nn.Sequential(*layers)(torch.zeros(1, 1, 28, 28))
        except RuntimeError:  # too small a map for this layer, or reflect padding wider than the map
            layers.pop()
    return nn.Sequential(*layers)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_measured_and_analytic_fields_agree_on_random_networks():
    rng, compared, threads = random.Random(26), 0, torch.get_num_threads()
    torch.set_num_threads(1)  # tiny maps: threads only add overhead
    try:
        for _ in range(120):
            net = random_net(rng)
            if len(net):
                measured = measured_rf(net)
                assert measured == analytic_rf(net), net
                assert all(0 <= rf <= 28 for rf, _ in measured.values()), net  # 0: a unit reading only padding
                compared += len(measured)
    finally:
        torch.set_num_threads(threads)
    assert compared > 250


class Residual(nn.Module):
    """A branching network: a strided two-convolution branch beside a strided 1x1 shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(4, 8, 1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b(torch.relu(self.a(x))) + self.shortcut(x))
        return self.fc(self.pool(x).flatten(1))


def test_a_branching_network_by_hand():
    # stem: the middle unit (14) of 28 reads 13..15; a: unit 7 of 14 reads stem 13..15, pixels 12..16; b: a's
    # 6..8, pixels 10..18; the shortcut: stem 14, pixels 13..15; the pool: every unit, the whole image
    assert measured_rf(Residual()) == {"stem": (3, 1), "a": (5, 2), "b": (9, 2), "shortcut": (3, 2),
                                       "pool": (28, 0)}
    info = summary_dict("Residual", Residual())
    assert info["rf"] == 28 and (info["layers"][-1]["name"], info["layers"][-1]["rf"]) == ("fc", 28)


# --- 8. the budget before the network is built --------------------------------------------------------


def test_a_network_over_the_budget_is_refused_before_it_is_built():
    """width=3000000 makes MyNet 8 x 10^14 parameters; counted on the meta device it costs nothing."""
    args = ["train", "examples/my_net.py:MyNet", "--model-arg", "width=3000000", "--max-params", "8000",
            "--limit", "64", "--epochs", "1", "--data-dir", "/nonexistent"]
    code = f"{limited(4000)}import sys; from tinymnist.cli import main; sys.exit(main({args!r}))"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    fails(proc, "has 810,000,129,000,010 parameters, over the budget of 8,000")
    assert time.perf_counter() - start < 60
    with pytest.raises(BudgetError, match="over the budget of 5,000"):
        resolve("examples/my_net.py:MyNet", max_params=5000)


def test_summary_builds_the_network_once(tmp_path):
    count = tmp_path / "built"
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n\ndef make():\n"
        f"    open({str(count)!r}, 'a').write('x')\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    proc = cli("summary", f"{tmp_path / 'net.py'}:make")
    assert proc.returncode == 0, proc.stderr
    assert count.read_text() == "x"


# --- 7. a user's network that fails -------------------------------------------------------------------

USER_NETS = '''import torch
from torch import nn


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def scores(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class Boom(Base):
    def forward(self, x):
        if self.training:
            raise RuntimeError("boom in training")  # line 18
        return self.scores(x)


class Double(Base):
    def forward(self, x):
        return self.scores(x).double()


class DoubleInTraining(Base):
    def forward(self, x):
        return self.scores(x).double() if self.training else self.scores(x)


class ShapeInTraining(Base):
    def forward(self, x):
        return self.scores(x)[:, :5] if self.training else self.scores(x)


class Ints(Base):
    def forward(self, x):
        return (self.scores(x) * 100).long() if self.training else self.scores(x)


class LogProbsInts(Base):
    def forward(self, x):
        out = torch.log_softmax(self.scores(x), 1)
        return out.long() if self.training else out


class SmallEval(Base):
    def forward(self, x):
        if not self.training and len(x) > 2:
            raise ValueError("only small batches in evaluation")  # line 51
        return self.scores(x)
'''


@pytest.fixture
def user_nets(tmp_path):
    (tmp_path / "nets.py").write_text(USER_NETS)
    return tmp_path / "nets.py"


@pytest.mark.parametrize("name, fragment", [
    ("Boom", "failed in training: RuntimeError: boom in training ({file}, line 18)"),
    ("DoubleInTraining", "returned float64 (32, 10) in training; expected float32 (32, 10)"),
    ("ShapeInTraining", "returned (32, 5) in training; expected float32 (32, 10)"),
    ("Ints", "returned int64 (32, 10) in training; expected float32 (32, 10)"),
    ("LogProbsInts", "returned int64 (32, 10) in training; expected float32 (32, 10)"),
    ("SmallEval", "failed in evaluation: ValueError: only small batches in evaluation ({file}, line 51)"),
])
def test_a_user_network_failing_in_training_or_evaluation_is_named_with_its_line(user_nets, name, fragment):
    model = resolve(f"{user_nets}:{name}").build()
    with pytest.raises(UserNetworkError) as e:
        fit(model, fake_data(), Recipe(epochs=1, batch_size=32), default_runtime("cpu"))
    message = str(e.value)
    assert message.startswith(f"your network {user_nets}:{name} ") and fragment.format(file=user_nets) in message
    assert "\n" not in message


def test_a_network_returning_float64_is_refused_when_built(user_nets):
    with pytest.raises(ModelCodeError, match=r"returned float64 \(2, 10\) for a \(2, 1, 28, 28\) batch"):
        resolve(f"{user_nets}:Double")


def test_through_the_cli_one_line_and_the_traceback_on_request(user_nets, mnist_dir, tmp_path):
    args = ("train", f"{user_nets}:Boom", "--limit", "64", "--epochs", "1", "--data-dir", mnist_dir, "--out",
            tmp_path / "out", "--quiet")
    fails(cli(*args), f"your network {user_nets}:Boom failed in training: RuntimeError: boom")
    debug = cli(*args, env={"TINYMNIST_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr
    assert f'File "{user_nets}", line 18, in forward' in debug.stderr, debug.stderr


# --- 9, 13 and 14. checkpoints ------------------------------------------------------------------------


def crafted(tmp_path, name: str, change) -> str:
    entry = get_entry("Model_41")
    state = {k: v.clone() for k, v in create_model("Model_41").state_dict().items()}
    ckpt = {"model": "Model_41", "recipe": entry.recipe.to_dict(), "state_dict": state}
    change(ckpt)
    torch.save(ckpt, tmp_path / name)
    return str(tmp_path / name)


def deeply_nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def save_deep(path, depth: int) -> None:
    """torch.save recurses on nesting: save in a thread with a stack large enough for it."""
    def save():
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(4 * depth)
        try:
            ckpt = {"model": "Model_41", "recipe": {"epochs": deeply_nested(depth)},
                    "state_dict": create_model("Model_41").state_dict()}
            torch.save(ckpt, path)
        finally:
            sys.setrecursionlimit(limit)

    old = threading.stack_size(256 << 20)
    try:
        worker = threading.Thread(target=save)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old)


def test_crafted_checkpoints_are_refused_with_the_file_named(tmp_path):
    def meta(c):
        c["state_dict"]["conv1.0.weight"] = torch.empty(8, 1, 3, 3, device="meta")

    def sparse(c):
        c["state_dict"]["conv1.0.weight"] = c["state_dict"]["conv1.0.weight"].to_sparse()

    def negative_variance(c):
        c["state_dict"]["conv2.2.running_var"] -= 10

    save_deep(tmp_path / "deep.pt", 3000)
    for path, fragment in [
        (crafted(tmp_path, "meta.pt", meta), "conv1.0.weight is a meta tensor, not a dense tensor of values"),
        (crafted(tmp_path, "sparse.pt", sparse), "conv1.0.weight is a sparse_coo tensor"),
        (crafted(tmp_path, "var.pt", negative_variance), "conv2.2.running_var has negative values (a variance)"),
        (str(tmp_path / "deep.pt"), "not a tinymnist checkpoint (it nests containers more than 16 deep)"),
    ]:
        with pytest.raises(CheckpointError, match="^" + path) as e:
            load_checkpoint(path)
        assert fragment in str(e.value)
        fails(cli("predict", path, tmp_path / "none.png", "--json"), f"{path}: ")


def zip_bomb(path, good, declared: int) -> None:
    """`good`'s entries, the first tensor's replaced by `declared` zero bytes, deflated (about 1,000:1). The
    deflate stream repeats one block's bytes; it is written as a stored entry whose headers then say deflated."""
    chunk, packer = bytes(1 << 24), zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every zero chunk
    stream = block * (declared // len(chunk)) + packer.flush()
    crc = 0
    for _ in range(declared // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, stream if info.filename.endswith("/data/0") else src.read(info.filename))
    with zipfile.ZipFile(path) as z:
        bomb = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    while not data[central + 46:].startswith(bomb.filename.encode()):
        central = data.index(b"PK\x01\x02", central + 4)
    for method, crc_at, size_at in ((bomb.header_offset + 8, bomb.header_offset + 14, bomb.header_offset + 22),
                                    (central + 10, central + 16, central + 24)):  # local header, central record
        struct.pack_into("<H", data, method, zipfile.ZIP_DEFLATED)
        struct.pack_into("<I", data, crc_at, crc)
        struct.pack_into("<I", data, size_at, declared)
    path.write_bytes(bytes(data))


def test_a_checkpoint_declaring_more_than_it_holds_is_refused_unread(tmp_path):
    """torch.load allocates what an entry declares: 512 MiB here from a 0.5 MB file."""
    good = tmp_path / "good.pt"
    save_checkpoint(good, "Model_41", create_model("Model_41"), get_entry("Model_41").recipe)
    zip_bomb(tmp_path / "bomb.pt", good, 512 << 20)
    assert (tmp_path / "bomb.pt").stat().st_size < 2 << 20
    # the peak since exec (VmHWM): ru_maxrss also counts the forking pytest's, over 512 MB late in a suite
    probe = ("import sys; from tinymnist.cli import main; code = main(sys.argv[1:]); "
             "print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))"
             " // 1024); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", limited(4000) + probe, "eval", str(tmp_path / "bomb.pt"),
                           "--data-dir", "/nonexistent"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    fails(proc, "bomb.pt: not a readable checkpoint (its entries declare 536,")
    assert int(proc.stdout) < 512, f"peak memory {proc.stdout} MB"
    (tmp_path / "old.pt").write_bytes(b"\x80\x02" + bytes(100))  # not a zip archive: the format before torch 1.6
    with pytest.raises(CheckpointError, match="not a zip archive"):
        load_checkpoint(tmp_path / "old.pt")


# --- 6. recipe and search-space files -----------------------------------------------------------------


def deep_toml(depth: int, array: bool) -> str:
    return "epochs = " + ("[" * depth + "]" * depth if array else "{a = " * depth + "1" + "}" * depth) + "\n"


@pytest.mark.parametrize("content, fragment", [
    (bytes(range(256)), "not a text file (not UTF-8)"),
    (deep_toml(5000, array=True), "tables or arrays nested more than 8 deep"),
    (deep_toml(3000, array=False), "tables or arrays nested more than 8 deep"),
    (deep_toml(20, array=True), "tables or arrays nested more than 8 deep"),
    ("epochs = 99999999999999999999\n", "recipe field epochs must be at most 2,147,483,647"),
    ("lr = " + "9" * 400 + "\n", "recipe field lr must be finite, not 9999"),
    ("lr = [1, 2]\n", "recipe field lr must be a number, not a list"),
    ("[augment]\nrotation = [[[1]]]\n", "recipe field rotation must be a number, not a list"),
])
def test_bad_recipe_files_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "r.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RecipeError, match=f"^recipe file {path}: "):
        load_recipe_file(str(path))
    fails(cli("train", "Model_41", "--recipe", path, "--data-dir", "/nonexistent"), fragment)


def test_big_and_special_toml_files_are_refused_unread(tmp_path):
    import os

    big = tmp_path / "space.toml"
    with open(big, "wb") as f:
        f.truncate(50 << 20)  # 50 MB, not one block written: it is refused, not read
    start = time.perf_counter()
    with pytest.raises(SearchError, match="larger than 1,048,576 bytes"):
        load_space(big)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(RecipeError, match="is a special file"):  # opening it would wait for a writer
        load_recipe_file(str(fifo))
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("space, fragment", [
    ("[lr]\nlow = 0\nhigh = 0.1\nlog = true\n", "lr is drawn on a log scale (`log = true`), which needs `low` > 0"),
    ("[lr]\nlow = 0.01\nhigh = inf\n", "lr needs `low` and `high` that are each a finite number"),
    ("[lr]\nlow = nan\nhigh = 0.1\n", "lr needs `low` and `high` that are each a finite number"),
    ("[epochs]\nlow = 1\nhigh = inf\n", "epochs needs `low` and `high` that are each a whole number"),
    ("[epochs]\nlow = 1\nhigh = 99999999999999999999\n", "a whole number up to 2,147,483,647"),
    ("[epochs]\nlow = 1.5\nhigh = 3\n", "a whole number"),
    ("[lr]\nlow = 0.01\nhigh = 0.1\nlog = 'yes'\n", "needs `log = true` or `log = false`"),
    ("[lr]\nlow = 0.01\nhigh = 0.1\n[lr.more]\nlow = 1\n", "not the keys 'low', 'high', 'more'"),
    ("[lr.low]\nx = 1\n", "lr needs `low` <= `high`"),
    ("lr = 0.1\n", "lr is 0.1; it needs a table"),
    ("[batch_size]\nchoices = [[64], {a = 1}]\n", "batch_size needs `choices`, a non-empty list"),
    ("[lr]\nchoices = " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 8 deep"),
    (b"\xff\xfe[lr]", "not a text file (not UTF-8)"),
])
def test_bad_search_spaces_are_one_line(tmp_path, space, fragment):
    path = tmp_path / "space.toml"
    path.write_bytes(space if isinstance(space, bytes) else space.encode())
    with pytest.raises(SearchError, match=f"^space file {path}") as e:
        load_space(path)
    assert fragment in str(e.value)


def test_every_value_of_a_space_makes_a_valid_recipe(tmp_path):
    (tmp_path / "space.toml").write_text("[lr]\nchoices = [0.1, 0.2, -1]\n")
    with pytest.raises(SearchError, match="lr = -1: lr, gamma and temperature must be positive"):
        check_recipe_fields(load_space(tmp_path / "space.toml"))
    check_recipe_fields(load_space())  # the default space
