"""Writing files so that a reader, or a crash, never sees half of one, and never onto anything but a file."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_missing(path: Path, what: str = "file") -> str:
    """Why `path` is not a usable `what` ("file" or "folder"), in a few words for an error message."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if e.errno == errno.ENOENT:
            return "is a broken symbolic link" if os.path.islink(path) else "does not exist"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file" if what == "file" else "is a folder"
    if stat.S_ISREG(mode):
        return "is a file, not a folder" if what == "folder" else "is a file"
    return f"is a special file, not a {what}"


def check_target(path: Path) -> None:
    """Refuses to write over anything but a regular file: replacing a device, pipe or socket (or, as root,
    /dev/null) with a regular file would break the system, not save a result."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "it is a folder", str(path))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EPERM, "it is a special file, not a regular file", str(path))


def write_failure(path: Path, e: OSError) -> str:
    """One line for a write that failed; the target is untouched, as the write went to a temporary file."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: {reason}; nothing was lost (the previous file is kept), free some space " \
               "and run again (an interrupted training run continues with --resume)"
    return f"cannot write {path}: {reason}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it into place; raises OSError."""
    path = Path(path)
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make records private to their writer
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check_target(path)  # again: the target may have become something else while we wrote
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder: Path) -> None:
    """Creates `folder` and writes a probe file with a unique name (concurrent runs must not collide)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".tinymnist-write-test.")
    os.close(fd)
    os.unlink(probe)
