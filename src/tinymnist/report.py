"""Results as data: the generated sections of README.md and docs/*.md (their verdicts are `judge.py`'s).

A generated section is the text between `<!-- BEGIN key -->` and `<!-- END key -->`; `render` rewrites every
such section of a page from the records in `results/` (runs) and `results/bench/` (timings) and from the
registry, so no figure in the README or the docs is typed by hand. Links in a section are made relative to
the page's folder, so the same section works in README.md and in docs/.

Section keys: `headline` (the README's results box), `overview` (one row per step), `step:MODEL` (a step's
Results), `seeds`, `seed-detail:MODEL`, `verdict:MODEL`, `targets`, `final-choice` (the rule and the
margins), `val:MODEL`, `models`, `summary:MODEL`, `bench`, `baseline-method`, `null-commits`.
"""

from __future__ import annotations

import posixpath
import re
import statistics
from fractions import Fraction
from pathlib import Path

from .errors import TinyMnistError
from .files import atomic_write_bytes, describe_missing, write_failure
from .judge import (
    GOALS,
    HOLD,
    TARGET,
    TRAIN_IMAGES,
    Budget,
    assess,
    choose_roles,
    held_and_mean,
    held_last,
    is_percent,
    verdict,
)
from .judge import training_steps as recipe_steps
from .model import REGISTRY, ROLES, create_model, get_entry
from .records import accuracy_column, load_record, read_json
from .summary import format_summary, summary_dict

DOCS = "docs"  # the folder of the documentation pages, beside README.md
REFERENCE_STEPS = 6  # Model_1 ... Model_6 reproduce the reference progression
SPEED_FROM = 22  # the first step whose target is a shorter training run (steps 22 on: the speed path)


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


# what the docs show of every epoch (the per-epoch log, the margins in test digits); a validation run also val_acc
DOC_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "test_correct", "lr", "seconds")


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


def _best(history: list[dict], key: str) -> tuple[float, int]:
    row = max(history, key=lambda r: (r[key], -r["epoch"]))  # first epoch reaching the best value
    return row[key], row["epoch"]


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


def step_results(results: Path, model: str, base: str = ".") -> str:
    records = require_records(results, model)
    rec = records[0]
    h = rec["epochs"]
    train, train_ep = _best(h, "train_acc")
    test, test_ep = _best(h, "test_acc")
    hold = REGISTRY[model].hold
    v = verdict(h, Budget(hold=hold), rec["params"])
    lines = [
        (f"- Parameters: {rec['params']:,}; seed {rec['seed']}, {len(h)} epochs "
         f"([record]({link(rec['_path'], base)}))"),
        f"- Best train accuracy: {train:.2f}% (epoch {train_ep}); best test accuracy: {test:.2f}% (epoch {test_ep})",
        (f"- Last epoch: train {h[-1]['train_acc']:.2f}%, test {h[-1]['test_acc']:.2f}% "
         f"(train - test: {h[-1]['train_acc'] - h[-1]['test_acc']:+.2f} points)"),
        (f"- Epochs at >= {TARGET:.2f}%: {epoch_ranges(v['above'])}; held in each of the last {hold}: "
         f"{'yes' if v['held'] else 'no'}"),
    ]
    if len(records) > 1:
        held, mean = held_and_mean(records, hold)
        everyone = f"{link(DOCS + '/results.md', base)}#consistency-across-seeds"
        lines += [
            (f"- Over {len(records)} seeds: held in each of the last {hold} epochs on {held} of {len(records)}, "
             f"mean of those epochs {mean:.3f}% ([all models]({everyone})); test accuracy per epoch, seed by seed:"),
            "",
            seed_detail(results, model),
        ]
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


def hold_sentence(results: Path, model: str) -> str:
    """One plain sentence: did `model` hold the target on each seed?"""
    records = require_records(results, model)
    hold = REGISTRY[model].hold
    verdicts = {rec["seed"]: verdict(rec["epochs"], Budget(hold=hold), rec["params"]) for rec in records}
    held = [seed for seed, v in verdicts.items() if v["held"]]
    best = max((r["test_acc"], rec["seed"], r["epoch"]) for rec in records for r in rec["epochs"])
    reached = [seed for seed, v in verdicts.items() if v["above"]]
    return (
        f"**{model} held >= {TARGET:.2f} % in each of its last {hold} epochs on {len(held)} of {len(records)} "
        f"seeds** ({'seeds ' + ', '.join(map(str, held)) if held else 'none'}); it reached {TARGET:.2f} % in at "
        f"least one epoch on {len(reached)} of {len(records)} seeds, and its best epoch on any seed was "
        f"{best[0]:.2f} % (seed {best[1]}, epoch {best[2]})."
    )


