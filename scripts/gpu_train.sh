#!/usr/bin/env bash
# Train one prior on a lent GPU machine (the `device` tool) inside one call, and leave what must
# come back in $OUT. Nothing here runs on a developer machine except through that tool.
#
# Before (here, once per dataset; the originals are too big to travel, the pack is lossless):
#   echo /.pack/ >> .git/info/exclude
#   python -m medrecon train pack --data DATA/chest_xray_kermany --out .pack/chest_xray_kermany
# Call (one prior per call: both packs together exceed the 64 MiB that travels):
#   run(command="scripts/gpu_train.sh chest_xray 8", carry=[".pack/chest_xray_kermany"])
#   add "runs/chest_xray_gpu" to carry to resume a slim checkpoint put there by gpu_fetch.sh
#   (fits for size S; an M-size slim checkpoint plus the X-ray pack is over the limit).
# After (here): scripts/gpu_fetch.sh FILES_AT chest_xray, then export, eval (docs/priors.md).
#
# Usage: scripts/gpu_train.sh PRIOR MINUTES [SIZE]
#   PRIOR   chest_xray | brain_mri
#   MINUTES wall-clock cap of the training (keep the whole call under the 10-minute limit)
#   SIZE    S (shipped: channel base 2048, max 128) | M (4096 / 256; docs/priors.md) [S]
# DEVICE=cpu OUT=/tmp/o scripts/gpu_train.sh brain_mri 0.3 runs the same chain on a CPU (a smoke
# test of the script, not a way to train).
set -euo pipefail
prior=${1:?PRIOR (chest_xray or brain_mri)}
minutes=${2:?MINUTES}
size=${3:-S}
case $prior in
  chest_xray) folder=chest_xray_kermany ;;
  brain_mri) folder=brain_mri_cheng ;;
  *) echo "unknown prior $prior; expected chest_xray or brain_mri" >&2; exit 2 ;;
esac
case $size in
  S) net=(--channel-base 2048 --channel-max 128) ;;
  M) net=(--channel-base 4096 --channel-max 256) ;;
  *) echo "unknown size $size; expected S or M" >&2; exit 2 ;;
esac
out=${OUT:?OUT is unset: run this through the device tool, which sets it}
cd "$(dirname "$0")/.."
[ -d ".pack/$folder" ] || { echo "no .pack/$folder: pack it here and carry it (see the header)" >&2; exit 2; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
"$py" - "$device" <<'PY'
import sys, torch
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "no CUDA device visible"
    print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), flush=True)
PY
run=runs/${prior}_gpu
mkdir -p "$run" "$out/$prior"
# batch 32 with fp16 blocks on CUDA; resumes $run/checkpoint-latest.pt when carried
"$py" -m medrecon train run --data ".pack/$folder" --out "$run" --resolution 128 --fold 0 \
  --folds 5 --kimg 25000 --batch 32 "${net[@]}" --z-dim 256 --w-dim 256 --mapping-layers 2 \
  --device "$device" --snapshot-minutes 2 --max-minutes "$minutes" 2>&1 | tee "$out/train_$prior.log" \
  | tail -n 20
"$py" -m medrecon train slim "$run/checkpoint-latest.pt" -o "$run/checkpoint-slim.pt" --overwrite
# at most 16 MiB a file comes back: split what is bigger (gpu_fetch.sh joins the parts)
split -b 15m -d "$run/checkpoint-slim.pt" "$out/$prior/checkpoint-slim.pt.part-"
cp "$run/run.json" "$run/folds.json" "$run/log.jsonl" "$out/$prior/"
last=$(ls "$run"/samples-*.png | sort | tail -n 1)
cp "$last" "$out/$prior/samples-latest.png"
ls -la "$out/$prior"
