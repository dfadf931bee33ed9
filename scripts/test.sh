#!/usr/bin/env bash
# The README's test command: set up, lint, run the test suite (exit 5 = no tests counts as failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
ruff check igds_fast tests benchmarks scripts
lint-imports  # the import layers of docs/architecture.md (pyproject.toml [tool.importlinter])
set +e
python -m pytest tests -q "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
