#!/usr/bin/env bash
# Train the first embedded model's pixel recipe (igds_fast/data/MODEL_CARD.md, "pixel v1": the shipped
# model is its latent successor, whose training data would travel as latents, which the pack does not
# hold) on one GPU within 8 minutes: train-dit (small preset, 32 px, batch 64, lr 5e-4) then
# train-critics (width 128, depth 3, 4 heads, batch 64, lr 2e-3) on the data pack, on CUDA with bf16
# autocast and torch.compile, the training set held on the GPU. NEVER EXECUTED ON A GPU (written
# without one); the CPU dry run is tested.
#
#   bash benchmarks/gpu_train.sh [OUT_DIR]            # results in OUT_DIR (default $OUT)
#   bash benchmarks/gpu_train.sh --dry-run [OUT_DIR]  # the same commands on the CPU, a few steps
#
# Needs only what the lent GPU machine has (python3 with torch, numpy, safetensors, pillow, pyarrow,
# typer, tqdm; gcc for Triton); installs nothing; runs the working tree with PYTHONPATH set to it.
# The pack (PACK, default runs/packs/imagenette-32-train.npz, 29 MB) is made once where the data is:
#   igds-fast pack-data --data ../shared/data/imagenette-64/train --subset imagenette --resolution 32 \
#       --out runs/packs/imagenette-32-train.npz
# and carried to the GPU machine with the code as an ignored path (it is ImageNet data: never commit
# it): carry ["runs/packs/imagenette-32-train.npz"] (a VAL_PACK of the val split, ~12 MB, fits beside it).
# OUT_DIR gets at most 8 files, none over 16 MB: train.log (environment, both commands' output,
# times), summary.json (last log rows, the critic's metrics, sizes, how to reassemble), and
# weights/SHA256SUMS with the weights in parts (split -b 15M).
# Environment: PYTHON (python3), PACK, VAL_PACK (held-out pack for the critics; default: every 10th
# training image), DIT_STEPS (2000), CRITIC_STEPS (2500), DIT_LIMIT (300 s), CRITIC_LIMIT (150 s),
# WORK (training folders with resumable state, default runs/gpu_train; not copied to OUT_DIR).
set -u

