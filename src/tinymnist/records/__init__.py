"""Records, checkpoints, resumable states, run locks and provenance on disk: everything a run writes, and reading
it back checked, never running any code. `from tinymnist.records import X` reaches each public name here.

Along the path, each module uses only those above it:

    provenance.py   the git commit the code runs from; a run's identity (data slice and checksums)
    record.py       a run's JSON record: its path, atomic writes, reading it back checked (`load_record`)
    locks.py        one process at a time writes a run (`lock_run`, `release_locks`)
    checkpoints.py  weights-only checkpoints, checked before and after `torch.load`; shipped weights; teachers
    states.py       resumable training states and the same-run checks of `--resume`
"""

from .checkpoints import (
    MAX_NESTING,
    WEIGHTS_DIR,
    load_checkpoint,
    load_teachers,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    teacher_files,
)
from .locks import lock_run, release_locks, unlock_run
from .provenance import git_commit, run_identity
from .record import (
    ACCURACIES,
    BUDGET_FIELDS,
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    PERCENT,
    RECORD_FIELDS,
    REQUIRED,
    RESULTS_DIR,
    ROW_FIELDS,
    CheckpointError,
    accuracy_column,
    load_record,
    read_json,
    record_path,
    write_json,
)
from .states import RUN_LABELS, check_finished, check_same_run, load_state, save_state

__all__ = [
    "ACCURACIES", "BUDGET_FIELDS", "MAX_DEPTH", "MAX_NESTING", "MAX_RECORD_BYTES", "PERCENT", "RECORD_FIELDS",
    "REQUIRED", "RESULTS_DIR", "ROW_FIELDS", "RUN_LABELS", "WEIGHTS_DIR", "CheckpointError", "accuracy_column",
    "check_finished", "check_same_run", "git_commit", "load_checkpoint", "load_record", "load_state",
    "load_teachers", "load_weights", "lock_run", "read_json", "record_path", "release_locks", "resolve_checkpoint",
    "run_identity", "save_checkpoint", "save_state", "teacher_files", "unlock_run", "write_json",
]
