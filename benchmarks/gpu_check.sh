#!/usr/bin/env bash
# GPU check for a lent H100/H200 (about 5 minutes): DiT-XL/2 at 256 px with IGDS guidance.
#   1. main    batch 64, bf16: eager-ref, eager, compiled, compiled + CUDA graphs; each backend's
#              error against the eager fp32 step on fresh inputs (the parity check), ms/step,
#              img/s for the 50-step chain with decode and PNG
#   2. aoti    batch 8, bf16: AOTInductor package, parity and ms/step
#   3. b256    batch 256, bf16: eager (the large-batch end of the range)
# Each stage runs under its own timeout and rewrites its JSON after every backend, so a stage cut
# short still leaves what it measured. Installs nothing; runs with the machine's python.
#
#   bash benchmarks/gpu_check.sh                      # results in $OUT (default ./gpu_check_out)
#   IGDS_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh # tiny model on the CPU: proves the script runs
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
OUT=${OUT:-$PWD/gpu_check_out}
DRY=${IGDS_GPU_CHECK_DRY:-0}
mkdir -p "$OUT"
start=$(date +%s)

echo "== environment"
for pkg in torch numpy; do
  if ! $PY -c "import $pkg" 2>/dev/null; then
    echo "error: $pkg is not importable with $PY; nothing can run" >&2
    exit 2
  fi
done
# What each optional package changes here (none of them is installed by this script).
declare -A WHY=(
  [typer]="no CLI: stages run through benchmarks/gpu_check.py"
  [safetensors]="stubbed by benchmarks/gpu_check.py (random weights need no files)"
  [tqdm]="not needed by the bench"
  [pyarrow]="not needed by the bench"
  [PIL]="PNG encoding skipped in the end-to-end numbers"
  [diffusers]="VAE decode simulated (zeros) in the end-to-end numbers"
  [onnxruntime]="onnxruntime backend unavailable (not run here anyway)"
  [tensorrt]="tensorrt backend skipped"
)
for pkg in typer safetensors tqdm pyarrow PIL diffusers onnxruntime tensorrt; do
  if $PY -c "import $pkg" 2>/dev/null; then echo "have    $pkg"; else echo "missing $pkg: ${WHY[$pkg]}"; fi
done
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "$DRY" = "0" ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible; set IGDS_GPU_CHECK_DRY=1 for the CPU dry run" >&2
  exit 2
fi

# The CLI when everything it imports is here (and not in a dry run: only the runner shrinks sizes).
if [ "$DRY" = "0" ] && $PY -c "import igds_fast.cli, igds_fast.bench" 2>/dev/null; then
  RUN=("$PY" -m igds_fast.cli bench --random-weights)
  echo "route: python -m igds_fast.cli bench"
else
  RUN=("$PY" benchmarks/gpu_check.py)
  echo "route: python benchmarks/gpu_check.py (igds_fast.bench without the CLI)"
fi

stage() {  # stage NAME SECONDS ARGS...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "${RUN[@]}" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | grep -E "^bench|^wrote|^error"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "$name: stopped at its ${limit}s limit (JSON holds the backends that finished)"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && echo "$name: exit code $rc (see $OUT/$name.log)"
  return 0
}

COMMON=(--model dit-xl2 --resolution 256 --steps 50 --device cuda --dtype bf16)
stage main 160 "${COMMON[@]}" --batch-size 64 --backends eager-ref,eager,compiled,compiled-cg \
  --e2e-backends eager,compiled,compiled-cg --warmup 1 --repeats 5 --parity-inputs 2
stage aoti 70 "${COMMON[@]}" --batch-size 8 --backends aoti --e2e-backends none --warmup 1 --repeats 3 \
  --parity-inputs 2
stage b256 50 "${COMMON[@]}" --batch-size 256 --backends eager --warmup 1 --repeats 3 --parity-inputs 1

echo "== summary ($(($(date +%s) - start)) s)"
$PY - "$OUT" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    d = json.loads(path.read_text())
    b = d["config"]["batch_size"]
    for name, r in d["results"].items():
        if r.get("status") != "ok":
            print(f"{path.stem:5} b{b:<4} {name:12} {r.get('status')}: {r.get('reason') or r.get('error')}")
            continue
        err = max(r["max_rel_error_vs_eager_fp32"].values())
        e2e = f"{r['e2e']['img_s']:8.2f} img/s" if "e2e" in r else " " * 14
        x = r.get("step_speedup_vs_eager")
        print(f"{path.stem:5} b{b:<4} {name:12} {r['step_ms']:9.1f} ms/step {e2e} {r['peak_fraction']:6.1%} of peak"
              f"  err {err:.1e}" + (f"  x{x:.2f} vs eager" if x else ""))
EOF
