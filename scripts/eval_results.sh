#!/usr/bin/env bash
# Reproduce docs/results/: held-out (fold 0) evaluations of the shipped priors against the
# classical baselines, with the solvers' default settings. Usage:
#   scripts/eval_results.sh /path/to/data [N_IMAGES] [DEVICE]
# where /path/to/data holds chest_xray_kermany/ and brain_mri_cheng/ (see docs/priors.md).
# Two evaluations run at a time, one torch thread each (OMP_NUM_THREADS=1).
set -euo pipefail
data=${1:?usage: scripts/eval_results.sh DATA_DIR [N_IMAGES] [DEVICE]}
n=${2:-8}
device=${3:-cpu}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
run() {  # prior dataset task out methods [task options...]
  local prior=$1 dataset=$2 task=$3 out=$4 methods=$5; shift 5
  python -m medrecon eval --prior "$prior" --task "$task" --methods "$methods" \
    --images "$data/$dataset" --folds "docs/results/${prior}_fold0_held_out.txt" --fold 0 \
    --limit "$n" --device "$device" --seed 0 --out "docs/results/$out" --overwrite "$@"
}
run chest_xray chest_xray_kermany sr chest_xray_sr4 bicubic,lanczos,bicubic-bp,lanczos-bp,csgm-bp,brgm-bp,iagan-bp --scale 4 &
run brain_mri brain_mri_cheng mri brain_mri_mri4 zero_filled,tv,csgm-bp,brgm-bp,iagan-bp --acceleration 4 &
wait
run brain_mri brain_mri_cheng inpaint brain_mri_inpaint_box biharmonic,tv,csgm-bp,iagan-bp --mask-type center_box &
run chest_xray chest_xray_kermany deblur chest_xray_deblur9 wiener,tv,csgm,iagan --kernel uniform --size 9 --noise-sigma 0.0784 &
wait
