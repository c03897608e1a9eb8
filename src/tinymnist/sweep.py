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

import contextlib
import errno
import fcntl
import hashlib
import itertools
import math
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import torch

from .data import CHECKSUMS, load_mnist
from .errors import SIGNALS, TinyMnistError, held_signals, on_signal
from .files import atomic_write_bytes
from .judge import Budget, verdict
from .model import Entry, resolve
from .recipes import Recipe, apply_settings
from .records import (
    CheckpointError,
    check_finished,
    load_checkpoint,
    lock_run,
    record_path,
    release_locks,
    run_identity,
    teacher_files,
    unlock_run,
    write_json,
)
from .report import folder_table
from .run import train_seed
from .runtime import Runtime

INSTALL = "pip install 'tinymnist[scale]'"
CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before saying it cannot be reached
MAX_RETRIES = 3  # times a task is started again after its worker died (Ray's memory monitor has its own count)
MAX_RUNS = 100_000  # runs in one sweep: more is a typing mistake, and takes minutes to plan
MAX_LABEL = 100  # characters of a setting's folder label before it is shortened (a name holds 255 bytes)
CANCEL_TIMEOUT = 30.0  # seconds an interrupted sweep waits for its runs to stop and remove their temporary folders
JUDGE_TIMEOUT = 60.0  # seconds a search's trial waits for the pruner's verdict on an epoch before going on


class ScaleError(TinyMnistError):
    pass


def import_ray():
    try:
        with held_signals():  # Ray's native start-up: a Ctrl-C inside it would be lost
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
    """A folder-name label of the settings that vary in the grid ("" when none does): `lr=0.05,ema=0.99`. Text a
    folder name cannot hold as it is (other characters, or too long) is replaced, and a short hash of the
    original added, so that two settings never share a folder (full-width digits, say)."""
    varying = {k for k, vs in grid if len(vs) > 1}
    text = ",".join(s for s in settings if s.partition("=")[0] in varying)
    safe = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)
    if safe == text and len(text) <= MAX_LABEL:
        return text
    return f"{safe[:MAX_LABEL]}+{hashlib.sha256(text.encode()).hexdigest()[:10]}"


# --- Ray: start, join, stop ------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int] | None:
    """A cluster's address as (host, port), None for "auto" or "local"; one line for anything else."""
    if address in ("auto", "local"):
        return None
    try:
        parsed = urlparse(address if "://" in address else f"ray://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:  # "http://[::1": an IPv6 address without its bracket; a port out of range
        host, port = None, None
    if not host or not port:
        raise ScaleError(f"--address {address!r}: expected HOST:PORT of a Ray cluster's head (or ray://HOST:PORT)")
    return host, port


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuses an address whose host does not answer within `timeout`, rather than waiting on Ray's retries."""
    where = parse_address(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout):
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
    try:
        if address:
            _start(ray, f"--address {address}: cannot join the Ray cluster", address=address, log_to_driver=False,
                   logging_level="ERROR")
        else:
            _start(ray, "cannot start a local Ray instance", num_cpus=cpus, **quiet)
        yield ray
    finally:
        ray.shutdown()  # also after a start-up cut short


def _start(ray, failure: str, **options) -> None:
    """`ray.init`, with Ctrl-C and SIGTERM held while it starts its processes, and our handlers back afterwards:
    it puts its own on SIGTERM (`sys.exit(15)`, a traceback from its threads) and leaves it there."""
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in SIGNALS} if main else {}
    try:
        with held_signals():
            try:
                ray.init(**options)
            except SystemExit as e:  # its handler saw a SIGTERM: ours takes it from here
                if e.code != signal.SIGTERM:
                    raise
                on_signal(signal.SIGTERM, None)
            except (RuntimeError, ValueError, OSError) as e:  # ConnectionError and TimeoutError among them
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                files = isinstance(e, OSError) and e.errno == errno.EMFILE
                raise ScaleError(f"{failure} ({why}){'; allow more open files (ulimit -n)' * files}") from None
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _board_class(ray):
    # Ray restarts it if its process dies (the memory monitor kills actors too) and retries the calls made
    # meanwhile; it starts empty, and the driver sends back what the runs need (`Coordinator`)
    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
    class Board:
        """Beside the driver: the latest resumable state of each run, its worker's pid, its epochs' rows until
        the driver collects them, and the runs told to stop (a search's pruned trials)."""

        def __init__(self):
            self.born = uuid.uuid4().hex  # a restarted board has another
            self.states, self.pids, self.rows, self.last, self.stopped, self.judged = {}, {}, {}, {}, set(), {}
            self.news, self.fresh = set(), set()  # runs with news for the driver; with a new state

        def put_state(self, key, data):
            """From the driver: a state it holds, unless a worker has sent a newer one."""
            self.states.setdefault(key, data)

        def get_state(self, key):
            return self.states.get(key)

        def started(self, key, pid):
            self.pids[key] = pid
            self.news.add(key)

        def epoch(self, key, row, state):
            """A worker's news after an epoch; returns whether the run is to stop."""
            self.rows.setdefault(key, []).append(row)
            self.last[key] = row["epoch"]
            if state is not None:
                self.states[key] = state
                self.fresh.add(key)
            self.news.add(key)
            return key in self.stopped

        def judge(self, key, epoch, stop):
            """The driver's verdict on a run's epoch (a search's pruner): stop it, or go on."""
            self.judged[key] = epoch
            if stop:
                self.stopped.add(key)

        def pruned(self, key, epoch):
            """None until the driver has judged `epoch`, then whether to stop; "lost" when this board never heard
            of that epoch (it was restarted since): the worker sends it again."""
            if self.judged.get(key, 0) >= epoch:
                return key in self.stopped
            return None if self.last.get(key, 0) >= epoch else "lost"

        def forget(self, key):
            """A finished run: the driver has its record."""
            for table in (self.states, self.pids, self.rows, self.last, self.judged):
                table.pop(key, None)
            self.stopped.discard(key)

        def poll(self):
            """(born, {key: (pid, rows, state)}) of the runs with news: the rows since the last poll, the state
            if it came with them."""
            out = {k: (self.pids.get(k), self.rows.pop(k, []), self.states.get(k) if k in self.fresh else None)
                   for k in self.news}
            self.news.clear()
            self.fresh.clear()
            return self.born, out

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
    with run_folder() as tmp:
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
                if job.judged:
                    stop = _wait_for_verdict(ray, board, job.key, row, data)
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


