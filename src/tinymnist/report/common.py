"""What every part of the report needs: its error, links and anchors as GitHub shows them, the full-data run
records of a model (checked when read), the roles as decided, and the judge's rule applied to the records.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from ..errors import TinyMnistError
from ..files import atomic_write_bytes, write_failure
from ..judge import choose_roles
from ..judge import training_steps as recipe_steps
from ..model import REGISTRY, ROLES, get_entry
from ..records import load_record

DOCS = "docs"  # the folder of the documentation pages, beside README.md
OTHER_SEEDS = "other-seeds"  # results/other-seeds/: the role models retrained on seeds they were not chosen on
ROLE_CURVES = "role_curves.png"  # the README's figure: the test curves of the final and the tiny model
# what the docs show of every epoch (the per-epoch log, the margins in test digits); a validation run also val_acc
DOC_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "test_correct", "lr", "seconds")


class ReportError(TinyMnistError):
    pass


def link(path: str | Path, base: str = ".") -> str:
    """`path` (relative to the project's root, where `tinymnist report` runs) as seen from the folder `base`."""
    path = Path(path).as_posix()
    return path if base in (".", "") else posixpath.relpath(path, base)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def epoch_ranges(epochs: list[int]) -> str:
    """[6, 9, 11, 12, 13] -> "6, 9, 11-13"; [] -> "none"."""
    parts, run = [], []
    for e in epochs:
        if run and e == run[-1] + 1:
            run.append(e)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [e]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts) or "none"


def write_file(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)  # a temporary file renamed into place: a full disk keeps the old file
    except OSError as e:
        raise ReportError(write_failure(path, e)) from None


def load_records(results: Path, model: str, val: bool = False) -> list[dict]:
    """Every full-data record of `model` in `results`, by seed, each checked by `records.load_record` (a record
    that is not one is refused, naming it: the docs are judged over every record) and to be of `model`. With
    `val` (the folder `results/val/`), each must hold its validation split and accuracy."""
    records = []
    for path in sorted((results / model).glob("seed*.json")):
        rec = load_record(path, DOC_COLUMNS + (("val_acc",) if val else ()))
        if rec.get("model", model) != model:
            raise ReportError(f"{path}: a record of {rec['model']}, not of {model} (whose folder it is in)")
        if val and rec.get("val") is None:
            raise ReportError(f"{path}: a record in {results}/ without the validation split it held out (val)")
        if rec.get("limit"):
            continue  # a smoke run on a slice of the data is not a result
        rec["_path"] = path.as_posix()
        records.append(rec)
    return sorted(records, key=lambda r: r["seed"])


def require_records(results: Path, model: str, val: bool = False) -> list[dict]:
    records = load_records(results, model, val)
    if not records:
        raise ReportError(f"no records for {model} in {results}/")
    return records


def role_holder(role: str) -> str | None:
    """The model `model.ROLES` gives `role` to, or None."""
    return ROLES.get(role)


def training_steps(name: str) -> int:
    """`judge.training_steps` of the registered model `name`: optimizer steps to train it with its recipe from
    scratch, its teachers' runs included."""
    return recipe_steps(get_entry(name).recipe, lambda teacher: get_entry(teacher).recipe)


def roles_from_records(results: Path, names=None) -> dict[str, str | None]:
    """Which model each role would go to by the judge's rule (`judge.choose_roles`, as `model.ROLES`'s comment
    says), judged from the records in `results` of the models `names` (default: every one); shown beside the
    roles as decided, nothing assigns roles from it."""
    return choose_roles({n: load_records(results, n) for n in (REGISTRY if names is None else names)},
                        training_steps)
