#!/usr/bin/env bash
# Prepare, on this machine, what scripts/gpu_bench.sh needs on a lent GPU machine (the `device`
# tool), so that the GPU checks of the volume issue run in one call:
#   .whl/               wheels of the packages the volume benchmark imports that the device
#                       image lacks (measured by an import trace of a volume reconstruction:
#                       monai, pytorch-ignite, jsonschema and its needs, lpips, nibabel,
#                       pydicom, PyWavelets), for its Python 3.12, at the versions tested here;
#   .data/real_scans/   the Colin27 volume of bench/bench_volume.py (from REAL_SCANS, a folder
#                       that holds colin27_ch2.nii.gz, else fetched by scripts/real_scans.py);
#   .nvidia/            NVIDIA's stylegan2-ada-pytorch code for bench/bench_nvidia.py, copied from
#                       the checkout NVIDIA_REPO (skipped when unset). Fetched code: never commit.
# All three are listed in .git/info/exclude (local, never committed) and must not be committed.
# Usage: [REAL_SCANS=DIR] [NVIDIA_REPO=DIR] scripts/gpu_prepare.sh
# Then:  run(command="scripts/gpu_bench.sh", carry=[".whl", ".data", ".nvidia"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
for d in .whl .data .nvidia; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
WHEELS="monai==1.6.1 pytorch-ignite==0.5.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 lpips==0.1.4 nibabel==5.4.2 pydicom==3.0.2
PyWavelets==1.9.0"
mkdir -p .whl
for w in $WHEELS; do
  # manylinux tags the device's glibc takes; pure-Python wheels match any
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$w"
done
mkdir -p .data/real_scans
if [ -n "${REAL_SCANS:-}" ]; then
  cp "$REAL_SCANS/colin27_ch2.nii.gz" .data/real_scans/
elif [ ! -f .data/real_scans/colin27_ch2.nii.gz ]; then
  "$py" scripts/real_scans.py --data .data/real_scans --fetch-only
fi
find .data/real_scans -type f ! -name colin27_ch2.nii.gz -delete  # the benchmark's volume only
if [ -n "${NVIDIA_REPO:-}" ]; then
  rm -rf .nvidia && mkdir -p .nvidia
  cp -r "$NVIDIA_REPO"/dnnlib "$NVIDIA_REPO"/torch_utils "$NVIDIA_REPO"/training "$NVIDIA_REPO"/LICENSE.txt .nvidia/
  git -C "$NVIDIA_REPO" rev-parse HEAD > .nvidia/COMMIT  # what bench_nvidia.py reports
  find .nvidia -name __pycache__ -prune -exec rm -rf {} +
fi
du -sh .whl .data .nvidia 2>/dev/null
git status --short --ignored .whl .data .nvidia | head -3
