#!/usr/bin/env bash
# IPC 1: the default vs the default + --spread-guard, eager fp32 on this CPU, 3 seeds at 3000 epochs.
set -e
cd /work/main; . .venv/bin/activate
export OMP_NUM_THREADS=1
for name in default spread; do
  extra=(); [[ $name == spread ]] && extra=(--spread-guard)
  igds-fast distill --out runs/spread_ipc1/sets/$name --subset imagenette --ipc 1 --seed 0 --steps 50 --guidance igds --backend eager --device cpu --threads 1 "${extra[@]}" > runs/spread_ipc1/distill_$name.log 2>&1
done
for seed in 0 1 2; do
  for name in default spread; do
    igds-fast evaluate --train runs/spread_ipc1/sets/$name --val ../shared/data/imagenette-64/val --net convnet3 --resolution 32 --seeds 3 --only-seed $seed --epochs 3000 --precision fp32 --device cpu --out runs/spread_ipc1/results/$name-ipc1-convnet3-32px.json > runs/spread_ipc1/eval_${name}_$seed.log 2>&1
  done
done
echo done
