"""The run record, `results/<MODEL>/seed<SEED>.json`: its path, writing it atomically, and reading it back checked
(`read_json`, `load_record`), the one place a record from outside is checked.

Records, checkpoints and states are written to a temporary file first and renamed into place (`write_bytes`),
so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

from ..errors import TinyMnistError
from ..files import atomic_write_bytes, describe_missing, write_failure
from ..judge import is_percent

RESULTS_DIR = Path("results")


class CheckpointError(TinyMnistError):
    """A record, checkpoint, state or lock that cannot be read or written: one line naming the file."""


def write_bytes(path: Path, data: bytes) -> None:
    """`data` into `path` atomically; a failure to write is one line, not a traceback."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:  # a full disk, a read-only folder, a target that is a device: one line, not a traceback
        raise CheckpointError(write_failure(path, e)) from None


def write_json(path: Path, obj) -> None:
    write_bytes(Path(path), (json.dumps(obj, indent=1) + "\n").encode())


def record_path(out: Path, model: str, seed: int) -> Path:
    return Path(out) / model / f"seed{seed}.json"


# --- reading records: the one place a record from outside is checked ----------------------------------------

# A record of 15 epochs is about 5 KB and one of 10,000 epochs about 2 MB; parsing JSON costs some 10-30 times
# its size in memory, so the bound keeps a crafted file's cost near 120 MB (a 200 MB record took 1.6-3.2 GB).
MAX_RECORD_BYTES = 4 << 20
MAX_DEPTH = 32  # a record nests 4 deep (record, recipe, augment, value): deeper is no record, and would recurse


