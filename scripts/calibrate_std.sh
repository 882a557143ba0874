#!/usr/bin/env bash
# Fit the std-map calibration of the shipped priors (scripts/calibrate_std.py) for the regimes
# of docs/results and docs/results/regimes, on validation images of the held-out fold, and
# write the entries into bundles/<prior>_stylegan2/models/prior.json. Two fits run at a time,
# one torch thread each. Reports: docs/results/calibration/<name>/.
#   scripts/calibrate_std.sh /path/to/data
set -euo pipefail
data=${1:?usage: scripts/calibrate_std.sh DATA_DIR}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
fit() {  # prior dataset task name regime [--task-option K=V ...] [--method M]
  local prior=$1 dataset=$2 task=$3 name=$4 regime=$5; shift 5
  python scripts/calibrate_std.py --overwrite --prior "$prior" --task "$task" --data "$data/$dataset" \
    --held-out "docs/results/${prior}_fold0_held_out.txt" --regime "$regime" \
    --out "docs/results/calibration/$name" \
    --write-prior "bundles/${prior}_stylegan2/models/prior.json" "$@" > /dev/null
}
C=(chest_xray chest_xray_kermany)
B=(brain_mri brain_mri_cheng)
fit "${C[@]}" sr chest_xray_sr4 "SR x4, bicubic" --task-option scale=4 &
fit "${B[@]}" sr brain_mri_sr8_box "SR x8, box (the demo)" --task-option scale=8 --task-option kernel=box &
wait
fit "${C[@]}" sr chest_xray_sr8 "SR x8, bicubic" --task-option scale=8 &
fit "${B[@]}" sr brain_mri_sr8 "SR x8, bicubic" --task-option scale=8 &
wait
fit "${C[@]}" sr chest_xray_sr16 "SR x16, bicubic" --task-option scale=16 &
fit "${B[@]}" sr brain_mri_sr16 "SR x16, bicubic" --task-option scale=16 &
wait
fit "${B[@]}" mri brain_mri_mri4 "MRI 4x, random lines" --task-option acceleration=4 &
fit "${B[@]}" mri brain_mri_mri8 "MRI 8x, random lines" --task-option acceleration=8 --task-option mask_type=random &
wait
fit "${B[@]}" inpaint brain_mri_inpaint_box "centred box, 1/2 of the side" --task-option mask_type=center_box &
fit "${B[@]}" inpaint brain_mri_inpaint_half "half image" --task-option mask_type=half &
wait
fit "${B[@]}" inpaint brain_mri_inpaint_free_form "free-form strokes" --task-option mask_type=free_form &
fit "${B[@]}" inpaint brain_mri_inpaint_box25 "centred box, 1/4 of the side" \
  --task-option mask_type=center_box --task-option box_fraction=0.25 &
wait
fit "${B[@]}" inpaint brain_mri_inpaint_box75 "centred box, 3/4 of the side" \
  --task-option mask_type=center_box --task-option box_fraction=0.75 &
fit "${C[@]}" sr chest_xray_sr4_brgm "SR x4, bicubic" --task-option scale=4 --method brgm_variational-bp &
wait
python scripts/calibrate_std.py --report docs/results/calibration
