#!/usr/bin/env bash
# On the offline GPU host: install .gpu-host/deps (from pack.sh) into $XMC_SITE (default /tmp/xmc-site),
# outside the checkout, so a re-sent checkout leaves it in place. Checks that everything imports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
site=${XMC_SITE:-/tmp/xmc-site}
python=${PYTHON:-python3}
mkdir -p "$site"
tar xJf .gpu-host/deps/ray.tar.xz -C "$site"
"$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" .gpu-host/deps/*.whl
PYTHONPATH="$site" "$python" -c 'import ray, ray.train, ray.tune, faiss, torch, transformers
print("ray", ray.__version__, "faiss", faiss.__version__, "torch", torch.__version__, "transformers",
      transformers.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
