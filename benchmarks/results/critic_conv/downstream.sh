#!/usr/bin/env bash
# IGDS sets distilled with a candidate critic (the shipped default otherwise: embedded denoiser + VAE, default
# guidance, eager fp32 step, distill seed 0), each trained on with ConvNet-3 at 32 px, bf16, at the protocol's
# epochs, one seed per process (--only-seed, one results file) so two cores train two seeds at once. Resumable:
# distill does nothing on a finished set, evaluate trains only the seeds its results lack.
#   CRITICS=runs/critic_conv_a/critic.safetensors WORK=runs/downstream_conv bash benchmarks/results/critic_conv/downstream.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
: "${CRITICS:?set CRITICS to the critic file}" "${WORK:?set WORK}"
DATA=${IGDS_DATA:-../shared/data}/imagenette-64
IPCS=${IPCS:-10 1}
SEEDS=${SEEDS:-0 1 2}
mkdir -p "$WORK"
export OMP_NUM_THREADS=1
for ipc in $IPCS; do # distill every set first, then train two seeds at a time
  igds-fast distill --out "$WORK/igds-ipc$ipc" --subset imagenette --ipc "$ipc" --batch-size "$ipc" --seed 0 \
    --steps 50 --guidance igds --critics "$CRITICS" --device cpu >"$WORK/distill-ipc$ipc.log" 2>&1
done
pids=()
for ipc in $IPCS; do
  epochs=$((ipc <= 1 ? 3000 : ipc <= 10 ? 2000 : 1500))
  for s in $SEEDS; do
    igds-fast evaluate --train "$WORK/igds-ipc$ipc" --val "$DATA/val" --net convnet3 --resolution 32 --seeds 3 \
      --only-seed "$s" --epochs "$epochs" --precision bf16 --device cpu --out "$WORK/igds-ipc$ipc-convnet3-32px.json" \
      >"$WORK/eval-ipc$ipc-seed$s.log" 2>&1 &
    pids+=($!)
    if ((${#pids[@]} == 2)); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
wait
