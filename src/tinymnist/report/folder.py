"""A report for any folder of run records (`tinymnist report --out`, and the table a sweep ends with): the seed
table with each record judged by the budget it ran under, notes on runs made on a slice, and the figures.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..files import describe_missing, write_failure
from ..judge import HOLD, TARGET, Budget, verdict
from ..model import REGISTRY
from ..records import accuracy_column, load_record
from .common import ReportError, write_file


def _folder_records(results: Path) -> dict[str, list[dict]]:
    """Every run record under `results` by model folder (smoke runs on a slice included: they are marked), each
    checked by `records.load_record`: a file that is not a record is refused, naming it."""
    found: dict[str, list[dict]] = {}
    for path in sorted(results.glob("*/seed*.json")):
        rec = load_record(path)
        rec["_path"] = path.as_posix()
        found.setdefault(path.parent.name, []).append(rec)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in found.items()}


def record_budget(rec: dict) -> Budget:
    """The budget a (checked) record was judged by when it ran; for a record from before budgets were written,
    its model's hold."""
    if rec.get("budget") is None:
        name = rec.get("model")
        return Budget(hold=REGISTRY[name].hold if name in REGISTRY else HOLD)
    return Budget(**{k: v for k, v in rec["budget"].items() if k in Budget.__dataclass_fields__})


def _groups(by_model: dict[str, list[dict]]) -> list[tuple[str, str, Budget, str, list[dict]]]:
    """The records of each folder in groups judged alike: (folder, model, budget, accuracy column, records). The
    runs of one folder may differ (another --max-params, a record copied in): each is judged by its own budget."""
    groups: dict[tuple, list[dict]] = {}
    for folder, records in by_model.items():
        for rec in records:
            key = (folder, rec.get("model", folder), record_budget(rec), accuracy_column(rec["epochs"]))
            groups.setdefault(key, []).append(rec)
    return [(*key, recs) for key, recs in groups.items()]


def folder_table(results: Path, folders: set[str] | None = None) -> list[str]:
    """The seed table with verdicts against each record's budget of the records under `results` (only the
    folders in `folders`, if given), with notes on runs made on a slice: what `report --out` and `sweep` show.
    A run without a test set shows its validation accuracy and is not judged."""
    by_model = {k: v for k, v in _folder_records(results).items() if folders is None or k in folders}
    lines = ["| model | params | seeds | held | mean of the last K | lowest of them | "
             "budget | verdict |", "|---|---:|---|---:|---:|---:|---|---|"]
    notes = {}
    for folder, name, budget, col, records in _groups(by_model):
        lasts = [row[col] for r in records for row in r["epochs"][-budget.hold:]]
        if col == "test_acc":
            met = sum(v["held"] and v["within_budget"] for v in (verdict(r["epochs"], budget, r["params"])
                                                                 for r in records))
            held = f"{met} of {len(records)}"
            said = (f"{'met on every seed' if met == len(records) else 'not met'} (>= {budget.target:.2f} % in "
                    f"each of the last {budget.hold} epochs)")
        else:
            held, said = "-", "not judged: no test accuracy (a run without a test set: validation accuracy shown)"
        limits = sorted({r["limit"] for r in records if r.get("limit")})
        setting = f" ({folder.partition('+')[2]})" if "+" in folder else ""  # a sweep's grid setting
        spend = ", ".join(x for x in (f"<= {budget.max_params:,} params" if budget.max_params is not None else "",
                                      f"<= {budget.max_epochs} epochs" if budget.max_epochs else "") if x) or "none"
        params = ", ".join(f"{p:,}" for p in sorted({r["params"] for r in records}))
        lines.append(
            f"| {name}{setting} | {params} | {', '.join(str(r['seed']) for r in records)} | {held} | "
            f"{statistics.mean(lasts):.3f} (K = {budget.hold}) | {min(lasts):.2f} | {spend} | {said} |")
        if limits:
            notes[f"{name}: trained on a slice (--limit {', '.join(map(str, limits))}), not the full data"] = None
    lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return lines


def _out_folder(out: Path) -> None:
    """Makes the report's folder, or refuses with one line (a file, /dev/null, a folder that cannot be made)."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"cannot write the report into {out}: it {describe_missing(out, 'folder')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(write_failure(out, e)) from None


def _model_figures(folder: str, records: list[dict], out: Path, data, entry) -> list[str]:
    """The confusion matrix and the test digits it gets wrong of the model whose seed-1 checkpoint is beside
    its first record, drawn into `out`; the report's lines that show them."""
    from .. import figures
    from ..model import log_probs
    from ..records import load_checkpoint

    name, seed = records[0].get("model", folder), records[0]["seed"]
    _, model, _ = load_checkpoint(Path(records[0]["_path"]).with_suffix(".pt"), "cpu", entry)
    preds = log_probs(model, data.test_images).argmax(1)
    wrong = int((preds != data.test_labels).sum())
    stem = folder.replace(":", "_")
    figures.confusion(data.test_labels, preds, out / f"{stem}-confusion.png", f"{name} (seed {seed}): confusion")
    figures.mistakes(data.test_images, data.test_labels, preds, out / f"{stem}-mistakes.png",
                     f"{name} (seed {seed}): {wrong} test digits wrong, true→predicted")
    return [f"## {name}, seed {seed}: {len(preds) - wrong:,} of {len(preds):,} test digits right", "",
            f"![confusion]({stem}-confusion.png)", "", f"![mistakes]({stem}-mistakes.png)", ""]


def folder_report(results: Path, out: Path, data_dir=None, entries: dict | None = None) -> Path:
    """A standalone Markdown report with PNG figures for any folder of run records, written to `out`: the seed
    table with verdicts against each record's budget, test curves across seeds, train vs test, and, for a
    model whose seed-1 checkpoint can be loaded (registered, or the user's network named in `entries` by its
    reference), the confusion matrix and the test digits it gets wrong. Touches nothing else."""
    from .. import figures

    by_model = _folder_records(results)
    if not by_model:
        raise ReportError(f"no run records (<model>/seed<N>.json) in {results}/")
    _out_folder(out)
    lines = [f"# Report on {results}", "", *folder_table(results)]
    figures.test_curves(by_model, out / "test_curves.png", TARGET)
    figures.train_vs_test(by_model, out / "train_vs_test.png")
    lines += ["## Test accuracy per epoch, every seed", "", "![test curves](test_curves.png)", "",
              "## Train and test accuracy, seed by seed", "", "![train vs test](train_vs_test.png)", ""]
    data = None
    for folder, records in by_model.items():
        name = records[0].get("model", folder)
        ckpt = Path(records[0]["_path"]).with_suffix(".pt")
        entry = (entries or {}).get(name)
        if not ckpt.is_file() or (":" in name and entry is None):
            lines += [f"No confusion matrix for {name}: " + ("no checkpoint beside its record." if not ckpt.is_file()
                      else f"its checkpoint needs its code named (--model {name})."), ""]
            continue
        from ..data import load_mnist

        data = data or load_mnist(data_dir)
        lines += _model_figures(folder, records, out, data, entry)
    page = out / "report.md"
    write_file(page, "\n".join(lines).encode())
    return page
