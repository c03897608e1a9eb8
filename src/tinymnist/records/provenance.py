"""What names the code and the data a run was made with: the git commit the package runs from, and the run's
identity (data slice and checksums) that resuming checks."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache  # the code a process runs is the code it loaded: asked once, early, by `train`
def git_commit() -> str | None:
    """The commit of the source tree this package runs from: "<sha>", or "<sha>+dirty" when tracked files of
    the package's folder had uncommitted changes; None only outside a git checkout (an installed copy).

    Git runs in the package's own folder, whatever the current directory, and is told to trust it: a
    checkout owned by another user (a shared machine, a container) otherwise makes `git` refuse to answer."""
    here = Path(__file__).resolve().parents[1]  # the package's folder, not this subpackage's

    def git(*args: str) -> str:
        return subprocess.run(
            # the checkout is the one this code runs from, so trusting its git config adds no new risk
            ["git", "-c", "safe.directory=*", *args],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        if not sha:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def run_identity(limit: int | None, val: int | None, checksums: dict | None) -> dict:
    """What, besides the model and recipe, decides what a run trains on: resuming must not mix runs."""
    return {"limit": limit, "val": val, "data": checksums}
