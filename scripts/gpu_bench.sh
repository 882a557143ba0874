#!/usr/bin/env bash
# The GPU checks of the volume issue on a lent GPU machine (the `device` tool), in one call of
# at most 10 minutes; what must come back is left in $OUT/results (the reports of
# bench/bench_volume.py and bench/bench_nvidia.py) and $OUT/*.log.
#   1. the 150-slice Colin27 volume with the default (target: <= 2 minutes on one H100/H200);
#   2. the generator step against NVIDIA's stylegan2-ada-pytorch on CUDA (their custom ops,
#      built at run time with nvcc + ninja; their reference ops when that build fails), when
#      .nvidia holds their code;
#   3. the same volume slice by slice (the 4-member ensemble), if the time left allows.
# Each stage has its own time cap, so a slow one leaves the others' results.
# Before (here): scripts/gpu_prepare.sh (wheels, the volume, NVIDIA's code; all git-ignored).
# Call:  run(command="scripts/gpu_bench.sh", carry=[".whl", ".data", ".nvidia"], timeout_s=600)
# After (here): copy FILES_AT/results/* into bench/results, check and commit them.
# DEVICE=cpu SLICES=4 OUT=/tmp/o PYTHON=.venv/bin/python scripts/gpu_bench.sh runs the same chain
# on a CPU (a smoke test of the script, not a measurement).
set -uo pipefail
out=${OUT:?OUT is unset: run this through the device tool, which sets it}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
slices=${SLICES:-150}
machine=${MACHINE:-nvidia-h200}
threads=${THREADS:-4}
export PYTHONUNBUFFERED=1
if [ "$device" = cuda ] && [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "installing .whl failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$out/results"
{ date -u; nvidia-smi 2>/dev/null | head -15
  "$py" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'monai', monai.__version__)"
  git log -1 --format='medrecon %H %s' 2>/dev/null; } > "$out/env.log" 2>&1
cat "$out/env.log"
[ -f .data/real_scans/colin27_ch2.nii.gz ] || { echo "no .data/real_scans: run scripts/gpu_prepare.sh and carry .data" >&2; exit 2; }
volume() {  # MODE SECONDS
  timeout "$2" "$py" bench/bench_volume.py --data .data/real_scans --slices "$slices" --modes "$1" \
    --device "$device" --threads "$threads" --machine "$machine" --out "$out/results" \
    > "$out/volume_$1.log" 2>&1
  echo "volume $1: rc $? ($(grep -E ' s, PSNR|rror' "$out/volume_$1.log" | tail -n 1 | cut -c1-160))"
}
start=$SECONDS
volume default "${DEFAULT_CAP:-240}"
if [ -f .nvidia/training/networks.py ]; then
  nv() {  # OPS SECONDS
    timeout "$2" "$py" bench/bench_nvidia.py --nvidia-repo .nvidia --device "$device" \
      --nvidia-ops "$1" --batch-sizes 1,8 --repeats "${REPEATS:-50}" --warmup 5 \
      --threads "$threads" --machine "$machine" --out "$out/results" > "$out/nvidia_$1.log" 2>&1
  }
  ops=${NV_OPS:-$([ "$device" = cuda ] && echo custom || echo ref)}
  if nv "$ops" "${NV_CAP:-150}"; then echo "nvidia ($ops ops): done"
  elif [ "$ops" = custom ]; then nv ref 90 && echo "nvidia (ref ops, custom failed): done" || echo "nvidia: failed"
  else echo "nvidia: failed (see nvidia_$ops.log)"; fi
else
  echo "no .nvidia: the generator comparison is skipped (scripts/gpu_prepare.sh with NVIDIA_REPO)"
fi
left=$(( ${BUDGET:-570} - (SECONDS - start) ))
if [ "$left" -gt 60 ]; then volume slice-by-slice "$left"; else echo "slice-by-slice: no time left"; fi
ls -la "$out/results"