def val_section(results: Path, model: str, base: str = ".") -> str:
    """What a held-out validation split says, next to the test set, for a `--val` run of `model`."""
    records = require_records(results / "val", model, val=True)
    rec = records[0]
    h = rec["epochs"]
    by_val = max(h, key=lambda r: (r["val_acc"], r["epoch"]))  # ties: the later epoch
    by_test = max(h, key=lambda r: (r["test_acc"], r["epoch"]))
    lines = [
        (f"{model}, seed {rec['seed']}, trained on the first {TRAIN_IMAGES - rec['val']:,} training images with "
         f"the last {rec['val']:,} held out ([record]({link(rec['_path'], base)})):"),
        "",
        "| epoch | " + " | ".join(str(r["epoch"]) for r in h) + " |",
        "|---|" + "---:|" * len(h),
        "| validation acc | " + " | ".join(f"{r['val_acc']:.2f}" for r in h) + " |",
        "| test acc | " + " | ".join(f"{r['test_acc']:.2f}" for r in h) + " |",
        "",
        (f"Choosing the epoch by validation accuracy picks epoch {by_val['epoch']} "
         f"(validation {by_val['val_acc']:.2f} %),"
         f" whose test accuracy is {by_val['test_acc']:.2f} %; choosing by test accuracy would pick epoch "
         f"{by_test['epoch']} ({by_test['test_acc']:.2f} %). The last {HOLD} epochs average "
         f"{statistics.mean(r['val_acc'] for r in h[-HOLD:]):.2f} % on validation and "
         f"{statistics.mean(r['test_acc'] for r in h[-HOLD:]):.2f} % on test."),
    ]
    full = [r for r in load_records(results, model) if r["seed"] == rec["seed"]]
    if full:
        lines[-1] += (f" Its last epoch tests at {h[-1]['test_acc']:.2f} %; the full-data run of the same seed "
                      f"ends at {full[0]['epochs'][-1]['test_acc']:.2f} %.")
    return "\n".join(lines)


def search_section(results: Path, model: str, base: str = ".") -> str:
    """A recipe search for `model`'s network (`tinymnist search`, on a validation split) side by side with the
    model's own recipe: validation verdicts, then test verdicts of the searched recipe's confirmation runs."""
    search = results / "search"
    path = search / f"{model}.json"
    if not path.is_file():
        raise ReportError(f"no search record {path}")
    rec, trial = load_search_record(path)
    hold = REGISTRY[model].hold
    states = [t["state"] for t in rec["trials"]]
    own_val = require_records(results / "val", model, val=True)[0]
    own_test = require_records(results, model)
    confirm = require_records(search / "confirm", model)

    def val_cells(accs: list[float]) -> str:
        held, last = held_last([{"val_acc": a} for a in accs], TARGET, hold, "val_acc")
        return f"{min(last):.2f} | {'held' if held else 'not held'} |"

    def test_cells(records: list[dict]) -> str:
        held, mean = held_and_mean(records, hold)
        return f"{held} of {len(records)} seeds | {mean:.3f} |"

    best = rec["best"]
    toml = search / f"{model}.toml"
    lines = [
        (f"`tinymnist search {model}` ran {len(states)} trials of up to {rec['budget']['max_epochs']} epochs on seed 1 "
         f"({states.count('complete')} completed, {states.count('pruned')} pruned by the median pruner, "
         f"{states.count('fail')} failed), each trained on the first {TRAIN_IMAGES - rec['val']:,} training "
         f"images and judged on the last {rec['val']:,} by {rec['objective']}; the test set was not read "
         f"([search record]({link(path, base)}), best recipe [{toml.name}]({link(toml, base)})). The best trial, "
         f"number {best['number']}, was then trained on all 60,000 training images with seeds "
         f"{', '.join(str(r['seed']) for r in confirm)} and tested (`tinymnist sweep {model} --recipe "
         f"{toml.as_posix()} --out {(search / 'confirm').as_posix()}`, the records `train --threads 1` makes)."),
        "",
        (f"| recipe | validation: lowest of the last {hold} epochs (seed 1) | validation verdict | "
         f"test: seeds holding >= {TARGET:.2f} % in the last {hold} epochs | test: mean of the last {hold} epochs |"),
        "|---|---:|---|---:|---:|",
        (f"| {model}'s own ({REGISTRY[model].recipe_name}) | "
         f"{val_cells([r['val_acc'] for r in own_val['epochs']])} {test_cells(own_test)}"),
        f"| searched (trial {best['number']}) | {val_cells(trial['val_acc'])} {test_cells(confirm)}",
    ]
    own_v, new_v = min(r["val_acc"] for r in own_val["epochs"][-hold:]), min(trial["val_acc"][-hold:])
    own_t, new_t = held_and_mean(own_test, hold)[1], held_and_mean(confirm, hold)[1]
    lines += ["", (f"On validation the searched recipe is {'above' if new_v > own_v else 'not above'} the model's own "
                   f"({new_v:.2f} against {own_v:.2f} %, one seed each); on the test set its mean of the last {hold} "
                   f"epochs is {'above' if new_t > own_t else 'below' if new_t < own_t else 'equal to'} the own "
                   f"recipe's ({new_t:.3f} against {own_t:.3f} %). A validation score from one seed and "
                   f"{len(states)} trials does not carry over to the test set by itself: the test set decides, "
                   "over several seeds.")]
    return "\n".join(lines)


