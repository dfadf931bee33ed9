#!/usr/bin/env bash
# Does the recipe and the default guidance transfer to another dataset? CIFAR-10 at 32 px, class folders
# named by name (airplane/, ...): the embedded v2 recipe, shortened (autoencoder 1000 steps, DiT 1500,
# critics 1000), then IPC 10 with guidance off, the default IGDS and it without the clip guard, a
# random-real reference, and the independent judge on each. Checks: no near-constant image (distill's manifest), and the judge's rows.
# Resumable stage by stage (each trainer resumes; distill and baseline finish or skip).
#   bash benchmarks/cifar10_transfer.sh [OUT]          # about an hour on one CPU core (docs/experiments/transfer_cifar10.md)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-runs/cifar10_transfer}
D=${IGDS_DATA:-../shared/data}/cifar10-32
export OMP_NUM_THREADS=${THREADS:-1}
CL=$(ls "$D/train" | paste -sd,)
python scripts/train_autoencoder.py --data "$D/train" --val "$D/val" --out "$OUT/ae" --resolution 32 --steps 1000 \
  --bf16 --threads "$OMP_NUM_THREADS" --no-progress --final-eval-images 1000
# The critic: the shipped recipe (--shift 1 --t-power 2); CRITIC_AUG="" the earlier one the first run used
DATA=$D RESOLUTION=32 CLASSES=$CL bash scripts/train_embedded_v2.sh "$OUT/ae/vae" "$OUT/v2" 1500 1000
M=(--denoiser "$OUT/v2/dit/denoiser.safetensors" --vae "$OUT/ae/vae" --classes "$CL" --ipc 10 --batch-size 10 --no-progress)
igds-fast distill "${M[@]}" --guidance off --out "$OUT/sets/off"
igds-fast distill "${M[@]}" --critics "$OUT/v2/critic/critic.safetensors" --guidance igds --out "$OUT/sets/igds"
# the default before the clip guard (2026-12-04), same noise: the paired saturation difference
igds-fast distill "${M[@]}" --critics "$OUT/v2/critic/critic.safetensors" --guidance igds --clip-guard 0 \
  --out "$OUT/sets/igds-noclip"
igds-fast baseline random-real --data "$D/train" --classes "$CL" --ipc 10 --out "$OUT/sets/random-real"
mkdir -p "$OUT/judge"
for s in off igds igds-noclip random-real; do
  igds-fast quality --samples "$OUT/sets/$s" --real-train "$D/train" --real-val "$D/val" --json "$OUT/judge/$s.json" \
    --cache-dir "$OUT/judge_cache"
done
