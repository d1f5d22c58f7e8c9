# Sourced by the scripts after any pip install: keep Ray, Train workers and HF on 127.0.0.1 and offline.
# Uses ../shared/ray-loopback.env when it is there (it also points HTTP proxies at a closed local port).
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$_here/../shared/ray-loopback.env" ]; then
  # shellcheck disable=SC1091
  source "$_here/../shared/ray-loopback.env"
else
  export RAY_USAGE_STATS_ENABLED=0 GLOO_SOCKET_IFNAME=lo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  export no_proxy=127.0.0.1,localhost,::1
fi
export TOKENIZERS_PARALLELISM=false
export PATH="$_here/.venv/bin:$PATH"
unset _here