def load_search_record(path: Path) -> tuple[dict, dict]:
    """A search's record (`search.summary`) and its best trial, checked to hold what its section shows."""
    rec = read_json(path, "search record")
    trials, best = rec.get("trials"), rec.get("best")
    fine = isinstance(trials, list) and all(
        isinstance(t, dict) and isinstance(t.get("number"), int) and isinstance(t.get("state"), str)
        and isinstance(t.get("val_acc"), list) and all(map(is_percent, t["val_acc"])) for t in trials
    ) and isinstance(best, dict) and isinstance(rec.get("budget"), dict) and isinstance(rec.get("objective"), str)
    trial = next((t for t in trials if t["number"] == best.get("number") and t["val_acc"]), None) if fine else None
    if trial is None or not isinstance(rec.get("val"), int) or isinstance(rec["val"], bool) or rec["val"] < 1:
        raise ReportError(f"{path}: not a search record (trials with validation accuracies, the best of them, "
                          "its budget, objective and validation split)")
    return rec, trial


def models_table() -> str:
    lines = ["| model | params | RF | target |", "|---|---:|---:|---|"]
    for name, entry in REGISTRY.items():
        info = summary_dict(name, create_model(name))
        lines.append(f"| {name} | {info['params']:,} | {info['rf']} | {entry.target} |")
    return "\n".join(lines)


