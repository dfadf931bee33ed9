#!/usr/bin/env bash
# The default + --clip-guard 0.5 at IPC 1, 10 and 50: eager fp32 distill, then ConvNet-3 at 32 px at the
# protocol's epochs (3000 / 2000 / 1500), $PRECISION (fp32; bf16 where the CPU has bf16 units), 3 seeds;
# two jobs at a time on the 2 cores, one thread each.
# Resumable: a finished set is left alone and evaluate trains only the seeds its results lack.
#   bash benchmarks/results/clip_guard/run.sh [WORK [JOB...]]   (WORK: runs/clip_guard; JOB: "distill IPC" or
#   "eval IPC SEED", default all of them, run in order two at a time; an eval waits for its set)
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 WORK=${1:-runs/clip_guard} CLIP=${CLIP:-0.5} PRECISION=${PRECISION:-fp32}
mkdir -p "$WORK/logs" "$WORK/results"
job() {  # job distill IPC | job eval IPC SEED
  local ipc=$2 set=$WORK/sets/igds-ipc$2 epochs
  if [[ $1 == distill ]]; then
    igds-fast distill --out "$set" --subset imagenette --ipc "$ipc" --batch-size $((ipc < 25 ? ipc : 25)) --seed 0 \
      --steps 50 --guidance igds --clip-guard "$CLIP" --backend eager --device cpu --threads 1 > "$WORK/logs/distill-$ipc.log" 2>&1 \
      && touch "$set.done"
  else
    until [[ -e $set.done ]]; do sleep 20; done
    epochs=$((ipc == 1 ? 3000 : ipc <= 10 ? 2000 : 1500))
    igds-fast evaluate --train "$set" --val ../shared/data/imagenette-64/val --net convnet3 --resolution 32 --seeds 3 \
      --only-seed "$3" --epochs "$epochs" --precision "$PRECISION" --device cpu \
      --out "$WORK/results/igds-clip-ipc$ipc-convnet3-32px.json" > "$WORK/logs/eval-$ipc-$3.log" 2>&1
  fi
}
export -f job
jobs=("${@:2}")
[[ ${#jobs[@]} -gt 0 ]] || jobs=("distill 50" "distill 10" "distill 1" "eval 1 0" "eval 1 1" "eval 1 2" "eval 10 0" "eval 10 1"
  "eval 10 2" "eval 50 0" "eval 50 1" "eval 50 2")
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c 'job {}'
echo done
