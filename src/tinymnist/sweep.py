"""Sweeps on Ray: every (model, seed, setting) of a grid as one task, from a laptop to a cluster.

Each task runs `run.train_seed` (what `train` runs for each seed, so the records are the same) in a temporary
folder on its worker and sends the record and checkpoint back: the driver writes them into the output folder
of the machine that launched the sweep, and no shared filesystem is assumed. After each epoch the worker
sends the run's resumable state to a small actor beside the driver (`Board`); a task started again after its
worker died asks it for that state and continues from there, so a crash loses at most one epoch of one run.
The driver writes each state beside its record too, so `train --resume` can continue it as well.

Ray is imported inside the functions: `train`, `eval` and the rest never need it.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import torch

from .data import CHECKSUMS, load_mnist
from .errors import TinyMnistError
from .files import atomic_write_bytes
from .judge import Budget, verdict
from .model import Entry, resolve
from .recipes import Recipe, apply_settings
from .records import (
    check_finished,
    load_checkpoint,
    lock_run,
    record_path,
    release_locks,
    run_identity,
    teacher_files,
    write_json,
)
from .report import folder_table
from .run import train_seed
from .runtime import Runtime

INSTALL = "pip install 'tinymnist[scale]'"
CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before saying it cannot be reached
MAX_RETRIES = 3  # times a task is started again after its worker died
JUDGE_TIMEOUT = 60.0  # seconds a search's trial waits for the pruner's verdict on an epoch before going on


class ScaleError(TinyMnistError):
    pass


def import_ray():
    try:
        import ray
    except ImportError:
        raise ScaleError(f"sweep and search run on Ray, which is not installed: {INSTALL}") from None
    return ray


# --- the grid ------------------------------------------------------------------------------------------


def parse_grid(settings: list[str] | None) -> list[tuple[str, list[str]]]:
    """`--set field=v1,v2` options -> [(field, [v1, v2]), ...]; a field given twice or an empty value is an error."""
    grid: dict[str, list[str]] = {}
    for setting in settings or []:
        key, eq, text = setting.partition("=")
        key = key.strip()
        values = [v.strip() for v in text.split(",")]
        if not eq or not key or not all(values):
            raise ScaleError(f"--set {setting!r}: expected field=value or field=v1,v2,...")
        if key in grid:
            raise ScaleError(f"--set {key} is given twice; list its values once: --set {key}=v1,v2")
        if len(set(values)) != len(values):
            raise ScaleError(f"--set {setting!r} lists a value twice")
        grid[key] = values
    return list(grid.items())


def combinations(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination of the grid's values, as `field=value` settings."""
    keys = [k for k, _ in grid]
    return [[f"{k}={v}" for k, v in zip(keys, values)] for values in itertools.product(*(vs for _, vs in grid))]


def label(settings: list[str], grid: list[tuple[str, list[str]]]) -> str:
    """A folder-name label of the settings that vary in the grid ("" when none does): `lr=0.05,ema=0.99`."""
    varying = {k for k, vs in grid if len(vs) > 1}
    parts = [s for s in settings if s.partition("=")[0] in varying]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))


