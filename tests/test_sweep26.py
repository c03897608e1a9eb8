"""Issue 26, items 4, 11, 12, 13 and 14 (a sweep's part): a sweep outlives the loss of a worker or of its board,
its options are checked before any work, each setting has a folder of its own, it holds locks and folders only
for the runs in flight, and an interrupted sweep is one line, keeps its states and leaves no folders behind.

The tests that start Ray share one local instance of 2 CPUs (marked `scale`); its workers' temporary folders
are in a folder of the test's own, to be counted.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, wait_for_proc
from tinymnist import sweep as sweep_module
from tinymnist.cli import main
from tinymnist.errors import install_handlers, on_signal, restore_handlers
from tinymnist.judge import Budget
from tinymnist.model import get_entry
from tinymnist.recipes import apply_settings
from tinymnist.runtime import default_runtime
from tinymnist.search import SearchError, check_epochs
from tinymnist.sweep import MAX_LABEL, ScaleError, _start, label, parse_grid, plan, run_folder, sweep

ENTRY = get_entry("Model_8")
RECIPE = apply_settings(ENTRY.recipe, ["epochs=2"])
GRID = [("lr", ["0.05", "0.1", "0.2"])]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- options and folders, before any work (no Ray instance) --------------------------------------------


def test_sweep_and_search_options_are_one_line_before_any_work(tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("optuna")
    out = ["--out", str(tmp_path / "o")]
    assert main(["sweep", "Model_8", "--address", "http://[::1", *out]) == 2  # was ValueError: Invalid IPv6 URL
    assert "--address 'http://[::1': expected HOST:PORT" in one_line(capsys)
    million = [a for k in ("lr", "ema", "warmup", "weight_decay", "label_smoothing", "epochs")
               for a in ("--set", f"{k}={','.join(str(v) for v in range(1, 11))}")]
    start = time.perf_counter()
    assert main(["sweep", "Model_8", *million, *out]) == 2  # hung before the first run
    assert "would be 1,000,000 runs" in one_line(capsys) and time.perf_counter() - start < 5
    assert main(["search", "Model_1", "--trials", "1", "--set", "epochs=1", "--out", str(tmp_path / "b.toml")]) == 2
    assert "the recipe trains 1 epoch, fewer than the 5" in one_line(capsys)  # was a TypeError after the trials
    assert not (tmp_path / "b.db").exists() and not (tmp_path / "o").exists()


def test_a_search_space_with_too_few_epochs_is_refused():
    check_epochs({"lr": {"low": 0.01, "high": 0.1}}, RECIPE, 2)
    with pytest.raises(SearchError, match="the recipe trains 2 epochs, fewer than the 3"):
        check_epochs({"lr": {"low": 0.01, "high": 0.1}}, RECIPE, 3)
    with pytest.raises(SearchError, match="the search space allows 2 epochs, fewer than the 3"):
        check_epochs({"epochs": {"low": 2, "high": 9}}, RECIPE, 3)
    with pytest.raises(SearchError, match="allows 1 epoch,"):
        check_epochs({"epochs": {"choices": [4, 1]}}, RECIPE, 3)


def test_every_setting_has_a_folder_of_its_own():
    grid = parse_grid(["epochs=\uff11,\uff12"])  # full-width digits: both labels were "epochs=_", one record lost
    runs = plan([(ENTRY, ENTRY.recipe)], [1], grid)
    assert [r.recipe.epochs for r in runs] == [1, 2] and len({r.folder for r in runs}) == 2
    assert all(r.folder.startswith("Model_8+epochs=_+") for r in runs)
    assert label(["lr=0.05"], GRID) == "lr=0.05"  # a label a folder can hold is kept as it is (resumes find it)
    long = parse_grid([f"teacher={'a' * 300}.pt,{'a' * 299}b.pt"])
    labels = {label([f"teacher={v}"], long) for v in long[0][1]}
    assert len(labels) == 2 and all(len(t) <= MAX_LABEL + 11 for t in labels)
    with pytest.raises(ScaleError, match="would write into one folder, Model_8"):
        plan([(ENTRY, ENTRY.recipe), (get_entry("Model_8"), ENTRY.recipe)], [1], [])


def test_a_grid_is_bounded_before_it_is_expanded(monkeypatch):
    monkeypatch.setattr(sweep_module, "combinations", lambda grid: pytest.fail("expanded"))
    grid = [(k, [str(v) for v in range(1, 101)]) for k in ("lr", "ema", "warmup")]
    with pytest.raises(ScaleError, match=r"1,000,000 runs \(1 models x 100 lr x 100 ema x 100 warmup x 1 seeds\)"):
        plan([(ENTRY, ENTRY.recipe)], [1], grid)


def test_ray_init_leaves_our_signal_handlers_in_place():
    # ray.init puts sys.exit(15) on SIGTERM: a sweep's SIGTERM exited 15 with Ray's dump
    class Ray:
        def __init__(self, term: bool):
            self.term = term

        def init(self, **options):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
            if self.term:  # a SIGTERM while it starts
                signal.raise_signal(signal.SIGTERM)

    previous = install_handlers()
    try:
        _start(Ray(term=False), "cannot start")
        assert signal.getsignal(signal.SIGTERM) is on_signal
        with pytest.raises(KeyboardInterrupt) as caught:
            _start(Ray(term=True), "cannot start")
        assert caught.value.args == (signal.SIGTERM,)
    finally:
        restore_handlers(previous)


def test_folders_of_killed_workers_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{sweep_module.RUN_PREFIX}dead"  # its task's process was killed: nobody holds its lock
    (dead / "out").mkdir(parents=True)
    (dead / ".owner").touch()
    with run_folder() as live:
        assert not dead.exists() and (live / ".owner").exists()
        fd = os.open(live / ".owner", os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # held while the task runs: another task leaves it alone
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        with run_folder() as other:
            assert live.exists() and other != live
    assert not list(tmp_path.iterdir())


# --- on Ray ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray")
    workers_tmp = tmp_path_factory.mktemp("workers-tmp")  # the workers' $TMPDIR
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "RAY_TMPDIR")}
    os.environ.update(RAY_TMPDIR=tempfile.gettempdir(), TMPDIR=str(workers_tmp))  # Ray's sockets stay short
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
    yield ray, workers_tmp
    ray.shutdown()


def run_sweep(out: Path, mnist_dir, runs, **options) -> list[dict]:
    options = {"workers": 2, "threads": 1, "limit": 256, "data_dir": mnist_dir, "say": lambda line: None, **options}
    return sweep(runs, out, default_runtime("cpu"), lambda e: Budget(hold=e.hold), **options)


def records(folder: Path) -> dict[str, list]:
    return {str(p.relative_to(folder)): [{k: v for k, v in row.items() if k != "seconds"} for row in
                                         json.loads(p.read_text())["epochs"]] for p in folder.glob("*/seed*.json")}


def leftovers(workers_tmp: Path) -> list[Path]:
    return list(workers_tmp.glob("tinymnist-*"))


@pytest.fixture(scope="module")
def whole(ray_local, mnist_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole")
    run_sweep(out, mnist_dir, plan([(ENTRY, RECIPE)], [1], GRID)[:2])  # one round of the 2 CPUs
    return records(out)


@pytest.mark.scale
def test_a_killed_board_is_started_again_and_the_sweep_ends(tmp_path, mnist_dir, ray_local, whole, monkeypatch,
                                                            capsys):
    ray, _ = ray_local
    boards, seen = [], []
    board_class = sweep_module._board_class

    def keep(ray):
        cls = board_class(ray)
        return type("Kept", (), {"remote": staticmethod(lambda: boards.append(cls.remote()) or boards[-1])})

    def watch(news):
        seen.append((sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.lock")),
                     sorted(p.name for p in tmp_path.iterdir())))
        if len(boards) == 1 and news.get("0", (None, []))[1]:  # after run 0's first epoch
            ray.kill(boards[0], no_restart=False)  # as the memory monitor did
            boards.append(None)

    monkeypatch.setattr(sweep_module, "_board_class", keep)
    run_sweep(tmp_path, mnist_dir, plan([(ENTRY, RECIPE)], [1], GRID), watch=watch)
    assert len(boards) == 2, "the sweep ended before the test could kill its board"
    assert "was started again" in capsys.readouterr().out
    assert {k: v for k, v in records(tmp_path).items() if k in whole} == whole and len(records(tmp_path)) == 3
    # item 14: the two runs in flight (2 CPUs) hold two locks; the third run's folder is made when it starts
    assert max(len(locks) for locks, _ in seen) == 2
    assert seen[0] == (["Model_8+lr=0.05/seed1.lock", "Model_8+lr=0.1/seed1.lock"], ["Model_8+lr=0.05",
                                                                                    "Model_8+lr=0.1"])


def dies_of_memory(marker: Path, *, always: bool):
    """A `run_job` whose worker is lost for memory: once, after its run's first epoch (`marker` then exists), or
    every time, at once. Made here, it travels to the workers by value."""
    def run_job(job, board):
        import ray

        from tinymnist import sweep

        if always:
            raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
        if marker.exists():
            return sweep.run_job(job, board)

        class Dying:
            def __init__(self, board):
                self.board = board

            def __getattr__(self, name):
                return getattr(self.board, name)

            @property
            def epoch(self):
                def remote(*news):
                    ray.get(self.board.epoch.remote(*news))  # its news is in, as a lost worker's would be
                    marker.touch()
                    raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
                return type("Method", (), {"remote": staticmethod(remote)})

        return sweep.run_job(job, Dying(board))

    return run_job


@pytest.mark.scale
def test_a_worker_lost_for_memory_is_retried_and_its_run_continues(tmp_path, mnist_dir, ray_local, whole,
                                                                    monkeypatch):
    monkeypatch.setattr(sweep_module, "run_job", dies_of_memory(tmp_path / "died", always=False))
    run_sweep(tmp_path / "out", mnist_dir, plan([(ENTRY, RECIPE)], [1], GRID)[:1])
    assert (tmp_path / "died").exists()
    assert records(tmp_path / "out") == {k: v for k, v in whole.items() if "0.05" in k}


@pytest.mark.scale
def test_a_run_lost_every_time_ends_the_sweep_with_one_line(tmp_path, mnist_dir, ray_local, monkeypatch):
    monkeypatch.setattr(sweep_module, "run_job", dies_of_memory(tmp_path / "died", always=True))
    with pytest.raises(ScaleError) as caught:
        run_sweep(tmp_path / "out", mnist_dir, plan([(ENTRY, RECIPE)], [1], GRID)[:1])
    message = str(caught.value)
    assert message.startswith("1 of 1 runs failed: Model_8+lr=0.05 seed 1: its worker was lost on Ray "
                              "(OutOfMemoryError: Task was killed") and len(message.splitlines()) == 1, message
    assert "the same command continues it from its last state" in message
    assert not list((tmp_path / "out").iterdir())  # no lock, and no empty folder, is left


@pytest.mark.scale
def test_sigterm_then_ctrl_c_during_a_sweep_is_one_line(tmp_path, mnist_dir, ray_local):
    # it joins the tests' Ray instance (its workers are warm): ray.init replaces the SIGTERM handler all the same
    ray, workers_tmp = ray_local
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tinymnist", "sweep", "Model_8", "--seeds", "1-3", "--epochs",
                             "30", "--limit", "256", "--out", str(out), "--data-dir", str(mnist_dir), "--address",
                             ray.get_runtime_context().gcs_address], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for_proc(proc, lambda pid: any(out.glob("*/seed*.state.pt"))), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "tinymnist: interrupted", (proc.returncode, err)
    assert any(out.glob("*/seed*.state.pt")) and not list(out.rglob("*.lock"))  # the last finished epochs
    assert not leftovers(workers_tmp)  # their workers' temporary folders (a state, a lock): the tasks were stopped


@pytest.mark.scale
def test_a_search_outlives_its_board(tmp_path, mnist_dir, ray_local, monkeypatch, capsys):
    from tinymnist import search as search_module

    ray, _ = ray_local
    judge = search_module.Trials.judge

    def judge_then_kill(self, news):  # the board killed once the pruner has judged an epoch: its verdicts are lost
        judge(self, news)
        if not getattr(self, "killed", False) and any(rows for _, rows, _ in news.values()):
            self.killed = True
            ray.kill(self.coordinator.board, no_restart=False)

    monkeypatch.setattr(search_module.Trials, "judge", judge_then_kill)
    start = time.monotonic()
    assert main(["search", "Model_8", "--trials", "1", "--val", "256", "--limit", "768", "--set", "epochs=3",
                 "--data-dir", str(mnist_dir), "--out", str(tmp_path / "best.toml")]) == 0
    assert time.monotonic() - start < sweep_module.JUDGE_TIMEOUT  # its worker did not wait out a lost verdict
    out = capsys.readouterr().out
    assert "was started again" in out and "trial 0: lowest val accuracy of the last 3 epochs" in out