DRY=0
OUT_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
OUT=${OUT_ARG:-${OUT:-$PWD/runs/gpu_train_out}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/train.log"
: >"$LOG"
PACK=${PACK:-runs/packs/imagenette-32-train.npz}
WORK=${WORK:-runs/gpu_train}
DIT_LIMIT=${DIT_LIMIT:-300}
CRITIC_LIMIT=${CRITIC_LIMIT:-150}
if [ "$DRY" = 1 ]; then
  DEV=cpu DIT_STEPS=${DIT_STEPS:-3} CRITIC_STEPS=${CRITIC_STEPS:-2} EVAL=20 CKPT=2
else
  DEV=cuda DIT_STEPS=${DIT_STEPS:-2000} CRITIC_STEPS=${CRITIC_STEPS:-2500} EVAL=500 CKPT=250
fi
CLI=("$PY" -m igds_fast.cli)
start=$(date +%s)
echo "== igds-fast GPU training ($([ "$DRY" = 1 ] && echo "DRY RUN on the CPU" || echo "$DEV")), results in $OUT" | tee -a "$LOG"
echo "limits: train-dit ${DIT_LIMIT}s, train-critics ${CRITIC_LIMIT}s (+5 s grace each): under 8 min" | tee -a "$LOG"

fail() { echo "FAILED: $1" | tee -a "$LOG" | tee "$OUT/FAILED.txt" >&2; exit 1; }
[ -f "$PACK" ] || fail "no data pack at $PACK (make it with igds-fast pack-data, see --help)"
if ! err=$("$PY" -c "import igds_fast.cli, igds_fast.training.train_dit" 2>&1); then
  fail "the CLI does not import with $PY: $(tail -n 1 <<<"$err") (nothing is installed by this script)"
fi
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  fail "no CUDA device visible to torch (use --dry-run on a CPU)"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
echo "pack $PACK ($(du -h "$PACK" | cut -f1)); gcc $(command -v gcc || echo 'not found: Triton needs a C compiler')" | tee -a "$LOG"
mkdir -p "$WORK"

# timed NAME LIMIT CMD...: under its own timeout, its output appended to train.log; a cut run keeps
# its last checkpoint (both trainers resume)
timed() {
  local name=$1 limit=$2
  shift 2
  echo "-- $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0 tmp
  t0=$(date +%s)
  tmp=$(mktemp)
  timeout -k 5 "$limit" "$@" >"$tmp" 2>&1
  local rc=$?
  cat "$tmp" >>"$LOG"
  echo "$name: exit $rc after $(($(date +%s) - t0)) s" | tee -a "$LOG"
  [ "$rc" = 124 ] && echo "   stopped at its limit: the last checkpoint is kept (rerun to resume)" | tee -a "$LOG"
  tail -n 2 "$tmp" | sed 's/^/   /'
  rm -f "$tmp"
  return "$rc"
}

timed train-dit "$DIT_LIMIT" "${CLI[@]}" train-dit --data "$PACK" --subset imagenette --out "$WORK/dit" \
  --resolution 32 --config small --steps "$DIT_STEPS" --batch-size 64 --lr 5e-4 --device "$DEV" \
  --ckpt-every "$CKPT"
rc_dit=$?
[ -f "$WORK/dit/denoiser.safetensors" ] || fail "train-dit wrote no weights (exit $rc_dit, see $LOG)"
VAL=()
[ -n "${VAL_PACK:-}" ] && VAL=(--val "$VAL_PACK")
timed train-critics "$CRITIC_LIMIT" "${CLI[@]}" train-critics --data "$PACK" "${VAL[@]}" --subset imagenette \
  --denoiser "$WORK/dit/denoiser.safetensors" --out "$WORK/critic" --steps "$CRITIC_STEPS" --batch-size 64 \
  --lr 2e-3 --width 128 --depth 3 --heads 4 --eval-images "$EVAL" --device "$DEV" --overwrite
rc_critic=$?

# The weights, in files of at most 16 MB (split -b 15M; reassemble with cat, check with sha256sum -c).
mkdir -p "$OUT/weights"
: >"$OUT/weights/SHA256SUMS"
for f in "$WORK/dit/denoiser.safetensors" "$WORK/critic/critic.safetensors"; do
  [ -f "$f" ] || continue
  name=$(basename "$f")
  (cd "$(dirname "$f")" && sha256sum "$name") >>"$OUT/weights/SHA256SUMS"
  split -b 15M -d -a 2 "$f" "$OUT/weights/$name.part-"
done

echo "== summary ($(($(date +%s) - start)) s; train-dit exit $rc_dit, train-critics exit $rc_critic)" | tee -a "$LOG"
"$PY" - "$OUT" "$WORK" "$rc_dit" "$rc_critic" <<'EOF' | tee -a "$LOG"
import json, pathlib, sys
out, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
log = work / "dit" / "log.jsonl"
rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
summary = {"exit": {"train-dit": int(sys.argv[3]), "train-critics": int(sys.argv[4])},
           "dit_last": rows[-1] if rows else None, "dit_log_tail": rows[-20:],
           "reassemble": ["cat denoiser.safetensors.part-* > denoiser.safetensors",
                          "cat critic.safetensors.part-* > critic.safetensors", "sha256sum -c SHA256SUMS"]}
if rows:
    r = rows[-1]
    print(f"train-dit: step {r['step']}, loss {r['loss']:.4f}, {r['img_s']:.0f} img/s (mean since start, incl. compile)")
crit = work / "critic" / "critic.json"
if crit.exists():
    summary["critic_json"] = json.loads(crit.read_text())
    m = summary["critic_json"]["metrics"]
    summary["critic"] = {k: m[k] for k in ("train_seconds", "steps")} | {"trained": {k: m["trained"][k] for k in ("acc", "ba_bound_nats")}}
    print(f"train-critics: {m['steps']} steps in {m['train_seconds']:.0f} s, held-out acc {m['trained']['acc']:.3f}, "
          f"I(X;Y) bound {m['trained']['ba_bound_nats']:.3f} nats")
parts = sorted((out / "weights").glob("*.part-*"))
summary["parts"] = {p.name: p.stat().st_size for p in parts}
print("weights:", ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in parts))
assert all(p.stat().st_size <= 16 * 2**20 for p in parts)
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
files = [p for p in out.rglob("*") if p.is_file()]
print(f"{len(files)} files in {out}" + ("" if len(files) <= 8 else ": MORE THAN 8, some will not come back"))
EOF
