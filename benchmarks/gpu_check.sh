#!/usr/bin/env bash
# The staged GPU check: every number comes from `python3 -m igds_fast.cli`, the route a
# user takes. Installs nothing. Writes JSON under $OUT (or the folder argument) and prints one
# summary table at the end. Each stage runs under its own `timeout`, and `igds-fast bench` rewrites
# its JSON after every backend (a row cut by the limit says "timed out", or "running" after
# SIGKILL), so a short GPU lease always leaves what was measured. Run benchmarks/gpu_smoke.py first:
# it checks the environment and every path in one process within a deadline.
#
# Every row runs the shipped default step unless it says otherwise (each JSON's "step_label":
# "20 steps (ddpm), guided at t <= 300 (6 of 20 steps), clip guard 0, CFG 4 on 3 channels").
#
#   Stage 0 (<= 60 s)  tiny model on CUDA in bf16: a 5-step distill through the CLI, then every
#                      backend (eager, onnxruntime@fp16, tensorrt@fp16, compiled): one that cannot run
#                      here (no package, ONNX Runtime without its CUDA provider, no CUDA toolkit for
#                      AOTInductor) is skipped with its reason before any export; parity against the
#                      eager fp32 step. Fails fast, with the reason, when CUDA, the CLI, the eager step
#                      or the distill does not work. The distill again with --clip-guard 0.5 (reported,
#                      not fatal).
#   Stage 1            DiT-XL/2 256 px (random weights built on the GPU, official layout) + latent
#                      critic + our AutoencoderKL decoder, 20 steps, CFG 4 on 3 channels, bf16:
#                      b64   the step with --clip-guard 0.5: eager-ref, eager, then torch-compile-cg
#                            and torch-compile, which get what is left of the stage's limit (Inductor
#                            compiles the whole guided step, the decoder's backward included: expect
#                            "timed out"; gpu_smoke.py times the plain step's compile on its own budget)
#                      b256  eager, the default step (the guard's decoder activations, ~0.7 GiB
#                            per image, do not fit at b256; the row says clip guard 0)
#                      end to end img/s including decode and PNG encoding.
#   Stage 2            the AOTInductor `compiled` engine at b64, the default step: package build
#                      (export_engine), reload (load_engine), parity, step and end-to-end timing; its
#                      own time budget; skipped with the reason where no CUDA toolkit is found.
#
# Worst case = the sum of the stage limits below + 5 s grace per command: <= 8 min by construction.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run [OUT_DIR] # the same commands on the CPU at tiny sizes
#
# Environment: PYTHON (default python3); S0_LIMIT S1A_LIMIT S1B_LIMIT S2_LIMIT (seconds);
# S0_BACKENDS S1A_BACKENDS S1B_BACKENDS S2_BACKENDS (bench rows; empty skips that bench).
set -u

usage() { sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; }
DRY=0
OUT_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "error: unknown option $1 (use --dry-run, --help)" >&2; exit 2 ;;
    *) OUT_ARG=$1 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# A fresh Inductor cache per run: a compile killed by a time limit can leave a truncated .so in a
# shared cache ("file too short" on the next load). A TORCHINDUCTOR_CACHE_DIR the caller set wins.
if [ -z "${TORCHINDUCTOR_CACHE_DIR:-}" ]; then
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/igds-inductor-XXXXXX")
  export TORCHINDUCTOR_CACHE_DIR
  trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT
fi
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${OUT_ARG:-${OUT:-$PWD/runs/gpu_check}}" && cd "${OUT_ARG:-${OUT:-$PWD/runs/gpu_check}}" && pwd)
CLI=("$PY" -m igds_fast.cli)
start=$(date +%s)

S0_LIMIT=${S0_LIMIT:-60}
S1A_LIMIT=${S1A_LIMIT:-200}
S1B_LIMIT=${S1B_LIMIT:-45}
S2_LIMIT=${S2_LIMIT:-130}
worst=$((S0_LIMIT + S1A_LIMIT + S1B_LIMIT + S2_LIMIT + 6 * 5 + 15))
echo "== igds-fast GPU check ($([ "$DRY" = 1 ] && echo "DRY RUN on the CPU" || echo GPU)), results in $OUT"
echo "stage limits: 0 ${S0_LIMIT}s, 1 ${S1A_LIMIT}+${S1B_LIMIT}s, 2 ${S2_LIMIT}s; worst case ${worst}s"
echo "route: ${CLI[*]} (distill, bench, doctor)"

