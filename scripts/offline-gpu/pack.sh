#!/usr/bin/env bash
# Pack what an offline GPU host needs to train here: a host whose image has PyTorch, transformers, numpy,
# pyarrow, scipy and matplotlib but no package registry and no model hub, and that accepts the checkout
# plus folders of at most 64 MiB each (the lent H100s of this workplace). Two folders, both git-ignored:
#
#   .gpu-host/deps   Ray without its Java jars, RLlib, LLM library and dashboard web build (25 MB as
#                    tar.xz instead of a 79 MB wheel), faiss-cpu, and the pure-Python packages Ray needs
#                    that such an image lacks; wheels for the host's Python (PY_VERSION, default 3.12).
#   .gpu-host/data   the default encoder in fp16 (run.sh restores fp32 there; the largest weight error is
#                    1e-3) and the prepared dataset named (default wordnet-reverse-dictionary).
#
# Usage, here:  scripts/offline-gpu/pack.sh [dataset]
# On the host:  scripts/offline-gpu/install.sh      (carry .gpu-host/deps; installs to $XMC_SITE)
#               scripts/offline-gpu/run.sh ARGS...  (carry .gpu-host/data; ARGS go to benchmarks/quality.py)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
dataset=${1:-wordnet-reverse-dictionary}
py=${PY_VERSION:-3.12}
python=.venv/bin/python
out=.gpu-host
prepared=data/$dataset
[ -f "$prepared/manifest.json" ] || { echo "pack.sh: $prepared is not prepared; run jobs/prepare.py first" >&2; exit 2; }
rm -rf "$out" && mkdir -p "$out/deps" "$out/data/model" "$out/data/prepared" "$out/tmp"
unset http_proxy https_proxy  # the loopback env points them at a closed port; pip needs the registry
download() {
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$1" "${@:2}"
}
ray_version=$("$python" -c 'import ray; print(ray.__version__)')
faiss_version=$("$python" -c 'import faiss; print(faiss.__version__)')
download "$out/tmp" "ray==$ray_version"
(cd "$out/tmp" && mkdir ray && cd ray && unzip -q ../ray-*.whl && rm -rf ray/jars ray/rllib ray/llm ray/dashboard/client/build \
  && tar cf - . | xz -9 -T0 > ../../deps/ray.tar.xz)
download "$out/deps" "faiss-cpu==$faiss_version" jsonschema jsonschema-specifications referencing rpds-py \
  pydantic pydantic-core annotated-types typing-inspection tensorboardX
rm -rf "$out/tmp"
"$python" - "$out/data/model" <<'PY'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from xmc.models.encoder import resolve_model_dir
source, target = resolve_model_dir("default"), Path(sys.argv[1])
for path in source.iterdir():
    if path.name != "model.safetensors":
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target / path.name)
weights = load_file(str(source / "model.safetensors"))
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
          str(target / "model.fp16.safetensors"))
PY
cp "$prepared"/*.parquet "$prepared"/manifest.json "$out/data/prepared/"
echo "$dataset" > "$out/data/dataset"
du -sh "$out/deps" "$out/data"
