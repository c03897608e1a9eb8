"""The prose sections of the pages (a step's Results, the verdict sentences, the validation and search
sections, the README's results box, the final choice and its margins, the records without a commit) and
`section`, which looks a section's key up in `SECTIONS`, the table of every generated section.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from ..judge import GOALS, HOLD, TARGET, TRAIN_IMAGES, Budget, assess, held_and_mean, held_last, is_percent, verdict
from ..model import REGISTRY, create_model
from ..records import load_record, read_json
from ..summary import format_summary, summary_dict
from .bench import baseline_method, bench_tables, end_to_end_record
from .common import (
    DOCS,
    OTHER_SEEDS,
    ROLE_CURVES,
    ReportError,
    epoch_ranges,
    link,
    load_records,
    require_records,
    role_holder,
    roles_from_records,
    slug,
    training_steps,
)
from .tables import models_table, other_seeds, overview, seed_detail, seeds_table, targets_table


def _best(history: list[dict], key: str) -> tuple[float, int]:
    row = max(history, key=lambda r: (r[key], -r["epoch"]))  # first epoch reaching the best value
    return row[key], row["epoch"]


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


def _count(x: Fraction) -> str:
    return f"{x.numerator:,}" if x.denominator == 1 else f"{float(x):,.1f}"


def _role_rows(results: Path, base: str) -> list[str]:
    """The results box's table: each role's model, how it fares against its goal."""
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
    return lines


def headline(results: Path, base: str = ".") -> str:
    """The README's results box: the final and the tiny model, and the final model's whole training run."""
    lines = _role_rows(results, base)
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


def test_digits(records: list[dict], hold: int) -> tuple[int, int]:
    """Test digits classified right, and evaluated, over the last `hold` epochs of every record."""
    rows = [r for rec in records for r in rec["epochs"][-hold:]]
    if any(r["test_acc"] == 0 for r in rows):
        raise ReportError("cannot count the test digits of an epoch at 0 % (its record does not say how many "
                          "were tested)")
    right = sum(r["test_correct"] for r in rows)
    total = sum(round(r["test_correct"] * 100 / r["test_acc"]) for r in rows)
    return right, total


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
    lines += _margins(results, final, base)
    return "\n".join(lines)


def _margins(results: Path, final: str, base: str) -> list[str]:
    """How far the final model is from its goal's mean on the test set, and how it does on the validation
    protocol."""
    goal = GOALS[0]
    recs = load_records(results, final)
    a = assess(recs, goal)
    right, total = test_digits(recs, goal.hold)
    need = Fraction(str(goal.min_mean)) / 100 * total
    lines = [
        f"- **Margin on the test set.** {final}'s mean over the last {goal.hold} epochs of its {a['seeds']} seeds is "
        f"{a['mean']:.4f} %, {abs(a['mean'] - goal.min_mean):.4f} points {'above' if right >= need else 'below'} "
        f"{goal.min_mean:.2f} %: {right:,} of the {total:,} test digits evaluated in those epochs are right, "
        f"{_count(abs(right - need))} {'more' if right >= need else 'fewer'} than {goal.min_mean:.2f} % asks for."
    ]
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
    return lines


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


# A section's key is `kind` or `kind:MODEL`; its body comes from (results, MODEL, the page's folder, the page's text)
SECTIONS: dict[str, Callable[[Path, str, str, str], str]] = {
    "headline": lambda results, _, base, __: headline(results, base),
    "overview": lambda results, _, base, text: overview(results, base, text),
    "step": lambda results, model, base, _: step_results(results, model, base),
    "seeds": lambda results, *_: seeds_table(results),
    "seed-detail": lambda results, model, *_: seed_detail(results, model),
    "verdict": lambda results, model, *_: hold_sentence(results, model),
    "targets": lambda results, *_: targets_table(results),
    "final-choice": lambda results, _, base, __: final_choice(results, base),
    "val": lambda results, model, base, _: val_section(results, model, base),
    "search": lambda results, model, base, _: search_section(results, model, base),
    "models": lambda *_: models_table(),
    "summary": lambda _, model, *__: format_summary(summary_dict(model, create_model(model))),
    "bench": lambda results, _, base, __: bench_tables(results, base),
    "baseline-method": lambda results, _, base, __: baseline_method(results, base),
    "null-commits": lambda results, _, base, __: null_commits(results, base),
    "other-seeds": lambda results, _, base, __: other_seeds(results, base),
}


def section(key: str, results: Path, base: str = ".", text: str = "") -> str:
    """The body of the generated section `key`, for a page in the folder `base` whose text is `text`."""
    kind, _, model = key.partition(":")
    if kind not in SECTIONS:
        raise ReportError(f"unknown generated section {key!r}")
    return SECTIONS[kind](results, model, base, text)
