#!/usr/bin/env bash
# On the offline GPU host, after install.sh: benchmarks/quality.py on the packed dataset with the packed
# encoder, on the GPU. Arguments go to quality.py, e.g. --recipes unidec --set train.epochs=5.
# Writes quality.json, the log and the run's metrics.json, history.jsonl and training.png to $OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
site=${XMC_SITE:-/tmp/xmc-site}
python=${PYTHON:-python3}
out=${OUT:-.gpu-host/out}
mkdir -p "$out"
data=$PWD/.gpu-host/data
dataset=$(cat "$data/dataset")
export PYTHONPATH="$site:$PWD/platform" PYTHONUNBUFFERED=1 XMC_RAY_DASHBOARD=0 PATH="$site/bin:$PATH"
source scripts/env.sh
"$python" - "$data/model" <<'PY' || exit 1
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
model = Path(sys.argv[1])
if not (model / "model.safetensors").exists():
    weights = load_file(str(model / "model.fp16.safetensors"))
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              str(model / "model.safetensors"))
PY
started=$(date +%s)
"$python" benchmarks/quality.py --datasets "$dataset" --baselines --set train.use_gpu=true \
  --set encoder.model="$data/model" --set dataset.prepared="$data/prepared" "$@" --out "$out/quality.json" 2>&1 \
  | grep --line-buffered -v "Checkpoint successfully\|Reporting training result\|PlacementGroupCleaner" \
  | tee "$out/log.txt"
status=$?
echo "exit $status after $(( $(date +%s) - started )) s"
for run in .bench/runs/quality-"$dataset"-*; do
  for file in metrics.json history.jsonl training.png; do
    [ -f "$run/$file" ] && cp "$run/$file" "$out/$(basename "$run")-$file"
  done
done
exit $status
