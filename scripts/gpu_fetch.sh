#!/usr/bin/env bash
# Bring a scripts/gpu_train.sh result home: join the checkpoint parts into
# runs/<prior>_gpu/checkpoint-latest.pt (slim: resumable, exportable) with its run records.
# Usage: scripts/gpu_fetch.sh FILES_AT PRIOR     (FILES_AT: the folder the device tool named)
# Then:  medrecon train export runs/<prior>_gpu/checkpoint-latest.pt \
#            --bundle bundles/<prior>_stylegan2 --name <prior> --overwrite
set -euo pipefail
src=${1:?FILES_AT folder}/${2:?PRIOR}
cd "$(dirname "$0")/.."
run=runs/${2}_gpu
[ -d "$src" ] || { echo "no $src: was the call's output fetched?" >&2; exit 2; }
mkdir -p "$run"
cat "$src"/checkpoint-slim.pt.part-* > "$run/checkpoint-latest.pt.tmp"
mv "$run/checkpoint-latest.pt.tmp" "$run/checkpoint-latest.pt"
cp "$src"/run.json "$src"/folds.json "$src"/log.jsonl "$src"/samples-latest.png "$run/"
python - "$run/checkpoint-latest.pt" <<'PY'
import sys
from medrecon.training.loop import read_checkpoint
s = read_checkpoint(sys.argv[1])
print(f"{sys.argv[1]}: step {s['step']}, {s['images_seen'] / 1000:.1f} kimg, "
      f"{s['train_seconds'] / 60:.1f} min of training")
PY
