"""Run locks: one process at a time writes a run's record (`seedN.lock` beside it, an flock the system
releases when the process ends)."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path

from ..files import write_failure
from .record import CheckpointError

# Locks held by this process, released by `release_locks` (and by the system if the process dies).
_LOCKS: dict[Path, int] = {}


def lock_run(record: Path) -> None:
    """Takes the lock of a run (`seedN.lock` beside its record) or refuses with one line.

    flock locks belong to the open file, so the system releases them when the process ends, even by
    SIGKILL: a lock file left behind by a crash is never mistaken for a running run.
    """
    lock = record.with_suffix(".lock")
    if lock in _LOCKS:
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CheckpointError(f"another tinymnist run is writing {record} (it holds {lock}); wait for it to "
                                      "finish, or use another --out or seed") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file as we opened it: lock the new one
                break
            os.close(fd)
        try:  # the pid is for a person wondering who holds the lock; the flock is what counts
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
    except OSError as e:
        raise CheckpointError(write_failure(lock, e)) from None
    _LOCKS[lock] = fd


def unlock_run(record: Path) -> None:
    """Releases the lock `lock_run` took for `record`, if this process holds it."""
    lock = record.with_suffix(".lock")
    fd = _LOCKS.pop(lock, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held, so no other run can have locked this file
        os.close(fd)


def release_locks() -> None:
    for lock in list(_LOCKS):
        unlock_run(lock)


atexit.register(release_locks)
