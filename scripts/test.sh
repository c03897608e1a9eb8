#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then lint (ruff), the generated docs against the records
# (`tinymnist report --check`) and pytest. Real-data tests read $TINYMNIST_DATA, else ../shared/data/mnist.
# Extra arguments go to pytest (e.g. -m "not slow" for the tests that do not train on the real MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m ruff check --quiet .
python -m tinymnist report --check --no-figures
exec python -m pytest "$@"
