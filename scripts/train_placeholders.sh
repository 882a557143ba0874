#!/usr/bin/env bash
# Train the two shipped priors (fold 0 of 5 held out) in the background, one CPU thread each.
# Resumable: re-run the same command to continue from runs/<name>/checkpoint-latest.pt.
# Usage: scripts/train_placeholders.sh DATA_ROOT MAX_MINUTES [extra `medrecon train run` options]
# On a GPU machine drop --threads/--device and raise --batch (32) and the network size.
set -euo pipefail
data=${1:?DATA_ROOT (holding chest_xray_kermany/ and brain_mri_cheng/)}
minutes=${2:?MAX_MINUTES}
shift 2
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
common=(--resolution 128 --fold 0 --folds 5 --kimg 1000 --batch 16 --channel-base 2048
        --channel-max 128 --z-dim 256 --w-dim 256 --mapping-layers 2 --snapshot-minutes 4
        --max-minutes "$minutes" --device cpu --threads 1 "$@")
mkdir -p runs
for name in chest_xray:chest_xray_kermany brain_mri:brain_mri_cheng; do
  prior=${name%%:*}; folder=${name#*:}
  PYTHONPATH=. nohup "$py" -c 'import sys; from medrecon.training.cli import train; train(sys.argv[1:])' \
    run --data "$data/$folder" --out "runs/$prior" --scheme auto "${common[@]}" \
    > "runs/$prior.log" 2>&1 &
  echo "$prior: pid $! -> runs/$prior.log"
done
