#!/usr/bin/env bash
# The same as run.sh for 20 DDPM steps (--steps 20) at IPC 10: is the shorter chain's downstream accuracy
# within the spread of 25 steps'? Run from the repository root:
#   WORK=runs/fast_default bash benchmarks/results/fast_default/run_steps20.sh
set -euo pipefail
WORK=${WORK:-runs/fast_default}
DATA=${IGDS_DATA:-../shared/data}/imagenette-64
set_dir=$WORK/sets/igds-steps20-ipc10
mkdir -p "$WORK/results"
igds-fast distill --out "$set_dir" --subset imagenette --ipc 10 --seed 0 --device cpu --steps 20 \
  --log-json "$WORK/distill-steps20-ipc10.jsonl"
OMP_NUM_THREADS=1 igds-fast evaluate --train "$set_dir" --val "$DATA/val" --net convnet3 --resolution 32 --seeds 3 \
  --epochs 2000 --precision bf16 --device cpu --out "$WORK/results/igds-steps20-ipc10-convnet3-32px.json"
