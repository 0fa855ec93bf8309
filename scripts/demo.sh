#!/usr/bin/env bash
# One command to try circuitviz: set up .venv, fetch + convert the demo model, open JupyterLab.
#   bash scripts/demo.sh [extra jupyter lab args, e.g. --port 8899 --no-browser]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
circuitviz_venv demo
echo "==> preparing the demo model (first time ~25 s, cached in ~/.cache/circuitviz)"
python -c "import circuitviz; circuitviz.load_model('demo')"
echo "==> starting JupyterLab on examples/01_ioi_demo.ipynb"
root_args=()
[ "$(id -u)" = 0 ] && root_args=(--allow-root)
exec jupyter lab examples/01_ioi_demo.ipynb --ip 127.0.0.1 "${root_args[@]}" "$@"
