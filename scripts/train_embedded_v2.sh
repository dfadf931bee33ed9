#!/usr/bin/env bash
# Embedded default v2 (latent, 64 px): the recipe, as run for the shipped files (see MODEL_CARD.md).
#   1. the autoencoder (our SD-layout AutoencoderKL, 64 px -> 4x16x16)   scripts/train_autoencoder.py
#   2. a class-conditional DiT, patch 2, on its latents                  igds-fast train-dit --vae
#   3. the noise-conditional critics on the same latents                 igds-fast train-critics --vae
# Resumable (each step resumes from its train_state.pt); CPU threads per job: THREADS (default 1).
# Another dataset: DATA (an ImageFolder with train/ and val/), RESOLUTION (its image side) and CLASSES
# (comma-separated class folder names) instead of SUBSET, e.g. the CIFAR-10 transfer check:
#   DATA=../shared/data/cifar10-32 RESOLUTION=32 CLASSES=airplane,automobile,... \
#     bash scripts/train_embedded_v2.sh VAE OUT 1500 1000
#   bash scripts/train_embedded_v2.sh VAE_DIR OUT [DIT_STEPS] [CRITIC_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
VAE=${1:?VAE folder from scripts/train_autoencoder.py}
OUT=${2:?output folder}
DIT_STEPS=${3:-6000}  # the shipped DiT: 6000 steps (resumed twice; see MODEL_CARD.md)
CRITIC_STEPS=${4:-5000}
# The shipped critic's augmentation (translation by one latent cell, t drawn as 1000 u^2; MODEL_CARD.md).
# CRITIC_AUG="" trains the earlier recipe (mirror only, uniform t), as the CIFAR-10 transfer check did.
read -r -a CRITIC_AUG_ARGS <<<"${CRITIC_AUG---shift 1 --t-power 2}"
PRECISION=${PRECISION:-bf16}  # autocast; what the 2026-12-01 run used on the AMX CPU
DATA=${DATA:-${IGDS_DATA:-../shared/data}/imagenette-64}
RESOLUTION=${RESOLUTION:-64}
CLASSES=${CLASSES:-}
SUBSET_ARGS=(--subset "${SUBSET:-imagenette}")
[[ -n $CLASSES ]] && SUBSET_ARGS=(--classes "$CLASSES")
export OMP_NUM_THREADS=${THREADS:-1}
mkdir -p "$OUT"
igds-fast train-dit --data "$DATA/train" "${SUBSET_ARGS[@]}" --vae "$VAE" --resolution "$RESOLUTION" --config small --patch 2 \
  --steps "$DIT_STEPS" --batch-size 64 --lr 5e-4 --ckpt-every 100 --precision "$PRECISION" --out "$OUT/dit" > "$OUT/dit.log" 2>&1 &
dit=$!
# The critics need only the denoiser's input space and class names: start once the first checkpoint exists.
while [ ! -f "$OUT/dit/denoiser.safetensors" ]; do sleep 20; kill -0 $dit 2>/dev/null || { cat "$OUT/dit.log"; exit 1; }; done
# A finished critic (critic.json written, its train_state.pt removed) is kept: train-critics refuses to overwrite it.
if [ -f "$OUT/critic/critic.json" ] && [ ! -f "$OUT/critic/train_state.pt" ]; then
  echo "critics: $OUT/critic is finished; kept"
else
  igds-fast train-critics --data "$DATA/train" --val "$DATA/val" "${SUBSET_ARGS[@]}" --denoiser "$OUT/dit/denoiser.safetensors" \
    --vae "$VAE" --steps "$CRITIC_STEPS" --batch-size 64 --lr 2e-3 --width 128 --depth 3 --heads 4 --precision "$PRECISION" \
    --out "$OUT/critic" "${CRITIC_AUG_ARGS[@]}" > "$OUT/critic.log" 2>&1
fi
wait $dit
