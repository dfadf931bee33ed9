#!/usr/bin/env bash
# Create .venv with the package (CPU torch 2.13 from the local wheel when available).
#   bash scripts/setup.sh        # the CLI
#   bash scripts/setup.sh dev    # + tests, lint, diffusers, ray
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
quiet() { grep -v "is ignored" || true; }
pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | quiet
if [ -n "$extras" ]; then
  pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | quiet
else
  pip install -q --disable-pip-version-check -e . 2>&1 | quiet
fi
python -c "import igds_fast, torch; print('igds-fast', igds_fast.__version__, '| torch', torch.__version__)"
