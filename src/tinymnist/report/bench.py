"""The Performance section from the benchmark records of `results/bench/` (what `tinymnist bench --save`
writes): each record checked to hold the fields of its kind, then rendered by its kind's renderer. A record
names its kind (`kind`); those written before kinds were named are known by their fields (`bench_kind`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..records import read_json
from .common import ReportError, link

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
    """The record's kind: its `kind`, or for a record from before kinds were written, what its fields say."""
    if "options" in rec:
        return "options"
    if rec.get("kind") in ("serve", "sweep"):
        return rec["kind"]
    return "same-network" if "fast_img_s" in rec else "end-to-end"


# --- checks ------------------------------------------------------------------------------------------------


def _wrong_field(obj: dict, fields: dict) -> str | None:
    """The first of `fields` (and of BENCH_OPTIONAL, if there) that `obj` lacks or holds with another type (a
    bool is no number), if any."""
    for key, kind in {**{k: v for k, v in BENCH_OPTIONAL.items() if k in obj}, **fields}.items():
        if key not in obj:
            return f"no {key}"
        if isinstance(obj[key], bool) or not isinstance(obj[key], kind):
            return f"{key} is a {type(obj[key]).__name__}"
    return None


def _options_problem(rec: dict) -> str | None:
    """An options benchmark's rows: at least one, each an object with the fields of an option."""
    rows = rec["options"]
    if not rows:
        return "no options"
    return next((p for p in (_wrong_field(r, BENCH_PARTS["option"]) if isinstance(r, dict) else "an option is no object"
                             for r in rows) if p), None)


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


# kind -> what its record must hold beyond its fields' types
BENCH_CHECKS: dict[str, Callable[[dict], str | None]] = {"options": _options_problem, "sweep": _sweep_problem}


def _bench_problem(rec: dict) -> str | None:
    kind = bench_kind(rec)
    problem = _wrong_field(rec, {**BENCH_COMMON, **BENCH_FIELDS[kind]})
    if problem is None:
        problem = _wrong_field(rec["machine"], BENCH_PARTS["machine"])
    if problem is None and kind in BENCH_CHECKS:
        problem = BENCH_CHECKS[kind](rec)
    return None if problem is None else f"{kind}: {problem}"


def _numbered(path: Path) -> tuple[int, str]:
    """Sort key putting "2-x.json" before "10-y.json": by the leading number, then by name."""
    head = path.name.split("-", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


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
    runs = [r for r in bench_records(results) if r.get("model") == model and bench_kind(r) == "end-to-end"]
    return runs[-1] if runs else None


# --- one renderer per kind ---------------------------------------------------------------------------------


def _record_link(rec: dict, base: str) -> str:
    return f"[{Path(rec['_path']).name}]({link(rec['_path'], base)})"


def _same_network_row(rec: dict, base: str) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in rec["settings"].items())
    reps = len(rec.get("fast_runs", [None]))
    how = f", median of {reps} alternating repetitions" if reps > 1 else ""
    return (f"| {rec['model']} training{how}, project batch {rec['batch_size']} ({settings}) vs baseline batch 64 | "
            f"{rec['fast_img_s']:,.0f} img/s ({rec['fast_gflop_s']:.1f} GFLOP/s) | "
            f"{rec['baseline_img_s']:,.0f} img/s ({rec['baseline_gflop_s']:.1f} GFLOP/s) | "
            f"**{rec['ratio']:.2f}x** | {_record_link(rec, base)} |")


def _end_to_end_row(rec: dict, base: str) -> str:
    runs = rec.get("repeat", 1)
    how = f", median of {runs} runs" if runs > 1 else ", one run"
    taught = f", taught by {rec['teacher']} whose training is not included" if rec.get("teacher") else ""
    measured = "measured whole run" if rec.get("baseline_method") == "measured" else "extrapolated"
    return (f"| {rec['epochs']} epochs with evaluation{how}: {rec['model']} (own recipe{taught}) vs "
            f"{rec['reference']} (baseline, {measured}) | {rec['fast_seconds']:.1f} s | "
            f"{rec['baseline_seconds']:.1f} s | "
            f"**{rec['ratio']:.2f}x** | {_record_link(rec, base)} |")


