# Sourced by the other scripts: creates or reuses .venv, installs the project into it, and activates it.
# PyTorch is installed first as $TORCH_SPEC (default torch==2.13.0, a CPU build where the machine provides
# one), because a bare "torch" requirement can pull a multi-GB CUDA build; set TORCH_SPEC to change it.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$venv/bin/pip" install --disable-pip-version-check -q "${TORCH_SPEC:-torch==2.13.0}"
fi
stamp="$venv/.tinymnist-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install --disable-pip-version-check -q -e "$root[${TINYMNIST_EXTRAS:-dev}]"
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
