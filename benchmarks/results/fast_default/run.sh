#!/usr/bin/env bash
# Downstream accuracy of the shipped step (25 DDPM steps, no clip guard, batches across classes): ConvNet-3 at
# 32 px on the embedded default's sets at IPC 1, 10 and 50, evaluated as docs/results.md's rows (protocol
# epochs, bf16 evaluation training). Resumable: distill finishes a set, evaluate trains only the seeds its
# results file lacks. Run from the repository root:
#   WORK=runs/fast_default SEEDS_IPC50=1 bash benchmarks/results/fast_default/run.sh
set -euo pipefail
WORK=${WORK:-runs/fast_default}
DATA=${IGDS_DATA:-../shared/data}/imagenette-64
IPCS=${IPCS:-10 1 50}
mkdir -p "$WORK/sets" "$WORK/results"
for ipc in $IPCS; do
  case $ipc in 1) epochs=3000 seeds=3 ;; 10) epochs=2000 seeds=3 ;; 50) epochs=1500 seeds=${SEEDS_IPC50:-3} ;; esac
  set_dir=$WORK/sets/igds-ipc$ipc
  igds-fast distill --out "$set_dir" --subset imagenette --ipc "$ipc" --seed 0 --device cpu --log-json "$WORK/distill-ipc$ipc.jsonl"
  igds-fast evaluate --train "$set_dir" --val "$DATA/val" --net convnet3 --resolution 32 --seeds "$seeds" \
    --epochs "$epochs" --precision bf16 --device cpu --out "$WORK/results/igds-ipc$ipc-convnet3-32px.json"
done
