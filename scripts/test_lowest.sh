#!/usr/bin/env bash
# Install every base dependency at the lowest version pyproject.toml allows, in a venv of its own,
# and run the fast tests against them; the result is written to benchmarks/results/lowest_versions.json.
#   bash scripts/test_lowest.sh                   # venv in /tmp/igds-lowest (recreated)
#   LOWEST_VENV=/path bash scripts/test_lowest.sh
#
# pip has no lowest-version resolution: each ">=X" of [project] dependencies is pinned to "==X".
# torch is the exception: its floor is installed only where a CPU wheel of that version exists on
# the package index for this Python; otherwise the CPU wheel scripts/setup.sh installs (2.13.0).
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${LOWEST_VENV:-/tmp/igds-lowest}"
result=benchmarks/results/lowest_versions.json
read -r -a tests <<<"${LOWEST_TESTS:-tests/test_packaging.py tests/test_cli_polish.py tests/test_schedule.py tests/test_distill.py}"
quiet() { grep -v "is ignored" || true; }

rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q --disable-pip-version-check --upgrade pip 2>&1 | quiet

# name==floor for every base dependency but torch
mapfile -t pins < <(python - <<'EOF'
import re, tomllib
from pip._vendor.packaging.markers import Marker
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    spec, _, marker = dep.partition(";")
    if marker.strip() and not Marker(marker.strip()).evaluate():
        continue  # not for this Python
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)(?:\s*,\s*<\s*[^;\s]+)?", spec.strip())
    if m is None:
        raise SystemExit(f"dependency without a plain floor: {dep}")
    print(f"{m[1]}=={m[2]}")
EOF
)
torch_floor=""
for p in "${pins[@]}"; do
  [[ "$p" == torch==* ]] && torch_floor="${p#torch==}"
done
torch_pin=""
torch_note=""
if pip index versions torch 2>/dev/null | grep -Eq "[ ,]$torch_floor(\.0)*\+cpu([ ,]|$)"; then
  torch_pin="torch==$torch_floor+cpu"
  torch_note="the floor's CPU wheel"
else  # PyPI's Linux wheels of torch are CUDA builds: the CPU wheel of scripts/setup.sh instead
  for candidate in "torch==2.13.0+cpu" "torch==2.13.0"; do
    if pip install -q --dry-run --no-deps "$candidate" >/dev/null 2>&1; then torch_pin=$candidate; break; fi
  done
  torch_note="no CPU wheel of torch $torch_floor for this Python on the index: $torch_pin, as scripts/setup.sh installs"
fi
others=()
for p in "${pins[@]}"; do [[ "$p" == torch==* ]] || others+=("$p"); done

command="pip install $torch_pin ${others[*]} pytest && pip install --no-deps -e . && pytest -m 'not slow' -x -q ${tests[*]}"
echo "$command"
log=$(mktemp)
status=pass
{
  pip install --disable-pip-version-check "$torch_pin" "${others[@]}" pytest 2>&1 | quiet &&
    pip install --disable-pip-version-check --no-deps -e . 2>&1 | quiet &&
    pip check
} >"$log" 2>&1 || status=install-failed
if [ "$status" = pass ]; then
  python -m pytest -m "not slow" -x -q -p no:cacheprovider "${tests[@]}" >>"$log" 2>&1 || status=fail
fi
tail -n 30 "$log"

python - "$status" "$command" "$torch_note" "$log" "$result" "${pins[@]}" <<'EOF'
import datetime, importlib.metadata as md, json, platform, sys
status, command, torch_note, log, result, *pins = sys.argv[1:]
names = [p.split("==")[0] for p in pins] + ["click", "pytest"]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
lines = open(log, errors="replace").read().splitlines()
summary = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln or " error" in ln), None)
record = {
    "command": "bash scripts/test_lowest.sh",
    "installs": command,
    "date": datetime.date.today().isoformat(),
    "python": platform.python_version(),
    "floors": dict(p.split("==") for p in pins),
    "installed": {n: version(n) for n in names},
    "torch": torch_note,
    "result": status,
    "pytest": summary,
    "failure": None if status == "pass" else lines[-40:],
}
with open(result, "w") as f:
    json.dump(record, f, indent=1)
    f.write("\n")
print(f"{status}: {summary}")
EOF
[ "$status" = pass ]