def _options_table(rec: dict, base: str) -> list[str]:
    rounds = len(rec["options"][0].get("runs", [None]))
    how = f", median of {rounds} rounds" if rounds > 1 else ", one round"
    lines = [f"Speed options of the project pipeline on {rec['model']}{how} ({_record_link(rec, base)}):", "",
             "| variant | batch | images/s | vs the recipe |", "|---|---:|---:|---:|"]
    first = rec["options"][0]["img_s"]
    for row in rec["options"]:
        compiling = row.get("total_seconds_with_compile")
        extra = f" (first run, compiling included: {compiling:.0f} s)" if compiling is not None else ""
        lines.append(f"| {row['variant']}{extra} | {row['batch_size']} | {row['img_s']:,.0f} | "
                     f"{row['img_s'] / first:.2f}x |")
    return lines


def _serve_table(rec: dict, base: str) -> list[str]:
    return [f"Serving: `tinymnist serve` under a bounded load ({rec['where']}) ({_record_link(rec, base)}):", "",
            "| model | request | clients x requests | answered | errors | requests/s | p50 latency | p99 latency |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            f"| {rec['model']} ({rec['model_key']}) | {rec['request']} | {rec['clients']} x "
            f"{rec['requests_per_client']} | {rec['requests']:,} | {rec['errors']} | {rec['req_s']:,.0f} | "
            f"{rec['p50_ms']:.1f} ms | {rec['p99_ms']:.1f} ms |"]


def _sweep_table(rec: dict, base: str) -> list[str]:
    """Both ways' seconds per repetition, the machine's load as each started, and the runs' last test
    accuracies, which say whether the timed runs learned."""
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
         f"invocation; Ray's start-up and shutdown are part of the sweep's time ({_record_link(rec, base)}):"), "",
        "| how | runs at a time x torch threads each | seconds, each repetition | median | runs per hour "
        "| last test accuracy | 1-minute load as each started |",
        "|---|---|---|---:|---:|---|---|",
        f"| sweep on Ray | {rec['workers']} x {rec['threads_per_run']} | {each(rec['sweep_runs'])} | "
        f"{rec['sweep_seconds']:.1f} | **{rec['sweep_runs_per_hour']:,.0f}** | {accs(rec['sweep_last_test_acc'])} | "
        f"{each(rec['load_sweep'], 2)} |",
        f"| one after another (`train --seeds`) | 1 x {rec['sequential_threads']} | {each(rec['sequential_runs'])} | "
        f"{rec['sequential_seconds']:.1f} | {rec['sequential_runs_per_hour']:,.0f} | "
        f"{accs(rec['sequential_last_test_acc'])} | {each(rec['load_sequential'], 2)} |",
        "", f"{'The sweep does the runs' if rec['ratio'] >= 1 else 'One after another is faster: the sweep runs at'} "
            f"{rec['ratio']:.2f}x {'as fast' if rec['ratio'] >= 1 else 'the speed'} (median against median; each "
            f"repetition {', '.join(f'{r:.2f}x' for r in rec['ratios'])}). {_why_sweep_wins(rec)}",
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
    return ("Here two runs of one thread side by side gain less over one run of two threads at a time than "
            "Ray's start-up, part of the sweep's time, costs.")


# kind -> its renderer: a row of the measurements table, or (after that table, kind by kind) a table of its own
ROWS: dict[str, Callable[[dict, str], str]] = {"same-network": _same_network_row, "end-to-end": _end_to_end_row}
TABLES: dict[str, Callable[[dict, str], list[str]]] = {
    "options": _options_table, "serve": _serve_table, "sweep": _sweep_table}


def bench_tables(results: Path, base: str = ".") -> str:
    """The Performance figures, from the records that `tinymnist bench --save` wrote to results/bench/."""
    recs = bench_records(results)
    if not recs:
        raise ReportError(f"no benchmark records in {results}/bench/")
    rows = [rec for rec in recs if bench_kind(rec) in ROWS]
    own = [rec for kind in TABLES for rec in recs if bench_kind(rec) == kind]
    lines = ["| measurement | project pipeline | baseline pipeline | ratio | record |", "|---|---:|---:|---:|---|",
             *(ROWS[bench_kind(rec)](rec, base) for rec in rows)]
    for rec in own:
        lines += ["", *TABLES[bench_kind(rec)](rec, base)]
    everything = rows + own
    m = everything[0]["machine"]
    lines += ["", f"Measured on: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
                  f"{m['system']}, torch {everything[0]['torch']}. Commands: "
                  + "; ".join(f"`{r['command']}`" for r in everything) + "."]
    return "\n".join(lines)


def baseline_method(results: Path, base: str = ".") -> str:
    """How each end-to-end record timed the baseline: a measured whole run, or (older records) extrapolated."""
    rows = [r for r in bench_records(results) if bench_kind(r) == "end-to-end"]
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
