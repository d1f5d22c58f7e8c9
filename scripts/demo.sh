#!/usr/bin/env bash
# The README's demo command: install what is needed, prepare cooking-stackexchange, and run the main job
# end to end on it. Extra arguments are passed to the job as config overrides (--set key=value ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-venv.sh
source scripts/env.sh
python jobs/prepare.py --config configs/datasets/cooking-stackexchange.yaml
python jobs/evaluate.py --config configs/datasets/cooking-stackexchange.yaml --encoder default \
  --out runs/demo-zero-shot "$@"
