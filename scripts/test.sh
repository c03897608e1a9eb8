#!/usr/bin/env bash
# The test suite: sets up .venv if needed and runs pytest. Real-data tests read $TINYMNIST_DATA,
# else ../shared/data/mnist. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec python -m pytest "$@"
