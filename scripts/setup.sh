#!/usr/bin/env bash
# Create .venv with everything the CLI and the tests need (CPU torch from the local wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" || true
python -c "import igds_fast, torch; print('igds-fast', igds_fast.__version__, '| torch', torch.__version__)"
