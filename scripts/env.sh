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
# Serve's HTTP proxy forwards to the ingress over gRPC instead of Ray actor calls (2-3 ms less per request
# on 2 cores); read by the proxy when Ray starts, so it must be set before `serve run` or `ray start`.
export RAY_SERVE_PROXY_USE_GRPC=1
# XMC_SERVE_DIRECT_INGRESS=1: Serve's ingress replica answers HTTP itself on 127.0.0.1:${XMC_SERVE_PORT:-8000}
# (Serve's direct ingress), without the hop through its HTTP proxy: lower latency, but a redeploy that
# replaces the ingress replica moves it to the next port of its range for a while (docs/performance.md).
if [ "${XMC_SERVE_DIRECT_INGRESS:-0}" = 1 ]; then
  export RAY_SERVE_ENABLE_DIRECT_INGRESS=1
  export RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=${XMC_SERVE_PORT:-8000}
  export RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=$((RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT + 16))
  export RAY_SERVE_PORT_QUARANTINE_S=0
fi
export PATH="$_here/.venv/bin:$PATH"
unset _here