def read_json(path: Path, what: str = "record") -> dict:
    """A JSON object from a file from outside, read within bounds: a regular file (a pipe would block) of at
    most MAX_RECORD_BYTES, checked before reading; UTF-8; strict JSON (no NaN, Infinity, 1e400 or integers of
    thousands of digits); nested at most MAX_DEPTH deep (a file deeper than the parser manages is refused too,
    not a RecursionError)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once and is refused below
    except OSError:
        raise CheckpointError(f"{path}: not a readable {what} (it {describe_missing(path)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a readable {what} (it {describe_missing(path)})")
        if st.st_size > MAX_RECORD_BYTES:
            raise CheckpointError(f"{path}: not a {what}: {st.st_size:,} bytes, more than the {MAX_RECORD_BYTES:,} "
                                  "one may have")
        chunks, got = [], 0
        while got <= MAX_RECORD_BYTES:  # no more than the bound, even if the file grows meanwhile
            chunk = os.read(fd, MAX_RECORD_BYTES + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable {what} ({e.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_RECORD_BYTES:
        raise CheckpointError(f"{path}: not a {what}: more than the {MAX_RECORD_BYTES:,} bytes one may have")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float,
                         parse_int=_short_int)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a readable {what} (not UTF-8 text)") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable {what} (nested too deeply)") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a {what} (it holds a JSON {type(obj).__name__}, not an object)")
    if _deeper_than(obj, MAX_DEPTH):
        raise CheckpointError(f"{path}: not a {what} (nested more than {MAX_DEPTH} deep)")
    return obj


def _deeper_than(obj, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` deep; without recursion, so any depth is measured."""
    stack = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > limit:
            return True
        stack += [(v, depth + 1) for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > 30:  # a record's counts have a few digits; 5,000 of them would cost seconds
        raise ValueError(f"{text[:20]}... ({len(text):,} digits) is too large a number")
    return int(text)


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e400 parses as infinity
        raise ValueError(f"{text[:20]} is too large a number")
    return x


def finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(low: int):
    return lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= low


def _real(low: float):
    return lambda x: finite_number(x) and x >= low


def _or_null(check):
    return lambda x: x is None or check(x)


def _kind(t: type):
    return lambda x: isinstance(x, t)


PERCENT = (is_percent, "a percentage from 0 to 100")
# field -> (its check, what it should be); what a run writes (run.make_record, engine.fit), each field in range
RECORD_FIELDS = {
    "model": (_kind(str), "a string"),
    "params": (_whole(0), "a whole number >= 0"),
    "seed": (_whole(0), "a whole number >= 0"),
    "limit": (_or_null(_whole(1)), "a whole number >= 1 or null"),
    "val": (_or_null(_whole(1)), "a whole number >= 1 or null"),
    "git_commit": (_or_null(_kind(str)), "a string or null"),
    "recipe": (_kind(dict), "an object"),
    "budget": (_or_null(_kind(dict)), "an object or null"),
    "source": (_or_null(_kind(dict)), "an object or null"),
}
REQUIRED = ("params", "seed")
BUDGET_FIELDS = {
    "max_params": (_or_null(_whole(0)), "a whole number >= 0 or null"),
    "max_epochs": (_or_null(_whole(1)), "a whole number >= 1 or null"),
    "target": PERCENT,
    "hold": (_whole(1), "a whole number >= 1"),
}
ROW_FIELDS = {
    "epoch": (_whole(1), "a whole number >= 1"),
    **{f"{split}_acc": PERCENT for split in ("train", "val", "test")},
    **{f"{split}_loss": (_real(0), "a finite number >= 0") for split in ("train", "val", "test")},
    **{f"{split}_correct": (_whole(0), "a whole number >= 0") for split in ("val", "test")},
    "lr": (_real(0), "a finite number >= 0"),
    "seconds": (_real(0), "a finite number >= 0"),
}
ACCURACIES = ("test_acc", "val_acc")  # a row has one or both: a run judged on the test set, or a validation-only one


def accuracy_column(history: list[dict]) -> str:
    """The accuracy a (checked) record is judged and drawn by: test accuracy, or validation accuracy for a
    run that had no test set."""
    return "test_acc" if "test_acc" in history[0] else "val_acc"


def _short(x) -> str:
    text = json.dumps(x) if not isinstance(x, float) else repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_fields(obj: dict, fields: dict, where: str) -> str | None:
    for key, (check, should) in fields.items():
        if key in obj and not check(obj[key]):
            return f"{where}{key} is {_short(obj[key])}, not {should}"
    return None


def _record_problem(rec: dict, columns: tuple[str, ...]) -> str | None:
    """What makes `rec` not a record whose every row has `columns`, or None."""
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"no {' and no '.join(missing)}"
    problem = _check_fields(rec, RECORD_FIELDS, "")
    if problem is None and isinstance(rec.get("budget"), dict):
        problem = _check_fields(rec["budget"], BUDGET_FIELDS, "budget: ")
    if problem is not None:
        return problem
    rows = rec.get("epochs")
    if not isinstance(rows, list) or not rows:
        return "no list of epochs"
    first = None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            return f"epoch {i} is {_short(row)}, not an object"
        if row.get("epoch") != i:
            return f"row {i} is of epoch {_short(row.get('epoch'))}, not {i}"
        problem = _check_fields(row, ROW_FIELDS, f"epoch {i}: ")
        if problem is not None:
            return problem
        if not any(k in row for k in ACCURACIES):
            return f"epoch {i} has no test (or validation) accuracy"
        need = [k for k in columns if k not in row]
        if need:
            return f"epoch {i} has no {', '.join(need)}"
        for split in ("val", "test"):  # none right is 0 %, and 0 % is none right
            if f"{split}_correct" in row and f"{split}_acc" in row and (
                    row[f"{split}_correct"] == 0) != (row[f"{split}_acc"] == 0):
                return f"epoch {i}: {split}_correct {row[f'{split}_correct']} does not fit {split}_acc " \
                       f"{row[f'{split}_acc']}"
        have = {k for k in row if k in ROW_FIELDS}
        first = have if first is None else first
        if have != first:  # a figure or table of every epoch needs every column in every row
            return f"epoch {i} has other columns than epoch 1 ({', '.join(sorted(have ^ first))})"
    return None


def load_record(path: Path, columns: tuple[str, ...] = ()) -> dict:
    """A run record, checked: an object (read by `read_json`) with a whole `params` and `seed` (the seed its
    file name says), and a list of epochs 1, 2, ... whose every field a run writes is of its type and range
    (accuracies finite percentages), each with a test or validation accuracy and the `columns` asked for.

    Every command that reads records reads them here. A record that fails is refused with one line naming the
    file and the field: a report over the other records would judge fewer seeds than the folder holds."""
    rec = read_json(path)
    problem = _record_problem(rec, columns)
    name = re.fullmatch(r"seed(\d+)\.json", Path(path).name)
    if problem is None and name and int(name[1]) != rec["seed"]:
        problem = f"its seed is {rec['seed']}, not the {int(name[1])} its name says"
    if problem is not None:
        raise CheckpointError(f"{path}: not a tinymnist record ({problem})")
    return rec
