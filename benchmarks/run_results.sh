#!/usr/bin/env bash
# The pipeline behind docs/results.md (MinimaxDiffusion's evaluation protocol, scaled down for a CPU).
#
# Imagenette (the 64 px copy in $IGDS_DATA/imagenette-64), the embedded default (v2: latent DiT + VAE) and its
# critics, IPC in $IPCS; per IPC three sets:
#   random-real  igds-fast baseline random-real
#   dit          igds-fast distill --guidance off
#   igds         igds-fast distill --guidance igds
# each trained on with ConvNet-3 at 32 px over $SEEDS seeds and tested on the real val split
# (igds-fast evaluate), then one table + plot (igds-fast report) with the commands and the
# scale-down written under it.
#
# Distilling is the slow part on a CPU: unless BACKEND=eager, each (method, IPC) first exports an
# ONNX Runtime engine (igds-fast export) with the distill call's exact step settings, batch B and
# the memory rows that IPC needs, and distill runs on it (--engines; distill refuses an engine
# built for other models or settings).
#
# Everything goes under $WORK, so a rerun resumes: an existing engine is reused, distill and the
# baseline finish an interrupted set and do nothing on a finished one, evaluate trains only the seeds
# its results file (or <results>.partial) lacks, so SEEDS=1 then SEEDS=3 adds seeds 1 and 2. Changing a setting needs a fresh $WORK (distill refuses to mix configs).
#
#   bash benchmarks/run_results.sh            # the real run (hours on 2 CPU cores)
#
# Environment (defaults in brackets); relative paths are relative to the repository root:
#   IGDS_DATA [../shared/data]   WORK [runs/results]   DOCS_DIR [docs]
#   IPCS ["1 10 50"]   METHODS ["random-real dit igds"]   SEEDS [3]   SEED [0] (picks / noise)
#   EPOCHS_IPC1 [3000]  EPOCHS_IPC10 [2000]  EPOCHS_IPC50 [1500]: evaluate epochs for IPC 1, 2..10,
#     above 10 (the protocol's tiers); EPOCHS, if set, for every IPC
#   EVAL_PRECISION [bf16]: evaluate's autocast (fp32 is the protocol; bf16 ~3x faster on AMX CPUs)
#   README [README.md]: whose results block gets the tables too (empty: none)
#   REPORT_ONLY [empty]: set to run nothing but the report, over the results files that exist
#   NOTE [empty]: a markdown paragraph printed under the tables (e.g. where carried-over results came from)
#   STEPS [20]   GUIDANCE_SCALE, BETA [CLI defaults: igds_fast/config.py]   BATCH [min(IPC, 25)]
#   BACKEND [onnxruntime | eager]   DENOISER, CRITICS [embedded]   DEVICE [cpu]
#   NET [convnet3]   RESOLUTION [32]   IGDS_ORT_THREADS (ONNX Runtime threads, 0 = all cores)
set -euo pipefail
export LC_ALL=C # decimal points in $EPOCHREALTIME and printf
cd "$(dirname "$0")/.."