def _numbered(path: Path) -> tuple[int, str]:
    """Sort key putting "2-x.json" before "10-y.json": by the leading number, then by name."""
    head = path.name.split("-", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def _sweep_bench(rec: dict, base: str) -> list[str]:
    """A `bench --sweep` record: both ways' seconds per repetition, the machine's load as each started, and the
    runs' last test accuracies, which say whether the timed runs learned."""
    def accs(rows: list[list[float]]) -> str:
        return f"{min(min(r) for r in rows):.2f}-{max(max(r) for r in rows):.2f} %"

    def each(values: list[float], digits: int = 1) -> str:
        return ", ".join(f"{v:.{digits}f}" for v in values)

    data = "all 60,000 training and 10,000 test images" if rec["limit"] is None else \
        f"the first {rec['limit']:,} training and test images"
    return [
        (f"Many runs at once: the same {rec['runs']} runs of {rec['model']} ({rec['epochs']} epochs at batch "
         f"{rec['batch_size']} on {data}, seeds {', '.join(map(str, rec['seeds']))}) as a `tinymnist sweep` on a "
         f"local Ray instance and one after another, alternating, {rec['repeat']} repetitions of each in one "
         "invocation; Ray's start-up and shutdown are part of the sweep's time "
         f"([{Path(rec['_path']).name}]({link(rec['_path'], base)})):"), "",
        "| how | runs at a time x torch threads each | seconds, each repetition | median | runs per hour "
        "| last test accuracy | 1-minute load as each started |",
        "|---|---|---|---:|---:|---|---|",
        f"| sweep on Ray | {rec['workers']} x {rec['threads_per_run']} | {each(rec['sweep_runs'])} | "
        f"{rec['sweep_seconds']:.1f} | **{rec['sweep_runs_per_hour']:,.0f}** | {accs(rec['sweep_last_test_acc'])} | "
        f"{each(rec['load_sweep'], 2)} |",
        f"| one after another (`train --seeds`) | 1 x {rec['sequential_threads']} | {each(rec['sequential_runs'])} | "
        f"{rec['sequential_seconds']:.1f} | {rec['sequential_runs_per_hour']:,.0f} | "
        f"{accs(rec['sequential_last_test_acc'])} | {each(rec['load_sequential'], 2)} |",
        "", f"The sweep does the runs {rec['ratio']:.2f}x as fast (median against median; each repetition "
            f"{', '.join(f'{r:.2f}x' for r in rec['ratios'])}). {_why_sweep_wins(rec)}",
    ]


def _why_sweep_wins(rec: dict) -> str:
    """What the ratio itself says: perfectly scaling threads would make the two ways take about as long."""
    if rec["ratio"] > rec["workers"]:
        return (f"Above {rec['workers']}x, each run of {rec['sequential_threads']} threads took longer than a run "
                f"of {rec['threads_per_run']} on a core of its own (Ray's start-up included in the latter): a "
                "network this small gains nothing from a second thread, whose waits cost more than it computes.")
    if rec["ratio"] > 1:
        return (f"Runs of {rec['sequential_threads']} threads of a network this small use the cores less well "
                f"than {rec['workers']} runs of {rec['threads_per_run']} thread side by side.")
    return "Here the sweep's start-up costs more than running side by side gains."


def bench_tables(results: Path, base: str = ".") -> str:
    """The Performance figures, from the records that `tinymnist bench --save` wrote to results/bench/."""
    recs = bench_records(results)
    if not recs:
        raise ReportError(f"no benchmark records in {results}/bench/")
    lines = [
        "| measurement | project pipeline | baseline pipeline | ratio | record |",
        "|---|---:|---:|---:|---|",
    ]
    options, serving, sweeps = ([rec for rec in recs if bench_kind(rec) == kind]
                                for kind in ("options", "serve", "sweep"))
    recs = [rec for rec in recs if bench_kind(rec) in ("same-network", "end-to-end")]
    for rec in recs:
        if "fast_img_s" in rec:
            settings = ", ".join(f"{k}={v}" for k, v in rec["settings"].items())
            reps = len(rec.get("fast_runs", [None]))
            how = f", median of {reps} alternating repetitions" if reps > 1 else ""
            lines.append(
                f"| {rec['model']} training{how}, project batch {rec['batch_size']} ({settings}) vs baseline "
                "batch 64 | "
                f"{rec['fast_img_s']:,.0f} img/s ({rec['fast_gflop_s']:.1f} GFLOP/s) | "
                f"{rec['baseline_img_s']:,.0f} img/s ({rec['baseline_gflop_s']:.1f} GFLOP/s) | "
                f"**{rec['ratio']:.2f}x** | [{Path(rec['_path']).name}]({link(rec['_path'], base)}) |"
            )
        else:
            runs = rec.get("repeat", 1)
            how = f", median of {runs} runs" if runs > 1 else ", one run"
            taught = f", taught by {rec['teacher']} whose training is not included" if rec.get("teacher") else ""
            measured = "measured whole run" if rec.get("baseline_method") == "measured" else "extrapolated"
            lines.append(
                f"| {rec['epochs']} epochs with evaluation{how}: {rec['model']} (own recipe{taught}) vs "
                f"{rec['reference']} (baseline, {measured}) | {rec['fast_seconds']:.1f} s | "
                f"{rec['baseline_seconds']:.1f} s | "
                f"**{rec['ratio']:.2f}x** | [{Path(rec['_path']).name}]({link(rec['_path'], base)}) |"
            )
    for rec in options:
        rounds = len(rec["options"][0].get("runs", [None]))
        how = f", median of {rounds} rounds" if rounds > 1 else ", one round"
        lines += ["", (f"Speed options of the project pipeline on {rec['model']}{how} "
                      f"([{Path(rec['_path']).name}]({link(rec['_path'], base)})):"), "",
                  "| variant | batch | images/s | vs the recipe |", "|---|---:|---:|---:|"]
        first = rec["options"][0]["img_s"]
        for row in rec["options"]:
            compiling = row.get("total_seconds_with_compile")
            extra = f" (first run, compiling included: {compiling:.0f} s)" if compiling is not None \
                else ""
            lines.append(f"| {row['variant']}{extra} | {row['batch_size']} | {row['img_s']:,.0f} | "
                         f"{row['img_s'] / first:.2f}x |")
    for rec in serving:
        lines += ["", (f"Serving: `tinymnist serve` under a bounded load ({rec['where']}) "
                       f"([{Path(rec['_path']).name}]({link(rec['_path'], base)})):"), "",
                  "| model | request | clients x requests | answered | errors | requests/s | p50 latency "
                  "| p99 latency |",
                  "|---|---|---:|---:|---:|---:|---:|---:|",
                  f"| {rec['model']} ({rec['model_key']}) | {rec['request']} | {rec['clients']} x "
                  f"{rec['requests_per_client']} | {rec['requests']:,} | {rec['errors']} | {rec['req_s']:,.0f} | "
                  f"{rec['p50_ms']:.1f} ms | {rec['p99_ms']:.1f} ms |"]
    for rec in sweeps:
        lines += ["", *_sweep_bench(rec, base)]
    everything = recs + options + serving + sweeps
    m = everything[0]["machine"]
    lines += ["", f"Measured on: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
                  f"{m['system']}, torch {everything[0]['torch']}. Commands: "
                  + "; ".join(f"`{r['command']}`" for r in everything) + "."]
    return "\n".join(lines)


def role_holder(role: str) -> str | None:
    """The model `model.ROLES` gives `role` to, or None."""
    return ROLES.get(role)


NUMBER = (int, float)  # finite: `records.read_json` reads strict JSON
# the fields the Performance tables show of each kind of benchmark record, and their types
BENCH_FIELDS = {
    "same-network": {"model": str, "batch_size": int, "settings": dict, "fast_img_s": NUMBER, "fast_gflop_s": NUMBER,
                     "baseline_img_s": NUMBER, "baseline_gflop_s": NUMBER, "ratio": NUMBER},
    "end-to-end": {"model": str, "reference": str, "epochs": int, "fast_seconds": NUMBER,
                   "baseline_seconds": NUMBER, "ratio": NUMBER},
    "options": {"model": str, "options": list},
    "serve": {"where": str, "model": str, "model_key": str, "request": str, "clients": int,
              "requests_per_client": int, "requests": int, "errors": int, "req_s": NUMBER, "p50_ms": NUMBER,
              "p99_ms": NUMBER},
    "sweep": {"runs": int, "model": str, "epochs": int, "batch_size": int, "limit": (int, type(None)),
              "seeds": list, "workers": int, "threads_per_run": int, "sequential_threads": int, "repeat": int,
              "sweep_seconds": NUMBER, "sweep_runs_per_hour": NUMBER, "sequential_seconds": NUMBER,
              "sequential_runs_per_hour": NUMBER, "ratio": NUMBER, **dict.fromkeys(
                  ("sweep_runs", "sequential_runs", "ratios", "load_sweep", "load_sequential",
                   "sweep_last_test_acc", "sequential_last_test_acc"), list)},
}
SWEEP_SERIES = ("sweep_runs", "sequential_runs", "ratios", "load_sweep", "load_sequential")  # a number a repetition
SWEEP_ACCURACIES = ("sweep_last_test_acc", "sequential_last_test_acc")  # a repetition's runs' last accuracies
BENCH_COMMON = {"machine": dict, "command": str, "torch": str}
BENCH_PARTS = {  # the fields of a record's machine and of each of its options
    "machine": {"cpu": str, "cores": int, "torch_threads": int, "system": str},
    "option": {"variant": str, "batch_size": int, "img_s": NUMBER},
}
BENCH_OPTIONAL = {"fast_runs": list, "repeat": int, "runs": list, "total_seconds_with_compile": (*NUMBER, type(None))}


def bench_kind(rec: dict) -> str:
    if "options" in rec:
        return "options"
    if rec.get("kind") in ("serve", "sweep"):
        return rec["kind"]
    return "same-network" if "fast_img_s" in rec else "end-to-end"


def _wrong_field(obj: dict, fields: dict) -> str | None:
    """The first of `fields` (and of BENCH_OPTIONAL, if there) that `obj` lacks or holds with another type (a
    bool is no number), if any."""
    for key, kind in {**{k: v for k, v in BENCH_OPTIONAL.items() if k in obj}, **fields}.items():
        if key not in obj:
            return f"no {key}"
        if isinstance(obj[key], bool) or not isinstance(obj[key], kind):
            return f"{key} is a {type(obj[key]).__name__}"
    return None


def _sweep_problem(rec: dict) -> str | None:
    """A sweep benchmark's series: one number per repetition; one list of `runs` accuracies per repetition."""
    def numbers(xs) -> bool:
        return all(isinstance(x, NUMBER) and not isinstance(x, bool) for x in xs)

    reps = rec["repeat"]
    for key in SWEEP_SERIES:
        if len(rec[key]) != reps or not numbers(rec[key]):
            return f"{key} is not {reps} numbers"
    for key in SWEEP_ACCURACIES:
        if len(rec[key]) != reps or not all(isinstance(r, list) and len(r) == rec["runs"] and numbers(r)
                                            and all(0 <= a <= 100 for a in r) for r in rec[key]):
            return f"{key} is not {reps} lists of {rec['runs']} accuracies"
    return None


def _bench_problem(rec: dict) -> str | None:
    kind = bench_kind(rec)
    problem = _wrong_field(rec, {**BENCH_COMMON, **BENCH_FIELDS[kind]})
    if problem is None:
        problem = _wrong_field(rec["machine"], BENCH_PARTS["machine"])
    if problem is None and kind == "options":
        rows = rec["options"]
        problem = "no options" if not rows else next(
            (p for p in (_wrong_field(r, BENCH_PARTS["option"]) if isinstance(r, dict) else "an option is no object"
                         for r in rows) if p), None)
    if problem is None and kind == "sweep":
        problem = _sweep_problem(rec)
    return None if problem is None else f"{kind}: {problem}"


def bench_records(results: Path) -> list[dict]:
    """The benchmark records of `results/bench/`, in their numbered order, each with its `_path`, checked to hold
    the fields of its kind that the tables show."""
    recs = []
    for path in sorted((results / "bench").glob("*.json"), key=_numbered):
        rec = read_json(path, "benchmark record")
        problem = _bench_problem(rec)
        if problem is not None:
            raise ReportError(f"{path}: not a benchmark record ({problem})")
        rec["_path"] = path.as_posix()
        recs.append(rec)
    return recs


def end_to_end_record(results: Path, model: str) -> dict | None:
    """The latest whole-run benchmark of `model` (the highest-numbered one), or None."""
    runs = [r for r in bench_records(results) if r.get("model") == model and "fast_seconds" in r]
    return runs[-1] if runs else None


def test_digits(records: list[dict], hold: int) -> tuple[int, int]:
    """Test digits classified right, and evaluated, over the last `hold` epochs of every record."""
    rows = [r for rec in records for r in rec["epochs"][-hold:]]
    if any(r["test_acc"] == 0 for r in rows):
        raise ReportError("cannot count the test digits of an epoch at 0 % (its record does not say how many "
                          "were tested)")
    right = sum(r["test_correct"] for r in rows)
    total = sum(round(r["test_correct"] * 100 / r["test_acc"]) for r in rows)
    return right, total


def _count(x: Fraction) -> str:
    return f"{x.numerator:,}" if x.denominator == 1 else f"{float(x):,.1f}"


def headline(results: Path, base: str = ".") -> str:
    """The README's results box: the final and the tiny model, and the final model's whole training run."""
    lines = [
        "| role | model | parameters | seeds held | mean of the judged epochs | target |",
        "|---|---|---:|---|---:|---|",
    ]
    for goal in GOALS:
        name = role_holder(goal.role)
        if name is None:
            lines.append(f"| **{goal.role}** | none yet | | | | not met |")
            continue
        a = assess(load_records(results, name), goal)
        lines.append(
            f"| **{goal.role}** | [{name}]({link(DOCS + '/results.md', base)}#{slug(name)}) | {a['params']:,} | "
            f"{a['held']} of {a['seeds']} (last {goal.hold} epochs >= {TARGET:.2f} %) | {a['mean']:.3f} % | "
            f"{'met' if a['met'] else 'not met'} |"
        )
    lines += ["", "Targets, judged from the records over every seed: " + "; ".join(g.describe() for g in GOALS) + "."]
    others, seeds = [], set()
    for goal in GOALS:
        name = role_holder(goal.role)
        recs = load_records(results / OTHER_SEEDS, name) if name else []
        if recs:
            a = assess(recs, goal)
            seeds.update(r["seed"] for r in recs)
            others.append(f"{name} held on {a['held']} of {a['seeds']} (mean {a['mean']:.3f} %, target "
                          f"{'met' if a['met'] else 'not met'})")
    if others:
        lines += ["", f"On seeds {epoch_ranges(sorted(seeds))}, which chose nothing: {'; '.join(others)} "
                      f"([other seeds]({link(DOCS + '/results.md', base)}#other-seeds))."]
    final = role_holder("final")
    rec = end_to_end_record(results, final) if final else None
    if rec:
        m = rec["machine"]
        runs = rec.get("repeat", 1)
        how = f"medians of {runs} runs alternating with the baseline's" if runs > 1 else "one run of each"
        lines += ["", (
            f"{final}'s whole training run ({rec['epochs']} epochs, evaluated after each) takes "
            f"**{rec['fast_seconds']:.1f} s** on this {m['cores']}-core CPU ({m['cpu']}), against "
            f"{rec['baseline_seconds']:.1f} s for {rec['reference']}'s run with the reference's pipeline ("
            + ("a measured whole run, its evaluations included" if rec.get("baseline_method") == "measured"
               else "extrapolated from a timed slice of batches")
            + f"): **{rec['ratio']:.2f}x** less time ({how}: "
            f"[{Path(rec['_path']).name}]({link(rec['_path'], base)}))."
        )]
    figs = link(DOCS + "/figures", base)
    lines += ["", f"![test accuracy per epoch, every seed of the final and the tiny model]({figs}/{ROLE_CURVES})", "",
              f"The same for every model: [test_curves.png]({figs}/test_curves.png)."]
    return "\n".join(lines)


def final_choice(results: Path, base: str = ".") -> str:
    """How the final model is chosen, which model the rule picked before the present one, and its margins."""
    goal = GOALS[0]
    final = role_holder("final")
    if final is None:
        return "No model holds the final role."
    names = list(REGISTRY)
    scored = {n: assess(load_records(results, n), goal) for n in names}
    met = [n for n in names if scored[n]["met"]]
    prior = roles_from_records(results, names[: names.index(final)])["final"]

    def who(n: str) -> str:
        return f"{n} ({training_steps(n):,} steps, mean {scored[n]['mean']:.3f} %)"

    lines = [
        f"- **The rule** (`report.roles_from_records`): of the models that meet the final target ({goal.describe()}), "
        "the final model is the one that trains in the fewest optimizer steps, its teachers' runs included "
        "(`report.training_steps`); the higher mean breaks a tie; while none meets it, the role goes to the best "
        "of those that hold on every seed. Models that meet the target: "
        + (", ".join(who(n) for n in met) or "none") + ".",
    ]
    if prior and prior != final and met:
        by_mean = max(met, key=lambda n: scored[n]["mean"])
        lines.append(
            f"- **It changed when {final} arrived.** Over the models before it, the rule picks {who(prior)}; "
            f"{final} meets the target in {training_steps(final):,} steps, "
            f"{training_steps(prior) / training_steps(final):.1f} times fewer. By the highest mean alone the role "
            f"would go to {by_mean}."
        )
    recs = load_records(results, final)
    a = assess(recs, goal)
    right, total = test_digits(recs, goal.hold)
    need = Fraction(str(goal.min_mean)) / 100 * total
    lines.append(
        f"- **Margin on the test set.** {final}'s mean over the last {goal.hold} epochs of its {a['seeds']} seeds is "
        f"{a['mean']:.4f} %, {abs(a['mean'] - goal.min_mean):.4f} points {'above' if right >= need else 'below'} "
        f"{goal.min_mean:.2f} %: {right:,} of the {total:,} test digits evaluated in those epochs are right, "
        f"{_count(abs(right - need))} {'more' if right >= need else 'fewer'} than {goal.min_mean:.2f} % asks for."
    )
    val = load_records(results / "val", final, val=True)
    if val:
        rec = val[0]
        held, last = held_last(rec["epochs"], TARGET, goal.hold, "val_acc")
        lines.append(
            f"- **On the validation protocol** (seed {rec['seed']}, trained on the first {TRAIN_IMAGES - rec['val']:,} "
            f"training images, judged on the last {rec['val']:,}: [record]({link(rec['_path'], base)})), {final} "
            f"{'holds' if held else 'does not hold'} {TARGET:.2f} % in each of its last {goal.hold} epochs: "
            f"validation accuracy {', '.join(f'{x:.2f}' for x in last)}, mean {statistics.mean(last):.3f} %, "
            f"minimum {min(last):.2f} %."
        )
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


def null_commits(results: Path, base: str = ".") -> str:
    """Which records name no commit (`git_commit: null`): their code cannot be traced to a commit."""
    found, total = {}, 0
    for path in sorted(results.glob("**/seed*.json")):
        rec = load_record(path)
        total += 1
        if rec.get("git_commit") is None:
            found.setdefault(path.parent, []).append(rec["seed"])
    if not found:
        return f"Every one of the {total} run records names its commit."
    lines = [f"{sum(map(len, found.values()))} of the {total} run records name no commit (`git_commit: null`):", ""]
    for folder in sorted(found, key=lambda f: (f.parent.name == "val", _step_number(f.name))):
        lines.append(f"- [{folder.relative_to(results).as_posix()}]({link(folder, base)}): seeds "
                     f"{epoch_ranges(sorted(found[folder]))}")
    return "\n".join(lines)


def _step_number(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30


def baseline_method(results: Path, base: str = ".") -> str:
    """How each end-to-end record timed the baseline: a measured whole run, or (older records) extrapolated."""
    rows = [r for r in bench_records(results) if "fast_seconds" in r]
    measured = [Path(r["_path"]).name for r in rows if r.get("baseline_method") == "measured"]
    older = len(rows) - len(measured)
    text = (f"Of the {len(rows)} end-to-end records, {len(measured)} measure{'s' if len(measured) == 1 else ''} the "
            "baseline's whole run as the "
            "reference ran it (its DataLoader over every epoch and its own test loop after each, `bench.baseline_run`, "
            f"alternating with the project's run){': ' + ', '.join(measured) if measured else ''}.")
    if older:
        text += (f" The other {older}, made before, timed the baseline pipeline on 150 batches, scaled that rate to "
                 "full epochs and added one evaluation per epoch by the project's own evaluator: their ratios rest "
                 "on that extrapolation.")
    return text


OTHER_SEEDS = "other-seeds"  # results/other-seeds/: the role models retrained on seeds they were not chosen on


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


def section(key: str, results: Path, base: str = ".", text: str = "") -> str:
    """The body of the generated section `key`, for a page in the folder `base` whose text is `text`."""
    kind, _, arg = key.partition(":")
    if kind == "step":
        return step_results(results, arg, base)
    if kind == "seed-detail":
        return seed_detail(results, arg)
    if kind == "seeds":
        return seeds_table(results)
    if kind == "val":
        return val_section(results, arg, base)
    if kind == "search":
        return search_section(results, arg, base)
    if kind == "verdict":
        return hold_sentence(results, arg)
    if kind == "models":
        return models_table()
    if kind == "targets":
        return targets_table(results)
    if kind == "bench":
        return bench_tables(results, base)
    if kind == "summary":
        return format_summary(summary_dict(arg, create_model(arg)))
    if kind == "headline":
        return headline(results, base)
    if kind == "final-choice":
        return final_choice(results, base)
    if kind == "overview":
        return overview(results, base, text)
    if kind == "null-commits":
        return null_commits(results, base)
    if kind == "baseline-method":
        return baseline_method(results, base)
    if kind == "other-seeds":
        return other_seeds(results, base)
    raise ReportError(f"unknown generated section {key!r}")


SECTION = re.compile(r"(<!-- BEGIN (?P<key>[^ ]+) -->\n)(?P<body>.*?)(<!-- END (?P=key) -->)", re.DOTALL)


def render(text: str, results: Path, base: str = ".") -> str:
    """`text` (a page in the folder `base`, relative to the project's root) with every section regenerated."""
    return SECTION.sub(lambda m: m.group(1) + section(m.group("key"), results, base, text) + "\n" + m.group(4), text)


def render_readme(text: str, results: Path) -> str:
    return render(text, results, ".")


def pages(readme: Path = Path("README.md"), docs: Path = Path(DOCS)) -> list[Path]:
    """The pages with generated sections: the README and every Markdown file in `docs`."""
    return [readme, *sorted(docs.glob("*.md"))]


def update_page(page: Path, results: Path, write: bool = True) -> bool:
    """Regenerates a page's sections; returns whether anything differed (and wrote it, if `write`). Links are
    made relative to the page's folder, taken relative to the current directory (the project's root)."""
    try:
        text = page.read_text()
    except OSError as e:
        raise ReportError(f"cannot read {page}: {e.strerror}") from None
    base = posixpath.relpath(page.parent.resolve().as_posix(), Path.cwd().resolve().as_posix())
    new = render(text, results, base)
    if new != text and write:
        _write(page, new.encode())
    return new != text


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)  # a temporary file renamed into place: a full disk keeps the old file
    except OSError as e:
        raise ReportError(write_failure(path, e)) from None


ROLE_CURVES = "role_curves.png"  # the README's figure: the test curves of the final and the tiny model


def role_records(results: Path) -> dict[str, list[dict]]:
    """The records of the models holding a role, keyed "Model_N (role)" for the figure's panel titles."""
    holders = {g.role: role_holder(g.role) for g in GOALS}  # final first, as in the results box
    return {f"{name} ({role})": load_records(results, name) for role, name in holders.items() if name}


def draw_figures(results: Path, fig_dir: Path, data_dir=None) -> list[Path]:
    """The figures of the README: curves from the records, mistakes and confusion of the final model."""
    from . import figures
    from .data import load_mnist
    from .model import get_entry, log_probs
    from .records import load_checkpoint

    by_model = {m: load_records(results, m) for m in REGISTRY}
    made = [fig_dir / "test_curves.png", fig_dir / "train_vs_test.png", fig_dir / ROLE_CURVES]
    figures.test_curves(by_model, made[0], TARGET)
    figures.train_vs_test(by_model, made[1])
    figures.test_curves(role_records(results), made[2], TARGET, "every seed of the final and the tiny model")
    final = get_entry("final").name
    ckpt = results / final / "seed1.pt"
    if ckpt.is_file():
        _, model, _ = load_checkpoint(ckpt)
        data = load_mnist(data_dir)
        preds = log_probs(model, data.test_images).argmax(1)
        wrong = int((preds != data.test_labels).sum())
        title = f"{final} (seed 1): the {wrong} test digits it gets wrong, true→predicted"
        figures.mistakes(data.test_images, data.test_labels, preds, fig_dir / "mistakes.png", title)
        figures.confusion(data.test_labels, preds, fig_dir / "confusion.png", f"{final} (seed 1): confusion")
        made += [fig_dir / "mistakes.png", fig_dir / "confusion.png"]
    return made


# --- a report for any folder of records ------------------------------------------------------------------


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


def folder_report(results: Path, out: Path, data_dir=None, entries: dict | None = None) -> Path:
    """A standalone Markdown report with PNG figures for any folder of run records, written to `out`: the seed
    table with verdicts against each record's budget, test curves across seeds, train vs test, and, for a
    model whose seed-1 checkpoint can be loaded (registered, or the user's network named in `entries` by its
    reference), the confusion matrix and the test digits it gets wrong. Touches nothing else."""
    from . import figures
    from .records import load_checkpoint

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
        from .data import load_mnist
        from .model import log_probs

        data = data or load_mnist(data_dir)
        _, model, _ = load_checkpoint(ckpt, "cpu", entry)
        preds = log_probs(model, data.test_images).argmax(1)
        wrong = int((preds != data.test_labels).sum())
        stem = folder.replace(":", "_")
        figures.confusion(data.test_labels, preds, out / f"{stem}-confusion.png", f"{name} (seed "
                          f"{records[0]['seed']}): confusion")
        figures.mistakes(data.test_images, data.test_labels, preds, out / f"{stem}-mistakes.png",
                         f"{name} (seed {records[0]['seed']}): {wrong} test digits wrong, true→predicted")
        lines += [f"## {name}, seed {records[0]['seed']}: {len(preds) - wrong:,} of {len(preds):,} test digits right",
                  "",
                  f"![confusion]({stem}-confusion.png)", "", f"![mistakes]({stem}-mistakes.png)", ""]
    page = out / "report.md"
    _write(page, "\n".join(lines).encode())
    return page
