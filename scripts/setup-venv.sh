#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test tools. Idempotent: reinstalls only when
# pyproject.toml changed. torch is pinned to 2.13.0 here and in pyproject.toml: an unpinned torch pulls
# several GB of CUDA wheels on CPU machines.
# XMC_GPU=1 (on a machine with an NVIDIA GPU) installs faiss-gpu (the `gpu` extra) instead of faiss-cpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "xmc-platform needs Python >= 3.10")'
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# ../shared/ray-loopback.env points HTTP proxies at a closed local port; pip must not inherit that.
unset_closed_proxies=()
for var in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY; do
  case "${!var:-}" in *127.0.0.1:9*) unset_closed_proxies+=(-u "$var") ;; esac
done
pip() { env "${unset_closed_proxies[@]}" .venv/bin/python -m pip "$@"; }
stamp=.venv/.xmc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install --quiet --upgrade pip
  pip install --quiet "torch==2.13.0"
  pip install --quiet -e ".[test]" "torch==2.13.0"
  touch "$stamp"
fi
if [ "${XMC_GPU:-0}" = 1 ] && ! .venv/bin/python -c 'import faiss; faiss.StandardGpuResources' 2>/dev/null; then
  # faiss-cpu and faiss-gpu install the same `faiss` package: with both, whichever came last owns the
  # files, and removing one deletes files the other needs. So: both in, the CPU build out, the GPU build's
  # files put back.
  pip install --quiet -e ".[test,gpu]" "torch==2.13.0"
  pip uninstall --quiet -y faiss-cpu
  gpu_faiss=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"][0])')
  pip install --quiet --force-reinstall --no-deps "$gpu_faiss"
fi
