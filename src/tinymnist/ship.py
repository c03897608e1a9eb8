"""Shipping weights: the seed-1 checkpoints of the role models (and of a few extras) copied from the records
into the package, each with a note of where it came from, so `eval final`, `predict final` and `serve` work from
an installed package. `tinymnist report` ships them after it rewrites the pages; nothing in training reads them.
"""

from __future__ import annotations

from pathlib import Path

from .errors import TinyMnistError
from .files import atomic_write_bytes, write_failure
from .model import ROLES
from .records import load_record, write_json
from .report import DOC_COLUMNS

# shipped beside the role models: the reference's last step, so `serve` can show it against them
SHIPPED_EXTRA = ("Model_6",)


class ShipError(TinyMnistError):
    pass


def ship_weights(results: Path, weights_dir: Path) -> list[Path]:
    """Copies the seed-1 checkpoint of each role's model (`model.ROLES`) and of each model in `SHIPPED_EXTRA`
    into `weights_dir` with a note of its record; a model that no longer holds a role (and is no extra) is
    removed from it. Returns the shipped checkpoints."""
    shipped = []
    wanted = [*ROLES.items(), *((None, name) for name in SHIPPED_EXTRA if name not in ROLES.values())]
    for role, name in wanted:
        src, record = results / name / "seed1.pt", results / name / "seed1.json"
        if not (src.is_file() and record.is_file()):
            which = f"the {role} model {name}" if role else name
            raise ShipError(f"no seed-1 checkpoint and record of {which} in {results}/")
        rec = load_record(record, DOC_COLUMNS)
        dest = weights_dir / f"{name}.pt"
        try:
            data = src.read_bytes()
        except OSError as e:
            raise ShipError(f"cannot read {src}: {e.strerror}") from None
        try:
            atomic_write_bytes(dest, data)  # not copyfile: that truncates the shipped file before a full disk stops it
        except OSError as e:
            raise ShipError(write_failure(dest, e)) from None
        write_json(dest.with_suffix(".json"), {
            "model": name, "role": role, "seed": rec["seed"], "record": record.as_posix(),
            "test_acc": rec["epochs"][-1]["test_acc"], "test_correct": rec["epochs"][-1]["test_correct"],
        })
        shipped.append(dest)
    for stale in weights_dir.glob("*.pt"):  # a model that lost its role (and is no extra) no longer ships
        if stale not in shipped:
            stale.unlink()
            stale.with_suffix(".json").unlink(missing_ok=True)
    return shipped
