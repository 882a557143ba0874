#!/usr/bin/env bash
# Where a generative prior should earn its keep: extreme SR (x8, x16), 8x MRI (random and
# equispaced lines), large and irregular holes, each against the classical baselines, and the
# ablation with an untrained StyleGAN2 of the same architecture (same method, steps, settings).
# Held-out fold-0 images, default solver settings. Writes docs/results/regimes/<name>/.
#   scripts/eval_regimes.sh /path/to/data [N_IMAGES] [DEVICE] [GROUP]
# GROUP: all (default), sr, mri, inpaint, boxes, ablation, calibration. Two evaluations run at a time, one torch
# thread each (OMP_NUM_THREADS=1).
set -euo pipefail
data=${1:?usage: scripts/eval_regimes.sh DATA_DIR [N_IMAGES] [DEVICE] [GROUP]}
n=${2:-8}
device=${3:-cpu}
group=${4:-all}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
out=docs/results/regimes
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {  # prior_or_path fold_prior dataset task name methods [task options...]
  local prior=$1 folds=$2 dataset=$3 task=$4 name=$5 methods=$6; shift 6
  python -m medrecon eval --prior "$prior" --task "$task" --methods "$methods" \
    --images "$data/$dataset" --folds "docs/results/${folds}_fold0_held_out.txt" --fold 0 \
    --limit "$n" --device "$device" --seed 0 --out "$out/$name" --overwrite --no-lpips "$@"
}
SR=bicubic,lanczos,bicubic-bp,lanczos-bp,iagan-bp
if [[ $group == all || $group == sr ]]; then
  run chest_xray chest_xray chest_xray_kermany sr chest_xray_sr8 $SR --scale 8 &
  run brain_mri brain_mri brain_mri_cheng sr brain_mri_sr8 $SR --scale 8 &
  wait
  run chest_xray chest_xray chest_xray_kermany sr chest_xray_sr16 $SR --scale 16 &
  run brain_mri brain_mri brain_mri_cheng sr brain_mri_sr16 $SR --scale 16 &
  wait
fi
if [[ $group == all || $group == mri ]]; then
  run brain_mri brain_mri brain_mri_cheng mri brain_mri_mri8_random zero_filled,tv,l1_wavelet,iagan-bp \
    --acceleration 8 --mask-type random &
  run brain_mri brain_mri brain_mri_cheng mri brain_mri_mri8_equispaced zero_filled,tv,l1_wavelet,iagan-bp \
    --acceleration 8 --mask-type equispaced &
  wait
fi
if [[ $group == all || $group == inpaint ]]; then
  run brain_mri brain_mri brain_mri_cheng inpaint brain_mri_inpaint_free_form biharmonic,tv,iagan-bp \
    --mask-type free_form &
  run brain_mri brain_mri brain_mri_cheng inpaint brain_mri_inpaint_half biharmonic,tv,iagan-bp \
    --mask-type half &
  wait
fi
if [[ $group == all || $group == boxes ]]; then
  # centred boxes of 1/4 and 3/4 of the side (1/2 is docs/results/brain_mri_inpaint_box)
  run brain_mri brain_mri brain_mri_cheng inpaint brain_mri_inpaint_box25 biharmonic,tv,iagan-bp \
    --mask-type center_box --option box_fraction=0.25 &
  run brain_mri brain_mri brain_mri_cheng inpaint brain_mri_inpaint_box75 biharmonic,tv,iagan-bp \
    --mask-type center_box --option box_fraction=0.75 &
  wait
fi
if [[ $group == all || $group == ablation ]]; then
  # the same architecture with seeded random weights: a deep-image-prior baseline
  python -m medrecon priors untrained chest_xray -o "$tmp/chest_xray_untrained" --seed 0
  python -m medrecon priors untrained brain_mri -o "$tmp/brain_mri_untrained" --seed 0
  run "$tmp/chest_xray_untrained" chest_xray chest_xray_kermany sr ablation_chest_xray_sr8 iagan-bp --scale 8 &
  run "$tmp/brain_mri_untrained" brain_mri brain_mri_cheng mri ablation_brain_mri_mri8_random iagan-bp \
    --acceleration 8 --mask-type random &
  wait
  run "$tmp/brain_mri_untrained" brain_mri brain_mri_cheng inpaint ablation_brain_mri_inpaint_half iagan-bp \
    --mask-type half &
  run "$tmp/chest_xray_untrained" chest_xray chest_xray_kermany sr ablation_chest_xray_sr4 iagan-bp --scale 4 &
  wait
fi
if [[ $group == all || $group == calibration ]]; then
  # the std maps' calibration on the test images (calibration.csv; figure:
  # scripts/plot_calibration.py); the fits are scripts/calibrate_std.sh's, on validation images
  run chest_xray chest_xray chest_xray_kermany sr chest_xray_sr4_calibration \
    iagan-bp,brgm_variational-bp --scale 4 --grid-images 0 &
  run brain_mri brain_mri brain_mri_cheng inpaint brain_mri_inpaint_half_calibration \
    iagan-bp,brgm_variational-bp --mask-type half --grid-images 0 &
  wait
  run brain_mri brain_mri brain_mri_cheng sr brain_mri_sr8_calibration iagan-bp --scale 8 --grid-images 0 &
  run brain_mri brain_mri brain_mri_cheng mri brain_mri_mri8_calibration iagan-bp \
    --acceleration 8 --mask-type random --grid-images 0 &
  wait
fi
