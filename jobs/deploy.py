"""Deploy the Serve app for a bundle on a running Ray cluster, and return (the app keeps serving).

    python jobs/deploy.py --address 127.0.0.1:6379 --bundle bundles/demo --shards 2
    ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/deploy.py --bundle s3://my-bucket/bundles/demo --host 0.0.0.0 --port 8000

The bundle is a path every node reads or a storage URI (each node fetches the parts it serves). The app's
code goes with the job: the ``serve`` package and the library are shipped to the cluster. Deploying another
bundle under the same --name swaps it in place without dropping a request. On this machine alone, use
``serve run serve.app:app bundle=...`` instead (it keeps a local Ray alive while it runs).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import _bootstrap  # noqa: F401  (xmc from this checkout where it is not installed)

from xmc.cli import run_cli
from xmc.config import ConfigError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle of jobs/export.py: a path or a storage URI")
    parser.add_argument("--shards", type=int, help="the bundle's shard count (checked)")
    parser.add_argument("--address", default="",
                        help="Ray cluster (default: $RAY_ADDRESS, which ray job submit sets)")
    parser.add_argument("--name", default="xmc", help="Serve application name")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host of Serve's proxies")
    parser.add_argument("--port", type=int, default=8000,
                        help="HTTP port of Serve's proxies (a cluster started with Serve's direct ingress "
                             "answers on its ingress port range instead)")
    parser.add_argument("--proxy-location", default="EveryNode", choices=["EveryNode", "HeadOnly"],
                        help="an HTTP proxy on every node (behind a load balancer) or on the head only")
    parser.add_argument("--shard-replicas", type=int, default=1)
    parser.add_argument("--shards-in-ingress", action="store_true",
                        help="no shard deployments: each ingress replica holds the whole label index and "
                             "searches it itself (lowest latency, where the index fits one replica)")
    args = parser.parse_args()
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError("jobs/deploy.py deploys to a running cluster: give --address or submit it "
                          "with ray job submit; on this machine alone use serve run serve.app:app bundle=...")

    from ray import serve

    from xmc.cluster import init_ray

    repo = Path(__file__).resolve().parents[1]
    init_ray(args.address, extra_modules=(repo / "serve",))
    from serve.app import app, http_port

    settings = {"bundle": args.bundle, "shard_replicas": args.shard_replicas,
                "shards_in_ingress": args.shards_in_ingress}
    if args.shards is not None:
        settings["shards"] = args.shards
    serve.start(proxy_location=args.proxy_location, http_options={"host": args.host, "port": args.port})
    serve.run(app(settings), name=args.name, route_prefix="/", blocking=False)
    print(json.dumps({"app": args.name, "url": f"http://{args.host}:{http_port(args.port)}/v1/predict",
                      "bundle": args.bundle}))
    return 0


if __name__ == "__main__":
    run_cli(main)