def _wait_for_verdict(ray, board, key: str, row: dict, state: bytes | None) -> bool:
    """A search's trial waits for the pruner's verdict on its epoch, bounded (a lost driver); sent again to a
    board restarted since."""
    deadline = time.monotonic() + JUDGE_TIMEOUT
    while time.monotonic() < deadline:
        stop = ray.get(board.pruned.remote(key, row["epoch"]))
        if stop == "lost":
            ray.get(board.epoch.remote(key, row, state))
        elif stop is not None:
            return stop
        time.sleep(0.02)
    return False


RUN_PREFIX = "tinymnist-run-"


@contextmanager
def run_folder():
    """A task's temporary folder on its worker, removed when the task ends; and the folders of earlier tasks
    whose workers were killed (the memory monitor, a sweep stopped), removed now. A folder is in use while its
    task holds the flock on its `.owner` file, which the system drops when the process dies; it is renamed into
    view only once locked, so that no other task can take it for abandoned."""
    root = Path(tempfile.gettempdir())
    _remove_abandoned(root)
    new = Path(tempfile.mkdtemp(prefix=".tinymnist-new-", dir=root))
    fd = os.open(new / ".owner", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        folder = root / f"{RUN_PREFIX}{new.name.removeprefix('.tinymnist-new-')}"
        new.rename(folder)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
        shutil.rmtree(new, ignore_errors=True)  # only if the rename never happened


def _remove_abandoned(root: Path) -> None:
    for folder in root.glob(f"{RUN_PREFIX}*"):
        try:
            fd = os.open(folder / ".owner", os.O_RDONLY)
        except OSError:  # another user's, or not one of ours
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # in use
            os.close(fd)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


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
    """Each job as a Ray task of `threads` CPUs, started again (from its last state) if its worker dies: killed,
    by Ray's memory monitor too, or by an error of Ray's inside the task (the board out of reach)."""
    task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES, retry_exceptions=[ray.exceptions.RayError])(run_job)
    return {task.remote(job, board): job for job in jobs}


# --- the sweep -------------------------------------------------------------------------------------------


@dataclass
class Run:
    entry: Entry
    recipe: Recipe
    seed: int
    folder: str  # the record's folder in --out: the model's slug, plus the label of the grid's settings


