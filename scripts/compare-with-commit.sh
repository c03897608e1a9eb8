#!/usr/bin/env bash
# Trains a model with this checkout and with the code of an earlier commit (default a385764: main before the
# redesign), same seed and thread count, and compares the records epoch by epoch (all but the seconds).
#   scripts/compare-with-commit.sh [COMMIT] [MODEL] [train options...]
#   scripts/compare-with-commit.sh a385764 Model_41 --seed 1 --threads 1    # whole run, about 5 minutes
# Exit 0 when every epoch's figures are equal, 1 when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
commit="${1:-a385764}"; model="${2:-Model_41}"; shift $(( $# > 2 ? 2 : $# ))
[ -n "${VIRTUAL_ENV:-}${PYTHON:-}" ] || source scripts/setup.sh
py="${PYTHON:-python}"
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/old" "$commit"
threads=()
for a in "$@"; do [ "$a" = --threads ] && threads=(yes); done
old_args=("$@")
if [ ${#threads[@]} -gt 0 ]; then  # the old code has no --threads: set it through torch's environment
  n=$(printf '%s\n' "$@" | sed -n '/^--threads$/{n;p}'); export OMP_NUM_THREADS="$n"
  old_args=(); skip=0
  for a in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    if [ "$a" = --threads ]; then skip=1; continue; fi
    old_args+=("$a")
  done
fi
(cd "$tmp/old" && PYTHONPATH="$tmp/old/src" "$py" -m tinymnist train "$model" --quiet --out "$tmp/before" "${old_args[@]}")
"$py" -m tinymnist train "$model" --quiet --out "$tmp/after" "$@"
"$py" - "$tmp/before" "$tmp/after" "$model" <<'PY'
import json, sys
from pathlib import Path
before, after, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
same = True
for old in sorted((before / model).glob("seed*.json")):
    new = after / model / old.name
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(p.read_text())["epochs"]]
            for p in (old, new)]
    for a, b in zip(*rows):
        if a != b:
            same = False
            print(f"{old.name} epoch {a['epoch']}: before {a}\n{' ' * len(old.name)}        after  {b}")
    print(f"{model} {old.stem}: {len(rows[0])} epochs, {'the same' if rows[0] == rows[1] else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PY
