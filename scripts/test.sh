#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then lint (ruff), the generated docs against the records
# (`tinymnist report --check`) and pytest. Real-data tests read $TINYMNIST_DATA, else ../shared/data/mnist.
# Extra arguments go to pytest (e.g. -m "not slow" for the tests that do not train on the real MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# the serve page's browser test drives Debian's chromium: install it when missing and we can (root, apt-get)
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 900 apt-get update -qq >/dev/null && timeout 900 apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "could not install chromium; the browser test will say so" >&2
fi
python -m ruff check --quiet .
python -m tinymnist report --check --no-figures
exec python -m pytest "$@"