def plan(entries: list[tuple[Entry, Recipe]], seeds: list[int], grid: list[tuple[str, list[str]]]) -> list[Run]:
    """Every (model, setting, seed); the number of runs bounded before any is planned, each setting validated
    before anything runs, and each in a folder of its own."""
    size = len(entries) * math.prod(len(vs) for _, vs in grid) * len(seeds)
    if size > MAX_RUNS:
        shape = " x ".join([f"{len(entries)} models", *(f"{len(vs)} {k}" for k, vs in grid), f"{len(seeds)} seeds"])
        raise ScaleError(f"the sweep would be {size:,} runs ({shape}), more than the {MAX_RUNS:,} one sweep takes; "
                         "split it into smaller sweeps")
    runs, owners = [], {}
    for i, (entry, base) in enumerate(entries):
        for settings in combinations(grid):
            recipe = apply_settings(base, settings)
            tag = label(settings, grid)
            folder = f"{entry.slug}+{tag}" if tag else entry.slug
            this = (i, " ".join([entry.name, *settings]))
            other = owners.setdefault(folder.casefold(), this)  # casefold: one folder on macOS or Windows
            if other != this:
                raise ScaleError(f"{other[1]} and {this[1]} would write into one folder, {folder}; name each "
                                 "model and value once")
            runs += [Run(entry, recipe, seed, folder) for seed in seeds]
    return runs


class Coordinator:
    """The driver's side of the board: its news, with each run's rows gathered here; and, when Ray restarted the
    board (it starts empty), `resend(board)` gives it back what the runs still need from it."""

    def __init__(self, ray, resend: Callable[[object], None], say: Callable[[str], None]):
        self.ray, self.resend, self.say = ray, resend, say
        self.board = _board_class(ray).remote()
        self.born, self.rows = None, {}

    def poll(self) -> dict:
        """{key: (pid, the run's rows so far, its new state or None)} of the runs with news."""
        born, news = self.ray.get(self.board.poll.remote())
        if self.born not in (None, born):
            self.say("the board of this command (a Ray actor) died and was started again; the runs go on")
            self.resend(self.board)
        self.born = born
        for key, (_, rows, _) in news.items():
            known = self.rows.setdefault(key, [])
            known += [r for r in rows if not known or r["epoch"] > known[-1]["epoch"]]  # a row sent again
        return {key: (pid, self.rows[key], state) for key, (pid, _, state) in news.items()}

    def forget(self, key: str) -> None:
        self.rows.pop(key, None)
        self.board.forget.remote(key)


def lost(ray, e: Exception, what: str) -> str:
    """Why Ray lost `what` (a run, the board), in a line. An error of our own code inside a task is a bug, and
    is raised again with its traceback."""
    if isinstance(e, ray.exceptions.RayTaskError):
        if not isinstance(e.cause, ray.exceptions.RayError):
            raise e
        e = e.cause  # raised inside the task by Ray (the board out of reach), retried as a worker's death
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    first = f": {lines[0][:200]}" if lines else ""
    return f"{what} was lost on Ray ({type(e).__name__}{first})"