# ---- what the stages run: the GPU sizes, or tiny ones for the dry run (the same commands) --------
if [ "$DRY" = 1 ]; then
  DEV=cpu
  S0_STEPS=2 S0_BATCH=2 DISTILL_CLASSES=n01440764 DISTILL_IPC=1
  S1_MODEL=(--model dit-s2 --resolution 32) S1_STEPS=2 S1A_BATCH=2 S1B_BATCH=4 REF_IMAGES=1
  TIMING=(--warmup 0 --repeats 1 --threads 1 --peak-tflops 1)
else
  DEV=cuda
  S0_STEPS=5 S0_BATCH=4 DISTILL_CLASSES=n01440764,n02102040 DISTILL_IPC=2
  S1_MODEL=(--model dit-xl2 --resolution 256) S1_STEPS=20 S1A_BATCH=64 S1B_BATCH=256 REF_IMAGES=4
  TIMING=(--warmup 1 --repeats 3)
fi
DTYPE=bf16
S0_BACKENDS=${S0_BACKENDS-eager,onnxruntime@fp16,tensorrt@fp16,compiled}
S1A_BACKENDS=${S1A_BACKENDS-eager-ref,eager,torch-compile-cg,torch-compile}
S1B_BACKENDS=${S1B_BACKENDS-eager}
S2_BACKENDS=${S2_BACKENDS-compiled}
case ",$S0_BACKENDS," in *,eager,*) ;; *) echo "error: S0_BACKENDS must include eager (the fail-fast check)" >&2; exit 2 ;; esac

# ---- environment: what is here (nothing is installed) ---------------------------------------------
echo "== environment"
"$PY" - <<'EOF' | tee "$OUT/environment.txt"
import importlib.util, platform, sys
print("python", sys.version.split()[0], platform.platform())
why = {
    "onnxruntime": "onnxruntime rows skipped", "onnx": "ONNX export rows fail", "onnxscript": "ONNX export rows fail",
    "tensorrt": "tensorrt rows skipped", "diffusers": "not needed (our own AutoencoderKL)",
}
for name in ("torch", "numpy", "typer", "safetensors", "PIL", "pyarrow", "tqdm", *why):
    have = importlib.util.find_spec(name) is not None
    print(("have    " if have else "missing ") + name + ("" if have or name not in why else ": " + why[name]))
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "visible", torch.cuda.is_available(),
          "|", ", ".join(torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())))
except Exception as e:  # reported, and the check below fails with it
    print("torch: cannot import:", e)
import os, shutil
print("CUDA_HOME", os.environ.get("CUDA_HOME"), "| nvcc", shutil.which("nvcc"), "| g++", shutil.which("g++"))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  | tee -a "$OUT/environment.txt"

fail() {  # fail REASON: the summary so far, then exit 1
  echo "FAILED: $1" | tee "$OUT/FAILED.txt" >&2
  "$PY" benchmarks/gpu_check_summary.py "$OUT" --dry-run="$DRY" --failed "$1"
  exit 1
}
if ! err=$("$PY" -c "import igds_fast.cli, igds_fast.bench, igds_fast.jobs.job" 2>&1); then
  fail "the CLI does not import with $PY: $(tail -n 1 <<<"$err") (nothing is installed by this script)"
fi
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  fail "no CUDA device visible to torch (use --dry-run on a CPU)"
fi
"${CLI[@]}" doctor >"$OUT/doctor.txt" 2>&1 || fail "igds-fast doctor failed (see $OUT/doctor.txt)"
# What each exported backend needs on this device (the bench skips a row that cannot run, with this
# reason, before any export work): its package, ONNX Runtime's CUDA provider, AOTInductor's CUDA toolkit.
"$PY" - "$DEV" <<'EOF' | tee -a "$OUT/environment.txt"
import sys
from igds_fast.backends.registry import EXPORT_BACKENDS
from igds_fast.bench.runners import unavailable_on
for name in EXPORT_BACKENDS:
    why = unavailable_on(name, sys.argv[1])
    print(f"backend {name} on {sys.argv[1]}: " + (f"skipped: {why}" if why else "available"))
EOF

# run NAME LIMIT CMD...: the command under its own timeout, output to NAME.log; sets RC
run() {
  local name=$1 limit=$2
  shift 2
  echo "-- $name (limit ${limit}s): ${*:3}"
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  RC=$?
  grep -E "^bench: [^ ]+: |^wrote|^error|FAILED|Traceback" "$OUT/$name.log" | sed 's/^/   /'
  case $RC in
    0) ;;
    124 | 137) echo "   $name: stopped at its ${limit}s limit (its JSON keeps the rows that finished)" ;;
    *) echo "   $name: exit code $RC (see $OUT/$name.log)" ;;
  esac
}
left() {  # seconds left of a stage budget $1 started at $2 (at least 5: `timeout 0` would mean none)
  local n=$(($1 - ($(date +%s) - $2)))
  echo $((n < 5 ? 5 : n))
}

