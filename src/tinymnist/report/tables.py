"""The tables of the results pages, from the run records and the registry: the targets and who meets them, the
seeds of every model, one model's seeds epoch by epoch, the models, the steps' overview and the role models on
seeds they were not chosen on.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from ..judge import GOALS, HOLD, TARGET, Budget, assess, held_and_mean, verdict
from ..model import REGISTRY, create_model
from ..summary import summary_dict
from .common import OTHER_SEEDS, epoch_ranges, load_records, require_records, role_holder, slug

REFERENCE_STEPS = 6  # Model_1 ... Model_6 reproduce the reference progression
SPEED_FROM = 22  # the first step whose target is a shorter training run (steps 22 on: the speed path)


def targets_table(results: Path) -> str:
    """Each goal with the model that holds its role (else the closest candidate), and the stretch figures."""
    records = {name: load_records(results, name) for name in REGISTRY}

    def row(label: str, name: str, a: dict, met: str) -> str:
        return (f"| {label} | {name} ({a['params']:,} params) | {a['seeds']} | {a['held']} of {a['seeds']} | "
                f"{a['mean']:.3f} | {met} |")

    lines = ["| target | model | seeds | held on | mean of the last K epochs | met |", "|---|---|---:|---:|---:|---|"]
    by_goal = {}
    for goal in GOALS:
        scored = {n: assess(recs, goal) for n, recs in records.items() if recs and recs[0]["params"] <= goal.max_params}
        by_goal[goal.role] = scored
        holder = role_holder(goal.role)
        if holder is None:  # nobody has the role: show the closest candidate
            holder = max(scored, key=lambda n: scored[n]["mean"], default=None)
        if holder is None:
            lines.append(f"| {goal.describe()} | none | | | | **no** |")
        else:
            lines.append(row(goal.describe(), holder, scored[holder], "**yes**" if scored[holder]["met"] else "**no**"))
    # stretch: the best mean under the final model's budget, and the fewest parameters that hold on every seed
    final = GOALS[0]
    scored = {n: a for n, a in by_goal[final.role].items() if a["seeds"] >= final.seeds}
    if scored:
        best = max(scored, key=lambda n: scored[n]["mean"])
        lines.append(row(f"stretch: highest mean of the last {final.hold} epochs under {final.max_params + 1:,} params "
                         f"(>= {final.seeds} seeds; 99.55 would be a record)", best, scored[best],
                         "**yes**" if scored[best]["mean"] >= 99.55 else "no"))
        holding = [n for n in scored if scored[n]["held"] == scored[n]["seeds"]]
        if holding:
            few = min(holding, key=lambda n: scored[n]["params"])
            lines.append(row(f"stretch: fewest params holding >= {TARGET:.2f} % in the last {final.hold} epochs on "
                             f"every seed (>= {final.seeds} seeds)", few, scored[few], ""))
    return "\n".join(lines)


def seeds_table(results: Path) -> str:
    lines = [
        (f"| model | params | seeds | mean of last {HOLD} | std | min of last {HOLD} | best | "
         "mean of the last K, K of its target | verdict |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model in REGISTRY:
        records = load_records(results, model)
        if not records:
            continue
        lasts = [r["test_acc"] for rec in records for r in rec["epochs"][-HOLD:]]
        hold = REGISTRY[model].hold
        held, target_mean = held_and_mean(records, hold)
        best = max(r["test_acc"] for rec in records for r in rec["epochs"])
        std = statistics.stdev(lasts) if len(lasts) > 1 else 0.0
        lines.append(
            f"| {model} | {records[0]['params']:,} | {', '.join(str(r['seed']) for r in records)} | "
            f"{statistics.mean(lasts):.2f} | {std:.2f} | {min(lasts):.2f} | {best:.2f} | "
            f"{target_mean:.3f} (K = {hold}) | "
            f"held >= {TARGET:.2f} in the last {hold} epochs on {held} of {len(records)} seeds |"
        )
    return "\n".join(lines)


def seed_detail(results: Path, model: str) -> str:
    records = require_records(results, model)
    n = max(len(r["epochs"]) for r in records)
    head = "| seed | " + " | ".join(str(e) for e in range(1, n + 1)) + " | verdict |"
    lines = [head, "|---:|" + "---:|" * n + "---|"]
    budget = Budget(hold=REGISTRY[model].hold)
    for rec in records:
        v = verdict(rec["epochs"], budget, rec["params"])
        accs = " | ".join(f"{r['test_acc']:.2f}" for r in rec["epochs"])
        lines.append(f"| {rec['seed']} | {accs} | {'held' if v['held'] else 'not held'} |")
    return "\n".join(lines)


def models_table() -> str:
    lines = ["| model | params | RF | target |", "|---|---:|---:|---|"]
    for name, entry in REGISTRY.items():
        info = summary_dict(name, create_model(name))
        lines.append(f"| {name} | {info['params']:,} | {info['rf']} | {entry.target} |")
    return "\n".join(lines)


def overview(results: Path, base: str = ".", text: str = "") -> str:
    """One row per step: what changed, parameters, seeds held, mean, and its path (reference, final, tiny,
    speed). A step links to its `### Step N:` heading in `text`, the page the table is on."""
    tiny = next(g for g in GOALS if g.role == "tiny")
    lines = ["| step | what changed | parameters | seeds held | mean of the last K epochs | path |",
             "|---:|---|---:|---|---:|---|"]
    for n, (name, entry) in enumerate(REGISTRY.items(), 1):
        records = load_records(results, name)
        params = records[0]["params"] if records else summary_dict(name, create_model(name))["params"]
        heading = re.search(rf"^### (Step {n}:.*)$", text, re.MULTILINE)
        step = f"[{n}](#{slug(heading.group(1))})" if heading else str(n)
        path = ("reference" if n <= REFERENCE_STEPS else "tiny" if params <= tiny.max_params
                else "speed" if n >= SPEED_FROM else "final")
        if entry.role:
            path += f", **{entry.role} model**"
        if records:
            held, mean = held_and_mean(records, entry.hold)
            seeds, avg = f"{held} of {len(records)}", f"{mean:.3f} (K = {entry.hold})"
        else:
            seeds, avg = "no records", ""
        lines.append(f"| {step} | `{name}`: {entry.target} | {params:,} | {seeds} | {avg} | {path} |")
    return "\n".join(lines)


def other_seeds(results: Path, base: str = ".") -> str:
    """What seeds the roles were not chosen on say: each role model's verdict and mean on those seeds beside
    its verdict on the seeds it was chosen on."""
    lines = [f"| role | model | seeds | held (last K epochs >= {TARGET:.2f} %) | mean of the last K | lowest of them | "
             "target met |", "|---|---|---|---:|---:|---:|---|"]
    found = False
    for goal in GOALS:
        name = role_holder(goal.role)
        if name is None:
            continue
        for label, folder in (("chosen on", results), ("new", results / OTHER_SEEDS)):
            recs = load_records(folder, name)
            if not recs:
                continue
            found = found or label == "new"
            a = assess(recs, goal)
            lowest = min(r["test_acc"] for rec in recs for r in rec["epochs"][-goal.hold:])
            seeds = f"{epoch_ranges([r['seed'] for r in recs])} ({label})"
            lines.append(f"| {goal.role} | {name} | {seeds} | {a['held']} of {a['seeds']} (K = {goal.hold}) | "
                         f"{a['mean']:.3f} | {lowest:.2f} | {'yes' if a['met'] else 'no'} |")
    if not found:
        return f"No runs on other seeds yet (`{results}/{OTHER_SEEDS}/`)."
    return "\n".join(lines)
