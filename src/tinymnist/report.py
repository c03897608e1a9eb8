"""Results as data: verdicts from a run's history, and the README's result sections generated from the records.

A README section is the text between `<!-- BEGIN key -->` and `<!-- END key -->`; `render_readme` rewrites
every such section from the records in `results/`, so no figure in the README is typed by hand.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from .model import REGISTRY, create_model
from .summary import format_summary, summary_dict

TARGET = 99.40  # test accuracy (percent) the exercise asks to hold
HOLD = 5  # ... in each of the last HOLD epochs (the reference held it in epochs 11 to 15)


class ReportError(Exception):
    pass


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


def verdict(history: list[dict], target: float = TARGET, hold: int = HOLD) -> dict:
    accs = [row["test_acc"] for row in history]
    last = accs[-hold:]
    held = len(accs) >= hold and min(last) >= target
    above = [row["epoch"] for row in history if row["test_acc"] >= target]
    text = (
        f"target {'MET' if held else 'NOT MET'}: test accuracy >= {target:.2f}% in each of the last {hold} epochs "
        f"(last {min(hold, len(accs))}: {', '.join(f'{a:.2f}' for a in last)}; epochs at >= {target:.2f}%: "
        f"{epoch_ranges(above)})"
    )
    return {"held": held, "last": last, "above": above, "text": text}


def load_records(results: Path, model: str) -> list[dict]:
    """Every full-data record of `model` in `results`, by seed."""
    records = []
    for path in sorted((results / model).glob("seed*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read record {path}: {e}") from None
        if rec.get("limit"):
            continue  # a smoke run on a slice of the data is not a result
        rec["_path"] = path.as_posix()
        records.append(rec)
    return sorted(records, key=lambda r: r["seed"])


def _best(history: list[dict], key: str) -> tuple[float, int]:
    row = max(history, key=lambda r: (r[key], -r["epoch"]))  # first epoch reaching the best value
    return row[key], row["epoch"]


def step_results(results: Path, model: str) -> str:
    records = load_records(results, model)
    if not records:
        raise ReportError(f"no records for {model} in {results}/")
    rec = records[0]
    h = rec["epochs"]
    train, train_ep = _best(h, "train_acc")
    test, test_ep = _best(h, "test_acc")
    v = verdict(h)
    lines = [
        f"- Parameters: {rec['params']:,}; seed {rec['seed']}, {len(h)} epochs "
        f"([record]({rec['_path']}))",
        f"- Best train accuracy: {train:.2f}% (epoch {train_ep}); best test accuracy: {test:.2f}% (epoch {test_ep})",
        f"- Last epoch: train {h[-1]['train_acc']:.2f}%, test {h[-1]['test_acc']:.2f}% "
        f"(train - test: {h[-1]['train_acc'] - h[-1]['test_acc']:+.2f} points)",
        f"- Epochs at >= {TARGET:.2f}%: {epoch_ranges(v['above'])}; held in each of the last {HOLD}: "
        f"{'yes' if v['held'] else 'no'}",
    ]
    if len(records) > 1:
        lines.append(f"- Over {len(records)} seeds: see [consistency across seeds](#consistency-across-seeds)")
    lines += [
        "",
        "<details><summary>Per-epoch log</summary>",
        "",
        "| epoch | train loss | train acc | test loss | test acc | lr | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in h:
        lines.append(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_acc']:.2f} | {r['test_loss']:.4f} | "
            f"{r['test_acc']:.2f} | {r['lr']:.6f} | {r['seconds']:.1f} |"
        )
    lines += ["", "</details>"]
    return "\n".join(lines)


def seeds_table(results: Path) -> str:
    lines = [
        f"| model | params | seeds | mean of last {HOLD} | std | min of last {HOLD} | best | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model in REGISTRY:
        records = load_records(results, model)
        if not records:
            continue
        lasts = [r["test_acc"] for rec in records for r in rec["epochs"][-HOLD:]]
        held = sum(verdict(rec["epochs"])["held"] for rec in records)
        best = max(r["test_acc"] for rec in records for r in rec["epochs"])
        std = statistics.stdev(lasts) if len(lasts) > 1 else 0.0
        lines.append(
            f"| {model} | {records[0]['params']:,} | {', '.join(str(r['seed']) for r in records)} | "
            f"{statistics.mean(lasts):.2f} | {std:.2f} | {min(lasts):.2f} | {best:.2f} | "
            f"held >= {TARGET:.2f} in the last {HOLD} epochs on {held} of {len(records)} seeds |"
        )
    return "\n".join(lines)


def seed_detail(results: Path, model: str) -> str:
    records = load_records(results, model)
    if not records:
        raise ReportError(f"no records for {model} in {results}/")
    n = max(len(r["epochs"]) for r in records)
    head = "| seed | " + " | ".join(str(e) for e in range(1, n + 1)) + " | verdict |"
    lines = [head, "|---:|" + "---:|" * n + "---|"]
    for rec in records:
        v = verdict(rec["epochs"])
        accs = " | ".join(f"{r['test_acc']:.2f}" for r in rec["epochs"])
        lines.append(f"| {rec['seed']} | {accs} | {'held' if v['held'] else 'not held'} |")
    return "\n".join(lines)


def models_table() -> str:
    lines = ["| model | params | RF | target |", "|---|---:|---:|---|"]
    for name, entry in REGISTRY.items():
        info = summary_dict(name, create_model(name))
        lines.append(f"| {name} | {info['params']:,} | {info['rf']} | {entry.target} |")
    return "\n".join(lines)


def section(key: str, results: Path) -> str:
    kind, _, arg = key.partition(":")
    if kind == "step":
        return step_results(results, arg)
    if kind == "seed-detail":
        return seed_detail(results, arg)
    if kind == "seeds":
        return seeds_table(results)
    if kind == "models":
        return models_table()
    if kind == "summary":
        return format_summary(summary_dict(arg, create_model(arg)))
    raise ReportError(f"unknown README section {key!r}")


SECTION = re.compile(r"(<!-- BEGIN (?P<key>[^ ]+) -->\n)(?P<body>.*?)(<!-- END (?P=key) -->)", re.S)


def render_readme(text: str, results: Path) -> str:
    return SECTION.sub(lambda m: m.group(1) + section(m.group("key"), results) + "\n" + m.group(4), text)


def update_readme(readme: Path, results: Path) -> bool:
    from .records import atomic_write_bytes

    try:
        text = readme.read_text()
    except OSError as e:
        raise ReportError(f"cannot read {readme}: {e.strerror}") from None
    new = render_readme(text, results)
    if new != text:
        atomic_write_bytes(readme, new.encode())
    return new != text