# ---- Stage 0 ---------------------------------------------------------------------------------------
echo "== Stage 0: tiny model, $DEV, $DTYPE: distill, every backend, parity"
s0=$(date +%s)
mkdir -p "$OUT/stage0"
run stage0-distill "$(left "$S0_LIMIT" "$s0")" "${CLI[@]}" distill --out "$OUT/stage0/distill" \
  --classes "$DISTILL_CLASSES" --ipc "$DISTILL_IPC" --steps "$S0_STEPS" --backend eager --device "$DEV" \
  --dtype "$DTYPE" --log-json "$OUT/stage0/distill.jsonl" --overwrite
[ "$RC" = 0 ] || fail "Stage 0: the ${S0_STEPS}-step distill failed (exit $RC): $(tail -n 1 "$OUT/stage0-distill.log")"
# the optional clip guard differentiates the VAE decoder inside the step: the same distill with it
run stage0-distill-noclip "$(left "$S0_LIMIT" "$s0")" "${CLI[@]}" distill --out "$OUT/stage0/distill-noclip" \
  --classes "$DISTILL_CLASSES" --ipc "$DISTILL_IPC" --steps "$S0_STEPS" --backend eager --device "$DEV" \
  --dtype "$DTYPE" --clip-guard 0.5 --log-json "$OUT/stage0/distill-noclip.jsonl" --overwrite
[ "$RC" = 0 ] || echo "   Stage 0: the distill with --clip-guard 0.5 failed (exit $RC): $(tail -n 1 "$OUT/stage0-distill-noclip.log")"
run stage0-bench "$(left "$S0_LIMIT" "$s0")" "${CLI[@]}" bench --model tiny --batch-size "$S0_BATCH" \
  --steps "$S0_STEPS" --device "$DEV" --dtype "$DTYPE" --backends "$S0_BACKENDS" --parity-inputs 2 \
  "${TIMING[@]}" --json "$OUT/stage0.json"
if ! why=$("$PY" benchmarks/gpu_check_summary.py "$OUT" --check-stage0); then
  fail "Stage 0: $why"
fi

# ---- Stage 1 ---------------------------------------------------------------------------------------
echo "== Stage 1: ${S1_MODEL[*]}, $DEV, $DTYPE, $S1_STEPS steps, decode + PNG"
echo "   b$S1A_BATCH: the step with --clip-guard 0.5 (guided inside its window); b$S1B_BATCH: the default step"
# The optional clip guard differentiates the VAE decoder at 256 px in every guided step (~2.6x the CFG pass
# in FLOPs, 0.71 GiB of bf16 activations per image kept for the gradient, counted in
# benchmarks/results/flops/dit-xl2-256.json): b64 runs it; at b256 it cannot fit, so that row runs
# the default step (no clip guard) and its JSON's step_label says so.
COMMON=("${S1_MODEL[@]}" --random-weights --steps "$S1_STEPS" --device "$DEV" --dtype "$DTYPE" --parity-inputs 1)
[ -n "$S1A_BACKENDS" ] && run stage1-b$S1A_BATCH "$S1A_LIMIT" "${CLI[@]}" bench "${COMMON[@]}" \
  --clip-guard 0.5 --batch-size "$S1A_BATCH" --backends "$S1A_BACKENDS" --ref-images "$REF_IMAGES" "${TIMING[@]}" \
  --json "$OUT/stage1-b$S1A_BATCH.json"
[ -n "$S1B_BACKENDS" ] && run stage1-b$S1B_BATCH "$S1B_LIMIT" "${CLI[@]}" bench "${COMMON[@]}" --clip-guard 0 \
  --batch-size "$S1B_BATCH" --backends "$S1B_BACKENDS" "${TIMING[@]}" --json "$OUT/stage1-b$S1B_BATCH.json"

# ---- Stage 2 ---------------------------------------------------------------------------------------
if [ -n "$S2_BACKENDS" ]; then
  echo "== Stage 2: AOTInductor package of the default step (build, reload), b$S1A_BATCH"
  run stage2-aoti "$S2_LIMIT" "${CLI[@]}" bench "${COMMON[@]}" --batch-size "$S1A_BATCH" \
    --backends "$S2_BACKENDS" "${TIMING[@]}" --json "$OUT/stage2-aoti.json"
fi

echo "== summary ($(($(date +%s) - start)) s)"
"$PY" benchmarks/gpu_check_summary.py "$OUT" --dry-run="$DRY"
