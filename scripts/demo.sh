#!/usr/bin/env bash
# The README's demo command: install what is needed, prepare cooking-stackexchange, train the demo model
# (UniDEC, one Ray Train worker, 2 epochs), score its predictions with the evaluate job and export it as a
# 2-shard serving bundle (bundles/demo, for `serve run serve.app:app bundle=bundles/demo`).
# Extra arguments go to the training job, e.g. `bash scripts/demo.sh --set train.num_workers=2`.
# Rerunning resumes the run in runs/demo (a finished run is not retrained; delete runs/demo to start over).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-venv.sh
source scripts/env.sh
python jobs/prepare.py --config configs/demo.yaml
python jobs/train.py --config configs/demo.yaml "$@"
python jobs/evaluate.py --config configs/demo.yaml --predictions runs/demo/predictions.npz \
  --out runs/demo/evaluate-metrics.json
python jobs/export.py --run runs/demo --shards 2 --out bundles/demo
echo "demo done: runs/demo (metrics.json, history.jsonl, training.png, tensorboard/, predictions.npz), bundles/demo"
