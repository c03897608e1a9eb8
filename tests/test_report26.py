"""Issue 26, items 2, 5, 13 and 14 (report side): `report` gives a report of any folder a user's runs can make
(one epoch, two, no test columns, one seed, mixed budgets), reads every record through one validating reader
(`records.load_record`: types, finite values in range, required fields, bounded size and nesting), judges
nothing it cannot judge (`judge.held_last`), and writes its pages and figures atomically, only onto files.

The records come from real (tiny) runs on a small fake MNIST, then are damaged on purpose.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli, fails, one_line, tmpfs
from tinymnist.judge import Budget, VerdictError, held_last, verdict
from tinymnist.model import ROLES
from tinymnist.records import MAX_RECORD_BYTES, CheckpointError, load_record
from tinymnist.report import ReportError, bench_tables, folder_table, load_records, load_search_record

FAST = ["--device", "cpu", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """Real records of Model_6 on 256 MNIST images (a second each): 1 epoch (seeds 1, 2), 2 epochs with and
    without --max-params (seeds 1, 2: two budgets in one folder), and a --val run."""
    root = tmp_path_factory.mktemp("runs")
    train = ["train", "Model_6", "--data-dir", mnist_dir, "--limit", "256", *FAST]
    for args in (["--epochs", "1", "--seeds", "1-2", "--out", root / "one"],
                 ["--epochs", "2", "--seed", "1", "--out", root / "mixed"],
                 ["--epochs", "2", "--seed", "2", "--max-params", "8000", "--out", root / "mixed"],
                 ["--epochs", "1", "--seed", "1", "--val", "64", "--out", root / "val"]):
        proc = cli(*train, *args)
        assert proc.returncode == 0, proc.stderr
    return root


def copy_folder(runs: Path, name: str, dest: Path) -> Path:
    shutil.copytree(runs / name, dest, ignore=shutil.ignore_patterns("*.pt"))  # no confusion figure: not slow
    return dest


def edit(path: Path, change) -> None:
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))


def report_out(results: Path, out: Path) -> tuple[int, str]:
    proc = cli("report", "--results", results, "--out", out)
    return proc.returncode, proc.stderr


# --- 2. any folder a user's runs can make gives a report ------------------------------------------------


def strip_test_columns(rec):
    for row in rec["epochs"]:
        for key in ("test_acc", "test_loss", "test_correct"):
            del row[key]


@pytest.mark.parametrize("folder, change", [
    pytest.param("one", None, id="one epoch"),  # the crash of the issue: a train-against-test figure of one epoch
    pytest.param("mixed", None, id="two epochs, two budgets"),
    pytest.param("val", None, id="a --val run"),
    pytest.param("val", strip_test_columns, id="no test columns"),
    pytest.param("one", lambda rec: None, id="one seed"),  # seed 2 removed below
])
def test_every_folder_of_runs_gets_a_report(runs, tmp_path, folder, change):
    results = copy_folder(runs, folder, tmp_path / "results")  # no checkpoints: test_byo draws the confusion
    if change is not None:
        for path in results.glob("*/seed*.json"):
            edit(path, change)
        (results / "Model_6" / "seed2.json").unlink(missing_ok=True)
    code, err = report_out(results, tmp_path / "out")
    assert code == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| Model_6 | 7,624 |" in text
    for png in ("test_curves.png", "train_vs_test.png"):
        assert (tmp_path / "out" / png).read_bytes().startswith(b"\x89PNG"), png


def test_a_run_without_test_accuracy_is_shown_not_judged(runs, tmp_path):
    results = copy_folder(runs, "val", tmp_path / "results")
    edit(results / "Model_6" / "seed1.json", strip_test_columns)
    row = next(line for line in folder_table(results) if line.startswith("| Model_6"))
    assert "| - |" in row and "not judged: no test accuracy" in row and "met" not in row.replace("not judged", "")


# --- 13. each record judged by its own budget and model --------------------------------------------------


def test_records_of_different_budgets_are_judged_each_by_its_own(runs, tmp_path):
    results = copy_folder(runs, "mixed", tmp_path / "results")
    # seed 1 asks for 5 % in its last epoch, which it has: met; seed 2 keeps the default target: not met
    edit(results / "Model_6" / "seed1.json", lambda rec: rec["budget"].update(target=5.0, hold=1))
    rows = [line for line in folder_table(results) if line.startswith("| Model_6")]
    assert len(rows) == 2, rows
    assert "| 1 | 1 of 1 |" in rows[0] and "met on every seed (>= 5.00 % in each of the last 1 epochs)" in rows[0]
    assert "| 2 | 0 of 1 |" in rows[1] and "<= 8,000 params" in rows[1] and "| not met (>= 99.40 %" in rows[1]


def test_records_of_different_models_in_one_folder_get_a_row_each(runs, tmp_path):
    results = copy_folder(runs, "one", tmp_path / "results")
    edit(results / "Model_6" / "seed2.json", lambda rec: rec.update(model="Model_5", params=123))
    rows = [line for line in folder_table(results) if line.startswith("| Model_")]
    assert [r.split(" | ")[0:3] for r in rows] == [["| Model_6", "7,624", "1"], ["| Model_5", "123", "2"]]


@pytest.mark.parametrize("history, target, hold, why", [
    ([99.5, float("nan"), 99.5], 99.4, 3, "test accuracy of nan"),  # NaN compares false: it used to pass
    ([99.5, 100.5, 99.5], 99.4, 3, "test accuracy of 100.5"),
    ([99.5] * 3, 99.4, -2, "the last -2 epochs"),  # a slice of [-(-2):] judged the wrong epochs
    ([99.5] * 3, 99.4, 0, "the last 0 epochs"),
    ([99.5] * 3, 99.4, True, "the last True epochs"),
    ([99.5] * 3, float("nan"), 3, "a target of nan"),
    ([99.5, "99.5"], 99.4, 2, "test accuracy of '99.5'"),
])
def test_the_hold_judgement_refuses_what_it_cannot_judge(history, target, hold, why):
    rows = [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(history)]
    with pytest.raises(VerdictError, match=why.replace("(", r"\(")):
        held_last(rows, target, hold)
    with pytest.raises(VerdictError):
        verdict(rows, Budget(target=target, hold=hold), 1)


# --- 5. a record that is not one is named in one line and refused ----------------------------------------


def nested(depth: int) -> str:
    return '{"seed": 1, "params": 1, "epochs": ' + "[" * depth + "]" * depth + "}"


def row_change(**fields):
    return lambda rec: rec["epochs"][0].update(fields)


BAD_RECORDS = {  # case: (the change, or the file's bytes; what the line says)
    "accuracy Infinity": (b'"test_acc": Infinity', "Infinity is not a number JSON allows"),
    "accuracy NaN": (b'"test_acc": NaN', "NaN is not a number JSON allows"),
    "accuracy -Infinity": (b'"test_acc": -Infinity', "-Infinity is not a number JSON allows"),
    "accuracy 1e400": (b'"test_acc": 1e400', "1e400 is too large a number"),
    "params of 5,000 digits": (b'"params": ' + b"9" * 5000, "(5,000 digits) is too large a number"),
    "accuracy above 100": (row_change(test_acc=100.5), "test_acc is 100.5, not a percentage from 0 to 100"),
    "accuracy negative": (row_change(test_acc=-1), "test_acc is -1, not a percentage"),
    "accuracy a string": (row_change(test_acc="99.5"), 'test_acc is "99.5", not a percentage'),
    "accuracy a bool": (row_change(test_acc=True), "test_acc is true, not a percentage"),
    "train accuracy null": (row_change(train_acc=None), "train_acc is null"),
    "loss negative": (row_change(test_loss=-0.5), "test_loss is -0.5, not a finite number >= 0"),
    "correct a float": (row_change(test_correct=1.5), "test_correct is 1.5, not a whole number"),
    "correct does not fit": (row_change(test_correct=0), "test_correct 0 does not fit test_acc"),
    "no test_acc": (lambda rec: [row.pop("test_acc") for row in rec["epochs"]], "has no test (or validation)"),
    "no params": (lambda rec: rec.pop("params"), "no params"),
    "no seed": (lambda rec: rec.pop("seed"), "no seed"),
    "params a string": (lambda rec: rec.update(params="7624"), 'params is "7624", not a whole number >= 0'),
    "params negative": (lambda rec: rec.update(params=-1), "params is -1"),
    "seed a float": (lambda rec: rec.update(seed=1.0), "seed is 1.0"),
    "seed not its name": (lambda rec: rec.update(seed=7), "its seed is 7, not the 1 its name says"),
    "model a number": (lambda rec: rec.update(model=6), "model is 6, not a string"),
    "limit a string": (lambda rec: rec.update(limit="all"), 'limit is "all"'),
    "rows that are numbers": (lambda rec: rec.update(epochs=[1, 2]), "epoch 1 is 1, not an object"),
    "no rows": (lambda rec: rec.update(epochs=[]), "no list of epochs"),
    "rows an object": (lambda rec: rec.update(epochs={"1": {}}), "no list of epochs"),
    "epochs out of order": (row_change(epoch=2), "row 1 is of epoch 2, not 1"),
    "lr null in one row": (lambda rec: rec["epochs"][-1].update(lr=None), "epoch 2: lr is null"),
    "a column missing in a row": (lambda rec: rec["epochs"][-1].pop("train_loss"),
                                  "epoch 2 has other columns than epoch 1 (train_loss)"),
    "budget a list": (lambda rec: rec.update(budget=[7999, 15]), "budget is [7999, 15], not an object"),
    "negative hold": (lambda rec: rec["budget"].update(hold=-1), "budget: hold is -1, not a whole number >= 1"),
    "hold zero": (lambda rec: rec["budget"].update(hold=0), "budget: hold is 0"),
    "target above 100": (lambda rec: rec["budget"].update(target=140), "budget: target is 140"),
    "max_params a string": (lambda rec: rec["budget"].update(max_params="8k"), 'budget: max_params is "8k"'),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8 text"),
    "nested 100,000 deep": (nested(100_000).encode(), "nested too deeply"),
    "nested 500 deep": (nested(500).encode(), "nested more than 32 deep"),
    "a list": (b"[1, 2]", "it holds a JSON list, not an object"),
    "empty": (b"", "Expecting value"),
    "cut short": (b'{"seed": 1, "params": 1, "epo', "not a readable record"),
    "a long string where a number belongs": (lambda rec: rec.update(params="x" * 1000), '"xxxxxx'),
}


def damage(path: Path, how) -> None:
    if isinstance(how, bytes) and how.startswith((b'"test_acc": ', b'"params": ')):  # a number JSON cannot hold
        text = path.read_text()
        start = text.index(how.split(b":")[0].decode() + ": ")
        end = text.index(",", start)
        path.write_bytes(text[:start].encode() + how + text[end:].encode())
    elif isinstance(how, bytes):
        path.write_bytes(how)
    else:
        edit(path, how)


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_a_record_that_is_not_one_is_refused_in_one_line(runs, tmp_path, case):
    how, says = BAD_RECORDS[case]
    results = copy_folder(runs, "mixed", tmp_path / "results")
    record = results / "Model_6" / "seed1.json"
    damage(record, how)
    with pytest.raises(CheckpointError, match=None) as err:
        load_record(record)
    assert str(err.value).startswith(f"{record}: not a") and says in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    code, err = report_out(results, tmp_path / "out")
    assert code == 2 and one_line(err) == f"tinymnist: error: {load_record_error(record)}"
    assert not (tmp_path / "out" / "report.md").exists()  # refused, not a report over the other seed


def load_record_error(path: Path) -> str:
    try:
        load_record(path)
    except CheckpointError as e:
        return str(e)
    raise AssertionError(f"{path} was read")


@pytest.mark.parametrize("case", ["accuracy NaN", "accuracy above 100", "no params", "rows that are numbers",
                                  "budget a list", "not UTF-8", "nested 100,000 deep", "seed not its name"])
def test_report_check_refuses_a_record_that_is_not_one(runs, tmp_path, monkeypatch, case):
    """`report --check` (the project's pages) reads the same way; the pages are judged over every record."""
    final = ROLES["final"]
    results = tmp_path / "results"
    shutil.copytree(runs / "one" / "Model_6", results / final, ignore=shutil.ignore_patterns("*.pt"))
    for path in (results / final).glob("seed*.json"):
        edit(path, lambda rec: rec.update(model=final))
    record = results / final / "seed1.json"
    damage(record, BAD_RECORDS[case][0])
    monkeypatch.chdir(ROOT)  # the pages are the project's own: README.md and docs/
    err = fails(cli("report", "--check", "--no-figures", "--results", results))
    assert err.startswith(f"tinymnist: error: {record}: not a"), err


def test_the_docs_refuse_a_record_of_another_model_in_a_models_folder(runs, tmp_path):
    results = copy_folder(runs, "one", tmp_path / "results")
    edit(results / "Model_6" / "seed2.json", lambda rec: rec.update(model="Model_41"))
    with pytest.raises(Exception, match=r"seed2.json: a record of Model_41, not of Model_6"):
        load_records(results, "Model_6")


def test_a_pipe_or_a_folder_named_like_a_record_is_refused_at_once(runs, tmp_path):
    """A FIFO would block the reader until someone writes to it: the test runs in a child with a time-out."""
    results = copy_folder(runs, "one", tmp_path / "results")
    record = results / "Model_6" / "seed1.json"
    record.unlink()
    os.mkfifo(record)
    proc = subprocess.run([sys.executable, "-m", "tinymnist", "report", "--results", str(results), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and f"{record}: not a readable record (it is a special file" in one_line(proc.stderr)
    record.unlink()
    record.mkdir()
    with pytest.raises(CheckpointError, match="it is a folder"):
        load_record(record)


# --- 14. a huge record is refused before it is read ------------------------------------------------------


def test_a_huge_record_is_refused_before_it_is_read(runs, tmp_path):
    results = copy_folder(runs, "one", tmp_path / "results")
    record = results / "Model_6" / "seed1.json"
    with open(record, "r+b") as f:
        f.truncate(200_000_000)  # sparse: 200 MB on paper, nothing on the disk, and not read
    code, err = report_out(results, tmp_path / "out")
    assert code == 2 and f"{record}: not a record: 200,000,000 bytes, more than the {MAX_RECORD_BYTES:,}" in \
        one_line(err)


def test_the_size_bound_leaves_room_for_long_runs(runs, tmp_path):
    """10,000 epochs, written as `train` writes records, stay well within the bound."""
    record = copy_folder(runs, "one", tmp_path / "results") / "Model_6" / "seed1.json"
    rec = json.loads(record.read_text())
    rec["epochs"] = [{**rec["epochs"][0], "epoch": i + 1} for i in range(10_000)]
    text = json.dumps(rec, indent=1) + "\n"
    assert len(text) < MAX_RECORD_BYTES
    record.write_text(text)
    assert len(load_record(record)["epochs"]) == 10_000


# --- 5 and 13. the report's own files: only onto folders and files, atomically ---------------------------


@pytest.mark.parametrize("target, says", [("file", "it is a file, not a folder"),
                                          ("/dev/null", "it is a special file, not a folder")])
def test_out_must_be_a_folder(runs, tmp_path, target, says):
    out = tmp_path / "report.txt" if target == "file" else Path(target)
    if target == "file":
        out.write_text("mine")
    code, err = report_out(runs / "one", out)
    assert code == 2 and one_line(err) == f"tinymnist: error: cannot write the report into {out}: {says}"
    assert target != "file" or out.read_text() == "mine"


@pytest.mark.parametrize("name, kind", [("test_curves.png", "folder"), ("train_vs_test.png", "folder"),
                                        ("report.md", "folder"), ("report.md", "fifo")])
def test_a_figure_or_page_whose_place_is_taken_is_refused(runs, tmp_path, name, kind):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / name) if kind == "fifo" else (out / name).mkdir()
    code, err = report_out(copy_folder(runs, "one", tmp_path / "results"), out)
    what = "it is a folder" if kind == "folder" else "it is a special file, not a regular file"
    assert code == 2 and one_line(err) == f"tinymnist: error: cannot write {out / name}: {what}"


def test_a_figure_whose_place_is_a_pipe_is_refused_at_once(runs, tmp_path):
    """savefig opened the FIFO and waited for a reader for ever: the child has a time-out."""
    results = copy_folder(runs, "one", tmp_path / "results")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "train_vs_test.png")
    proc = subprocess.run([sys.executable, "-m", "tinymnist", "report", "--results", str(results), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == (f"tinymnist: error: cannot write {out / 'train_vs_test.png'}: it is a special "
                                     "file, not a regular file")


@pytest.fixture
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "tiny", "4m") as folder:
        yield folder


def test_a_full_disk_keeps_the_report_already_there(runs, tiny_disk):
    """savefig wrote onto the figure: a full disk left it cut short. Now a temporary file is renamed over it."""
    results = copy_folder(runs, "one", tiny_disk.parent / "results")
    out = tiny_disk / "out"
    assert report_out(results, out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:
        with open(filler, "ab") as f:
            while True:
                f.write(b"\0")
                f.flush()
    except OSError:
        pass
    edit(results / "Model_6" / "seed1.json", lambda rec: rec["epochs"][0].update(test_acc=50.0, test_correct=32))
    code, err = report_out(results, out)
    assert code == 2 and "No space left on device" in one_line(err) and "nothing was lost" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # every file whole, none half-written


# --- 5. the other records the project's pages are made from ----------------------------------------------


def test_a_benchmark_record_that_is_not_one_is_refused_in_one_line(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    machine = {"cpu": "x", "cores": 2, "torch_threads": 2, "system": "Linux"}
    good = {"model": "Model_41", "reference": "Model_6", "epochs": 15, "fast_seconds": 1.0, "baseline_seconds": 2.0,
            "ratio": 2.0, "machine": machine, "command": "c", "torch": "2"}
    for change, says in (({"ratio": "7x"}, "end-to-end: ratio is a str"), ({"machine": []}, "machine is a list"),
                         ({"machine": {**machine, "cores": True}}, "cores is a bool"),
                         ({"repeat": "3"}, "repeat is a str"), ({"fast_seconds": None}, "fast_seconds is a NoneType"),
                         ({"options": []}, "options: no options"), ({"options": [1]}, "an option is no object")):
        (bench / "1-x.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ReportError) as err:
            bench_tables(tmp_path)
        assert str(err.value).startswith(f"{bench / '1-x.json'}: not a benchmark record (") and says in str(err.value)
    (bench / "1-x.json").write_text(json.dumps(good).replace("2.0", "Infinity", 1))
    with pytest.raises(CheckpointError, match="Infinity is not a number JSON allows"):
        bench_tables(tmp_path)


def test_a_search_record_that_is_not_one_is_refused_in_one_line(tmp_path):
    path = tmp_path / "Model_41.json"
    good = json.loads((ROOT / "results" / "search" / "Model_41.json").read_text())
    assert load_search_record(write(path, good))[1]["number"] == good["best"]["number"]
    for change in ({"trials": 3}, {"best": {"number": 999}}, {"val": "all"}, {"objective": None},
                   {"trials": [{**good["trials"][0], "val_acc": [99.0, 101.0]}]}):
        with pytest.raises(ReportError, match=f"{path}: not a search record"):
            load_search_record(write(path, {**good, **change}))


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path