if ! command -v igds-fast >/dev/null && [[ -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
command -v igds-fast >/dev/null || { echo "error: igds-fast is not on PATH (bash scripts/setup.sh)" >&2; exit 2; }

IGDS_DATA=${IGDS_DATA:-../shared/data}
DATA=$IGDS_DATA/imagenette-64
WORK=${WORK:-runs/results}
DOCS_DIR=${DOCS_DIR:-docs}
IPCS=${IPCS:-1 10 50}
METHODS=${METHODS:-random-real dit igds}
SEEDS=${SEEDS:-3}
SEED=${SEED:-0}
EPOCHS_IPC1=${EPOCHS_IPC1:-3000}
EPOCHS_IPC10=${EPOCHS_IPC10:-2000}
EPOCHS_IPC50=${EPOCHS_IPC50:-1500}
EVAL_PRECISION=${EVAL_PRECISION:-bf16}
README=${README-README.md}
REPORT_ONLY=${REPORT_ONLY:-}
NOTE=${NOTE:-}
EPOCHS=${EPOCHS:-}
STEPS=${STEPS:-20}
GUIDANCE_SCALE=${GUIDANCE_SCALE:-}
BETA=${BETA:-}
BATCH=${BATCH:-}
BACKEND=${BACKEND:-onnxruntime}
DENOISER=${DENOISER:-}
CRITICS=${CRITICS:-}
DEVICE=${DEVICE:-cpu}
NET=${NET:-convnet3}
RESOLUTION=${RESOLUTION:-32}

die() { echo "error: $*" >&2; exit 2; }
is_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
[[ -d $DATA/train && -d $DATA/val ]] || die "no Imagenette at '$DATA' (train/ and val/); set IGDS_DATA"
[[ $EVAL_PRECISION == fp32 || $EVAL_PRECISION == bf16 ]] || die "EVAL_PRECISION must be fp32 or bf16, got '$EVAL_PRECISION'"
[[ $BACKEND == onnxruntime || $BACKEND == eager ]] || die "BACKEND must be onnxruntime or eager, got '$BACKEND'"
for v in $IPCS $SEEDS $EPOCHS_IPC1 $EPOCHS_IPC10 $EPOCHS_IPC50 $EPOCHS $BATCH; do
  is_int "$v" || die "'$v' is not a positive integer (IPCS, SEEDS, EPOCHS*, BATCH)"
done
for m in $METHODS; do
  [[ $m == random-real || $m == dit || $m == igds ]] || die "unknown method '$m' in METHODS"
done
[[ -z $DENOISER || -e $DENOISER ]] || die "DENOISER '$DENOISER' does not exist"
[[ -z $CRITICS || -e $CRITICS ]] || die "CRITICS '$CRITICS' does not exist"
mkdir -p "$WORK/sets" "$WORK/engines" "$WORK/results" "$DOCS_DIR"
TIMINGS_FILE=$WORK/timings.json
[[ -n $REPORT_ONLY ]] && TIMINGS_FILE=$WORK/timings-report-only.json # the runs' own timings stay as they are
if [[ -f $TIMINGS_FILE ]]; then # keep an earlier run's timings (a resumed run times mostly no-ops)
  mv "$TIMINGS_FILE" "${TIMINGS_FILE%.json}-$(date -u -r "$TIMINGS_FILE" +%Y%m%dT%H%M%SZ).json"
fi

# --- stages: every command is echoed, recorded for the docs, timed into $WORK/timings.json -------
COMMANDS=()
TIMINGS=()
RUN_T0=$EPOCHREALTIME
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

write_timings() {
  local total body
  total=$(awk -v a="$RUN_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  body=$(IFS=,; echo "${TIMINGS[*]}")
  printf '{"started": "%s", "total_s": %s, "stages": [%s]}\n' "$STARTED" "$total" "$body" >"$TIMINGS_FILE.tmp"
  mv "$TIMINGS_FILE.tmp" "$TIMINGS_FILE"
}

record() { # record STAGE METHOD IPC STATUS SECONDS
  TIMINGS+=("$(printf '\n  {"stage": "%s", "method": "%s", "ipc": %s, "status": "%s", "seconds": %s}' "$@")")
  printf '[time] %-9s %-12s IPC %-4s %8s s  (%s)\n' "$1" "$2" "$3" "$5" "$4"
  write_timings
}

stage() { # stage STAGE METHOD IPC -- COMMAND...
  local name=$1 method=$2 ipc=$3 t0 cmd
  if [[ -n $REPORT_ONLY && $name != report ]]; then
    shift 4
    skip "$name" "$method" "$ipc" "REPORT_ONLY" -- "$@"
    return
  fi
  shift 4
  cmd=$(printf '%q ' "$@")
  COMMANDS+=("${cmd% }")
  echo "+ ${cmd% }"
  t0=$EPOCHREALTIME
  "$@"
  record "$name" "$method" "$ipc" ran "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
}

skip() { # skip STAGE METHOD IPC WHY -- COMMAND...  (recorded for the docs, not run)
  local name=$1 method=$2 ipc=$3 why=$4 cmd
  shift 5
  cmd=$(printf '%q ' "$@")
  COMMANDS+=("${cmd% }")
  echo "= ${cmd% }   # skipped: $why"
  record "$name" "$method" "$ipc" "skipped: $why" 0.0
}

epochs_for() { # the scaled-down evaluate epochs for an IPC
  if [[ -n $EPOCHS ]]; then echo "$EPOCHS"
  elif (($1 <= 1)); then echo "$EPOCHS_IPC1"
  elif (($1 <= 10)); then echo "$EPOCHS_IPC10"
  else echo "$EPOCHS_IPC50"; fi
}

# The beta distill uses when BETA is unset (a constant, igds_fast/config.py), from the library itself: the engine must be
# exported with exactly this float or distill refuses it.
default_beta() {
  python -c 'from igds_fast.config import StepConfig; print(repr(StepConfig().beta))'
}

# The settings of this run, as the one line that repeats it.
SETTINGS=$(printf '%q ' IGDS_DATA="$IGDS_DATA" WORK="$WORK" DOCS_DIR="$DOCS_DIR" IPCS="$IPCS" METHODS="$METHODS" \
  SEEDS="$SEEDS" SEED="$SEED" EPOCHS_IPC1="$EPOCHS_IPC1" EPOCHS_IPC10="$EPOCHS_IPC10" EPOCHS_IPC50="$EPOCHS_IPC50" \
  ${EPOCHS:+EPOCHS="$EPOCHS"} EVAL_PRECISION="$EVAL_PRECISION" STEPS="$STEPS" ${GUIDANCE_SCALE:+GUIDANCE_SCALE="$GUIDANCE_SCALE"} ${BETA:+BETA="$BETA"} \
  ${BATCH:+BATCH="$BATCH"} BACKEND="$BACKEND" ${DENOISER:+DENOISER="$DENOISER"} ${CRITICS:+CRITICS="$CRITICS"} \
  DEVICE="$DEVICE" NET="$NET" RESOLUTION="$RESOLUTION")
SETTINGS=${SETTINGS% }

MODEL_ARGS=()
[[ -n $DENOISER ]] && MODEL_ARGS+=(--denoiser "$DENOISER")
CRITIC_ARGS=()
[[ -n $CRITICS ]] && CRITIC_ARGS+=(--critics "$CRITICS")

RESULTS=()
for ipc in $IPCS; do
  batch=${BATCH:-$((ipc < 25 ? ipc : 25))}
  rows=$(((ipc - 1) / batch * batch)) # memory rows distill needs: features of all earlier chunks
  memory=$((rows > 0 ? rows : 1))
  for method in $METHODS; do
    set_dir=$WORK/sets/$method-ipc$ipc
    if [[ $method == random-real ]]; then
      stage baseline "$method" "$ipc" -- igds-fast baseline random-real --data "$DATA/train" --subset imagenette \
        --ipc "$ipc" --seed "$SEED" --out "$set_dir"
    else
      step_args=(--steps "$STEPS")
      if [[ $method == igds ]]; then
        step_args+=(--guidance igds)
        [[ -n $GUIDANCE_SCALE ]] && step_args+=(--guidance-scale "$GUIDANCE_SCALE")
        distill_args=("${MODEL_ARGS[@]}" "${CRITIC_ARGS[@]}" "${step_args[@]}")
        [[ -n $BETA ]] && distill_args+=(--beta "$BETA")
        export_args=("${distill_args[@]}" --beta "${BETA:-$(default_beta "$ipc")}")
      else
        step_args+=(--guidance off)
        distill_args=("${MODEL_ARGS[@]}" "${step_args[@]}")
        export_args=("${distill_args[@]}")
      fi
      engine_args=()
      if [[ $BACKEND != eager ]]; then
        engine=$WORK/engines/$method-ipc$ipc-b$batch-m$memory
        export_cmd=(igds-fast export --backend "$BACKEND" --out "$engine" --batch-size "$batch"
          --memory-size "$memory" "${export_args[@]}")
        if [[ -f $engine/manifest.json ]]; then
          skip export "$method" "$ipc" "engine exists" -- "${export_cmd[@]}"
        else
          stage export "$method" "$ipc" -- "${export_cmd[@]}"
        fi
        engine_args=(--engines "$engine")
      fi
      stage distill "$method" "$ipc" -- igds-fast distill --out "$set_dir" --subset imagenette --ipc "$ipc" \
        --batch-size "$batch" --seed "$SEED" "${engine_args[@]}" "${distill_args[@]}" --device "$DEVICE"
    fi
    result=$WORK/results/$method-ipc$ipc-$NET-${RESOLUTION}px.json
    eval_cmd=(igds-fast evaluate --train "$set_dir" --val "$DATA/val" --net "$NET" --resolution "$RESOLUTION"
      --seeds "$SEEDS" --epochs "$(epochs_for "$ipc")" --precision "$EVAL_PRECISION" --device "$DEVICE" --out "$result")
    stage evaluate "$method" "$ipc" -- "${eval_cmd[@]}" # reuses the seeds its results (or .partial) hold
    if [[ -z $REPORT_ONLY || -f $result ]]; then RESULTS+=("$result"); fi
  done
done

report=$DOCS_DIR/results.md
readme_args=()
[[ -n $README ]] && readme_args=(--readme "$README")
stage report all 0 -- igds-fast report "${RESULTS[@]}" --out "$report" --plot "$DOCS_DIR/accuracy_vs_ipc.png" "${readme_args[@]}"

# --- docs: the report's tables between a preamble (what was scaled down) and the exact commands ---
scale_rows=$(python - "${RESULTS[@]}" <<'EOF'
import json, sys
seen = {}  # (ipc, epochs used, protocol epochs) -> the seed counts of its results (per method)
for path in sys.argv[1:]:
    r = json.load(open(path))
    seen.setdefault((r["ipc"], r["epochs"], r["epochs_protocol"]), set()).add(len(r["accuracies"]))
for (ipc, used, proto), counts in sorted(seen.items()):
    seeds = str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)} (per cell below)"
    print(f"| {ipc} | {used} | {proto} | {seeds} |")
EOF
)
# the evaluation precision of the results reported (REPORT_ONLY may report results trained in another)
eval_precisions=$(python - "${RESULTS[@]}" <<'EOF'
import json, sys
print(" / ".join(sorted({json.load(open(p)).get("precision", "fp32") for p in sys.argv[1:]})) or "fp32")
EOF
)
model="the embedded default ($(python -c 'import json; from igds_fast.models.embedded import embedded_path; print("latent DiT + its VAE + critics" if json.loads(embedded_path("embedded.json").read_text()).get("vae") else "pixel-space DiT + critics")'), igds_fast/data/MODEL_CARD.md)"
[[ -n $DENOISER ]] && model="denoiser \`$DENOISER\`${CRITICS:+, critics \`$CRITICS\`}"
engine_note="ONNX Runtime engines exported once per (method, IPC)"
[[ $BACKEND == eager ]] && engine_note="the eager backend"
{
  cat <<EOF
# Evaluation results

Made by \`benchmarks/run_results.sh\` (commands at the end; per-stage seconds in
\`$WORK/timings*.json\`, and each seed's in its results file). Imagenette, 10 classes; sets from $model, sampled with $STEPS respaced DDPM
steps on $engine_note; distill seed $SEED. **Scaled down for a CPU** from the MinimaxDiffusion
protocol (docs/evaluation.md): $NET at $RESOLUTION px instead of ConvNet-6 / ResNetAP-10 at
224 px, evaluation training in $eval_precisions (per cell: the note under the tables), and the epochs below (milestones at 2/3 and 5/6 of the epochs used):

| IPC | epochs used | protocol epochs | seeds |
|---|---|---|---|
$scale_rows

These numbers are not comparable with the papers' (published ImageWoof/ImageNette figures use
224 px, a DiT-XL/2 and the full schedule); they compare the methods with each other under one setup.
Accuracy is the final epoch's top-1 on all 3,925 real val images; in brackets the best of 10 val
readings over the run (selected on the test set, so optimistic).
EOF
  tail -n +2 "$report" # the report's tables (its own title line dropped)
  if [[ -n $NOTE ]]; then printf '\n%s\n' "$NOTE"; fi
  cat <<EOF

![accuracy vs IPC](accuracy_vs_ipc.png)

## Commands

Run from the repository root on $(uname -sm), $(getconf _NPROCESSORS_ONLN) CPU(s), $(igds-fast --version 2>/dev/null || echo igds-fast),
OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, IGDS_ORT_THREADS=${IGDS_ORT_THREADS:-unset}; started ${STARTED%%T*}. The whole run:

\`\`\`bash
$SETTINGS bash benchmarks/run_results.sh
\`\`\`

which ran these (an export skipped because its engine was already there included; an evaluate trains only the seeds its results lack):

\`\`\`bash
EOF
  printf '%s\n' "${COMMANDS[@]}"
  echo '```'
} >"$report.tmp"
mv "$report.tmp" "$report"
write_timings
echo "wrote $report, $DOCS_DIR/accuracy_vs_ipc.png and $TIMINGS_FILE"