# --- Ray: start, join, stop ------------------------------------------------------------------------------


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuses an address whose host does not answer within `timeout`, rather than waiting on Ray's retries."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ScaleError(f"--address {address!r}: expected HOST:PORT of a Ray cluster's head (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ScaleError(f"--address {address}: cannot reach the Ray cluster ({e.strerror or e}) within "
                         f"{timeout:.0f} s; start it with `ray start --head` on that machine") from None


@contextmanager
def ray_session(address: str | None, cpus: int):
    """Ray for one command: an instance already running in this process is used as it is; `address` joins a
    cluster; otherwise a local instance of `cpus` CPUs starts now and stops at the end."""
    ray = import_ray()
    if address:
        check_address(address)
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
            raise ScaleError(f"--address {address}: cannot join the Ray cluster ({str(e).splitlines()[0]})") from None
    else:
        ray.init(num_cpus=cpus, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def _board_class(ray):
    @ray.remote(num_cpus=0)
    class Board:
        """Beside the driver: the latest resumable state of each run, its worker's pid, its epochs' rows, and
        the runs told to stop (a search's pruned trials)."""

        def __init__(self):
            self.states, self.pids, self.rows, self.stopped, self.fresh, self.judged = {}, {}, {}, set(), set(), {}

        def put_state(self, key, data):
            self.states[key] = data

        def get_state(self, key):
            return self.states.get(key)

        def started(self, key, pid):
            self.pids[key] = pid

        def epoch(self, key, row, state):
            """A worker's news after an epoch; returns whether the run is to stop."""
            self.rows.setdefault(key, []).append(row)
            if state is not None:
                self.states[key] = state
                self.fresh.add(key)
            return key in self.stopped

        def judge(self, key, epoch, stop):
            """The driver's verdict on a run's epoch (a search's pruner): stop it, or go on."""
            self.judged[key] = epoch
            if stop:
                self.stopped.add(key)

        def pruned(self, key, epoch):
            """None until the driver has judged `epoch`; then whether to stop."""
            return key in self.stopped if self.judged.get(key, 0) >= epoch else None

        def poll(self):
            """{key: (pid, rows, state)}; a state only once after it changed, for the driver to write."""
            out = {k: (self.pids.get(k), self.rows.get(k, []), self.states[k] if k in self.fresh else None)
                   for k in set(self.pids) | set(self.rows)}
            self.fresh.clear()
            return out

    return Board


# --- the task ------------------------------------------------------------------------------------------


class _Stopped(Exception):
    """Raised from the epoch callback when the driver told a run to stop (a pruned trial)."""


@dataclass
class Job:
    """One run, as the worker needs it: everything is sent, nothing is read from the driver's disk."""

    key: str
    ref: str  # the model reference as the user gave it
    model_args: dict
    source: dict | None  # a user's network: the entry's source (reference, hash, arguments), set back on the worker
    code: tuple[str, bytes] | None  # a user's file: its name and bytes
    recipe: dict
    runtime: dict
    seed: int
    threads: int
    budget: dict
    limit: int | None = None
    val: int | None = None
    data_dir: str | None = None
    test: bool = True  # False: the test files are never opened (a search)
    teachers: list[bytes] = field(default_factory=list)
    keep: bool = True  # send the checkpoint back
    judged: bool = False  # wait for the driver's verdict after each epoch (a search's pruner)


def job_entry(job: Job, folder: Path) -> Entry:
    """The job's model on the worker: a user's file is written to `folder` under its own name and resolved
    there; the entry then names the original reference and hash again, so the record is train's."""
    if job.code is None:
        return resolve(job.ref, job.model_args or None)
    name, data = job.code
    (folder / name).write_bytes(data)
    attr = job.ref.rpartition(":")[2]
    entry = resolve(f"{folder / name}:{attr}", job.model_args or None)
    return replace(entry, name=job.ref, source=job.source)


def run_job(job: Job, board) -> dict:
    """Runs on a worker: trains one run from its last state on the board; returns the record (and checkpoint)
    or the one-line error of a bad run, or the rows of a run told to stop."""
    import ray

    torch.set_num_threads(job.threads)
    ray.get(board.started.remote(job.key, os.getpid()))
    with tempfile.TemporaryDirectory(prefix="tinymnist-") as tmp:
        tmp = Path(tmp)
        try:
            entry = job_entry(job, tmp)
            recipe = Recipe.from_dict(job.recipe)
            teachers = []
            for i, data in enumerate(job.teachers):
                (tmp / f"teacher{i}.pt").write_bytes(data)
                teachers.append(load_checkpoint(tmp / f"teacher{i}.pt", "cpu")[1])
            data = load_mnist(job.data_dir, test=job.test).limit(job.limit).hold_out(job.val)
            run = run_identity(job.limit, job.val, data.checksums)
            out = tmp / "out"
            path = record_path(out, entry.slug, job.seed)
            state = ray.get(board.get_state.remote(job.key))
            if state is not None:  # a retried task: continue after the last epoch its predecessor finished
                atomic_write_bytes(path.with_suffix(".state.pt"), state)

            def on_epoch(row, _state):
                data = path.with_suffix(".state.pt").read_bytes() if job.keep else None
                stop = ray.get(board.epoch.remote(job.key, row, data))
                if job.judged:  # a search's trial waits for the pruner's verdict on this epoch (bounded: a lost driver)
                    deadline = time.monotonic() + JUDGE_TIMEOUT
                    while (stop := ray.get(board.pruned.remote(job.key, row["epoch"]))) is None and \
                            time.monotonic() < deadline:
                        time.sleep(0.02)
                if stop:
                    raise _Stopped

            rec = train_seed(entry, recipe, Runtime(**job.runtime), data, job.seed, out, teachers,
                             budget=Budget(**job.budget), resume=True, limit=job.limit, val=job.val, run=run,
                             on_epoch=on_epoch, log=lambda line: None)
        except _Stopped:
            return {"key": job.key, "stopped": True}
        except TinyMnistError as e:
            return {"key": job.key, "error": str(e)}
        finally:
            release_locks()  # the run's lock in its temporary folder: a worker runs many tasks, one at a time
        ckpt = path.with_suffix(".pt").read_bytes() if job.keep else None
        return {"key": job.key, "record": rec, "checkpoint": ckpt, "slug": entry.slug}


def make_job(entry: Entry, recipe: Recipe, runtime: Runtime, seed: int, threads: int, budget: Budget, key: str,
             *, limit=None, val=None, data_dir=None, test=True, teachers_dir: Path | None = None,
             keep=True, judged=False) -> Job:
    """A run as a job: a user's file is read here and sent; the teachers' checkpoints too."""
    code = None
    where = entry.source["ref"].rpartition(":")[0] if entry.source else ""
    if where.endswith(".py"):
        code = (Path(where).name, Path(where).read_bytes())
    teachers = [p.read_bytes() for p in teacher_files(recipe, teachers_dir)] if recipe.teacher else []
    return Job(key, entry.name, {k: str(v) for k, v in (entry.source or {}).get("args", {}).items()}, entry.source,
               code, recipe.to_dict(), {**runtime.to_dict(), "threads": threads}, seed, threads, budget.to_dict(),
               limit, val, str(data_dir) if data_dir else None, test, teachers, keep, judged)


def submit(ray, jobs: list[Job], board, threads: int) -> dict:
    """Each job as a Ray task of `threads` CPUs, started again (from its last state) if its worker dies."""
    task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(run_job)
    return {task.remote(job, board): job for job in jobs}


# --- the sweep -------------------------------------------------------------------------------------------


@dataclass
class Run:
    entry: Entry
    recipe: Recipe
    seed: int
    folder: str  # the record's folder in --out: the model's slug, plus the label of the grid's settings


def plan(entries: list[tuple[Entry, Recipe]], seeds: list[int], grid: list[tuple[str, list[str]]]) -> list[Run]:
    """Every (model, setting, seed); each setting validated before anything runs."""
    runs = []
    for entry, base in entries:
        for settings in combinations(grid):
            recipe = apply_settings(base, settings)
            tag = label(settings, grid)
            runs += [Run(entry, recipe, seed, f"{entry.slug}+{tag}" if tag else entry.slug) for seed in seeds]
    return runs


def sweep(runs: list[Run], out: Path, runtime: Runtime, budget_of: Callable[[Entry], Budget], *, workers: int,
          threads: int, address: str | None = None, limit=None, val=None, data_dir=None, teachers_dir=None,
          watch: Callable[[dict], None] | None = None, say: Callable[[str], None] = print) -> list[dict]:
    """Runs every run not yet recorded in `out` on Ray; writes each record, checkpoint and latest state there.
    Returns the records (those already there included); a run that fails ends the sweep with its error once
    the others are done. `watch` sees the board's news (pid, epoch rows) while it waits, for tests."""
    from tqdm import tqdm

    run_id = run_identity(limit, val, dict(CHECKSUMS))
    records, todo = {}, []
    for i, r in enumerate(runs):
        path = record_path(out, r.folder, r.seed)
        if path.exists():
            records[i] = check_finished(path, r.entry.name, r.recipe, run_id)
            say(f"{r.folder} seed {r.seed}: already recorded ({path}), skipped")
        else:
            lock_run(path)  # a second sweep into the same folder would write the same records
            todo.append(i)
    errors = []
    if todo:
        with ray_session(address, workers * threads) as ray:
            board = _board_class(ray).remote()
            jobs = []
            for i in todo:
                r = runs[i]
                job = make_job(r.entry, r.recipe, runtime, r.seed, threads, budget_of(r.entry), str(i), limit=limit,
                               val=val, data_dir=data_dir, teachers_dir=teachers_dir)
                state = record_path(out, r.folder, r.seed).with_suffix(".state.pt")
                if state.is_file():  # an interrupted run (a sweep's or train's) continues from its last epoch
                    ray.get(board.put_state.remote(job.key, state.read_bytes()))
                jobs.append(job)
            pending = submit(ray, jobs, board, threads)
            bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", file=sys.stderr,
                       dynamic_ncols=True, disable=None)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                news = ray.get(board.poll.remote())
                for key, (_, _, state) in news.items():
                    r = runs[int(key)]
                    if state is not None and int(key) not in records:  # `train --resume` can continue it too
                        atomic_write_bytes(record_path(out, r.folder, r.seed).with_suffix(".state.pt"), state)
                if watch is not None:
                    watch(news)
                for ref in done:
                    job = pending.pop(ref)
                    result = ray.get(ref)
                    r = runs[int(job.key)]
                    if "error" in result:
                        errors.append(f"{r.folder} seed {r.seed}: {result['error']}")
                        bar.write(f"{r.folder} seed {r.seed}: failed: {result['error']}", file=sys.stdout)
                    else:
                        path = record_path(out, r.folder, r.seed)
                        atomic_write_bytes(path.with_suffix(".pt"), result["checkpoint"])
                        write_json(path, result["record"])  # last: a record means its checkpoint is there
                        path.with_suffix(".state.pt").unlink(missing_ok=True)
                        records[int(job.key)] = result["record"]
                        v = verdict(result["record"]["epochs"], Budget(**result["record"]["budget"]),
                                    result["record"]["params"])
                        last = result["record"]["epochs"][-1]
                        acc = f"test {last['test_acc']:.2f}%" if "test_acc" in last else f"val {last['val_acc']:.2f}%"
                        bar.write(f"{r.folder} seed {r.seed}: {len(result['record']['epochs'])} epochs, {acc}; "
                                  f"{v['text']}", file=sys.stdout)
                    bar.update(1)
            bar.close()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ScaleError(f"{len(errors)} of {len(runs)} runs failed: {errors[0]}{more}")
    return [records[i] for i in range(len(runs))]


def seeds_table(out: Path, runs: list[Run]) -> str:
    """The seeds table with verdicts of the sweep's folders, as `report --out` writes it."""
    return "\n".join(folder_table(out, {r.folder for r in runs}))


# --- bench --sweep ---------------------------------------------------------------------------------------


def bench_sweep(entry: Entry, recipe: Recipe, runtime: Runtime, seeds: list[int], *, limit: int | None,
                data_dir=None, workers: int = 2, threads: int = 1, sequential_threads: int = 2, repeat: int = 3,
                say: Callable[[str], None] = print) -> dict:
    """Times the same runs as a sweep (`workers` x `threads`, Ray's start-up and shutdown included) and one
    after another in this process (`sequential_threads` each), `repeat` times, the two ways alternating (and
    which goes first alternating too), since the machine's speed drifts. Returns each repetition's seconds,
    the machine's load as each leg started, the medians and their ratio, and every run's last test accuracy:
    a timing means something only where the runs learn."""
    budget = Budget(hold=entry.hold)
    runs = [Run(entry, recipe, seed, entry.slug) for seed in seeds]
    data = load_mnist(data_dir).limit(limit)
    run = run_identity(limit, None, data.checksums)

    def swept(tmp: Path) -> list[float]:
        records = sweep(runs, tmp, runtime, lambda e: budget, workers=workers, threads=threads, limit=limit,
                        data_dir=data_dir, say=lambda line: None)
        return [rec["epochs"][-1]["test_acc"] for rec in records]

    def one_after_another(tmp: Path) -> list[float]:
        previous = torch.get_num_threads()
        torch.set_num_threads(sequential_threads)
        try:
            return [train_seed(entry, recipe, replace(runtime, threads=sequential_threads), data, seed, tmp,
                               budget=budget, limit=limit, run=run, log=lambda line: None)["epochs"][-1]["test_acc"]
                    for seed in seeds]
        finally:
            torch.set_num_threads(previous)

    legs = {"sweep": swept, "sequential": one_after_another}
    seconds: dict[str, list[float]] = {k: [] for k in legs}
    accs: dict[str, list[list[float]]] = {k: [] for k in legs}
    loads: dict[str, list[float]] = {k: [] for k in legs}
    for rep in range(repeat):
        for name in (("sweep", "sequential") if rep % 2 == 0 else ("sequential", "sweep")):
            with tempfile.TemporaryDirectory(prefix="tinymnist-bench-") as tmp:
                loads[name].append(round(os.getloadavg()[0], 2))  # the machine may be shared: how busy it was
                start = time.perf_counter()
                accs[name].append(legs[name](Path(tmp)))
                seconds[name].append(round(time.perf_counter() - start, 2))
            say(f"repetition {rep + 1}/{repeat}: {name} {seconds[name][-1]:.1f} s, last test accuracies "
                f"{', '.join(f'{a:.2f}' for a in accs[name][-1])}")
    n = len(seeds)
    sweep_s, seq_s = statistics.median(seconds["sweep"]), statistics.median(seconds["sequential"])
    return {
        "kind": "sweep", "model": entry.name, "seeds": seeds, "runs": n, "limit": limit, "epochs": recipe.epochs,
        "batch_size": recipe.batch_size, "workers": workers, "threads_per_run": threads,
        "sequential_threads": sequential_threads, "repeat": repeat,
        "sweep_runs": seconds["sweep"], "sequential_runs": seconds["sequential"],
        "sweep_seconds": round(sweep_s, 2), "sequential_seconds": round(seq_s, 2),
        "sweep_runs_per_hour": round(3600 * n / sweep_s, 1), "sequential_runs_per_hour": round(3600 * n / seq_s, 1),
        "ratio": round(seq_s / sweep_s, 3),
        "ratios": [round(q / s, 3) for s, q in zip(seconds["sweep"], seconds["sequential"])],
        "sweep_last_test_acc": accs["sweep"], "sequential_last_test_acc": accs["sequential"],
        "load_sweep": loads["sweep"], "load_sequential": loads["sequential"],  # 1-minute load as each leg started
    }