@dataclass
class _Sweep:
    """The driver of one sweep: at most `slots` runs in flight, each holding its record's lock (and folder)
    only while it runs; the states the board gathers written beside the records as they come."""

    ray: object
    runs: list[Run]
    out: Path
    job_of: Callable[[int], Job]
    slots: int
    threads: int
    records: dict
    run_id: dict  # `records.run_identity`: what a finished record must have been made with
    watch: Callable[[dict], None] | None
    bar: object
    errors: list = field(default_factory=list)
    pending: dict = field(default_factory=dict)  # ObjectRef -> index of its run

    def __post_init__(self):
        self.coordinator = Coordinator(self.ray, self.resend, self.bar.write)

    def path(self, i: int) -> Path:
        return record_path(self.out, self.runs[i].folder, self.runs[i].seed)

    def run(self, todo: list[int]) -> None:
        queue = deque(todo)
        try:
            while queue or self.pending:
                while queue and len(self.pending) < self.slots:
                    self.start(queue.popleft())
                if not self.pending:
                    continue
                done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.25)
                news = self.coordinator.poll()
                self.write_states(news)
                if self.watch is not None:
                    self.watch(news)
                for ref in done:
                    self.finish(ref)
        except KeyboardInterrupt:
            self.stop()
            raise
        except self.ray.exceptions.RayError as e:
            if isinstance(e, self.ray.exceptions.RayTaskError):  # a bug, raised again by `finish`
                raise
            self.stop()
            raise ScaleError(f"{lost(self.ray, e, 'the board of the sweep')}; the finished runs are "
                             f"recorded in {self.out}, and the same command continues the others from their last "
                             "states") from None

    def start(self, i: int) -> None:
        r, path = self.runs[i], self.path(i)
        try:
            lock_run(path)  # a second sweep into the same folder would write the same records
        except CheckpointError as e:
            self.fail(i, str(e))
            return
        if path.exists():  # another sweep into the same folder recorded it meanwhile
            self.records[i] = check_finished(path, r.entry.name, r.recipe, self.run_id)
            self.bar.write(f"{r.folder} seed {r.seed}: already recorded ({path}), skipped", file=sys.stdout)
            self.bar.update(1)
            self.release(path)
            return
        job = self.job_of(i)
        state = path.with_suffix(".state.pt")
        if state.is_file():  # an interrupted run (a sweep's or train's) continues from its last epoch
            self.ray.get(self.coordinator.board.put_state.remote(job.key, state.read_bytes()))
        self.pending.update({ref: i for ref in submit(self.ray, [job], self.coordinator.board, self.threads)})

    def resend(self, board) -> None:
        """To a restarted board: the last state of each run in flight (the one written beside its record)."""
        for i in self.pending.values():
            state = self.path(i).with_suffix(".state.pt")
            if state.is_file():
                board.put_state.remote(str(i), state.read_bytes())

    def write_states(self, news: dict) -> None:
        for key, (_, _, state) in news.items():
            if state is not None and int(key) not in self.records:  # `train --resume` can continue it too
                atomic_write_bytes(self.path(int(key)).with_suffix(".state.pt"), state)

    def finish(self, ref) -> None:
        i = self.pending.pop(ref)
        r, path = self.runs[i], self.path(i)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            result = {"error": f"{lost(self.ray, e, 'its worker')}, also when retried; the same command "
                               "continues it from its last state"}
        try:
            if "error" in result:
                self.fail(i, result["error"])
                return
            atomic_write_bytes(path.with_suffix(".pt"), result["checkpoint"])
            write_json(path, result["record"])  # last: a record means its checkpoint is there
            path.with_suffix(".state.pt").unlink(missing_ok=True)
            self.records[i] = result["record"]
            self.coordinator.forget(str(i))
            rec = result["record"]
            v = verdict(rec["epochs"], Budget(**rec["budget"]), rec["params"])
            last = rec["epochs"][-1]
            acc = f"test {last['test_acc']:.2f}%" if "test_acc" in last else f"val {last['val_acc']:.2f}%"
            self.bar.write(f"{r.folder} seed {r.seed}: {len(rec['epochs'])} epochs, {acc}; {v['text']}",
                           file=sys.stdout)
            self.bar.update(1)
        finally:
            self.release(path)

    def release(self, path: Path) -> None:
        """A run's lock, and its folder if it holds nothing (a run that failed before its first epoch)."""
        unlock_run(path)
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def fail(self, i: int, error: str) -> None:
        r = self.runs[i]
        self.errors.append(f"{r.folder} seed {r.seed}: {error}")
        self.bar.write(f"{r.folder} seed {r.seed}: failed: {error}", file=sys.stdout)
        self.bar.update(1)

    def stop(self) -> None:
        """On Ctrl-C, SIGTERM or a lost board: the states the board holds written beside their records, and the
        runs in flight told to stop (their workers remove their temporary folders), waited for a little."""
        with contextlib.suppress(self.ray.exceptions.RayError):
            self.write_states(self.coordinator.poll())
        stop_tasks(self.ray, list(self.pending))
        for i in self.pending.values():  # nothing writes into their folders any more
            self.release(self.path(i))


def stop_tasks(ray, refs: list) -> None:
    """Cancels tasks and waits for them to end (bounded): an interrupted command leaves no work behind."""
    for ref in refs:
        ray.cancel(ref)  # force=False: a KeyboardInterrupt in the task, which cleans up as it unwinds
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_TIMEOUT)


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
            todo.append(i)
    errors = []
    if todo:
        def job_of(i: int) -> Job:
            r = runs[i]
            return make_job(r.entry, r.recipe, runtime, r.seed, threads, budget_of(r.entry), str(i), limit=limit,
                            val=val, data_dir=data_dir, teachers_dir=teachers_dir)

        with ray_session(address, workers * threads) as ray:
            bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", file=sys.stderr,
                       dynamic_ncols=True, disable=None)
            try:
                # runs at a time: as many as the CPUs hold, on a cluster too (a local instance has workers x threads)
                slots = max(workers, int(ray.cluster_resources().get("CPU", 0)) // threads)
                driver = _Sweep(ray, runs, out, job_of, slots, threads, records, run_id, watch, bar)
                driver.run(todo)
                errors = driver.errors
            finally:
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
