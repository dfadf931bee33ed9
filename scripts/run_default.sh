#!/usr/bin/env bash
# The README's first command: set up, then run the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec igds-fast distill "$@"
