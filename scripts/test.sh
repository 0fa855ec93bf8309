#!/usr/bin/env bash
# One command to run every test: set up .venv with the test extra, system packages,
# JS unit tests (if js/package.json exists), then the whole pytest suite.
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
if [ "${#missing[@]}" -gt 0 ]; then
  _apt_install "${missing[@]}"
fi

circuitviz_venv test

echo "==> preparing the demo model (cached in ~/.cache/circuitviz)"
python -c "import circuitviz; circuitviz.load_model('demo')"

if [ -f js/package.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    _apt_install nodejs npm
  fi
  echo "==> JS unit tests (js/)"
  (
    cd js
    if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
    npm test
    echo "==> tsc --noEmit"
    npx tsc --noEmit
  )
fi

echo "==> ruff check, ruff format --check"
ruff check .
ruff format --check .

echo "==> python -m pytest"
python -m pytest -q "$@"
