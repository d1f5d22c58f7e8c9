"""Joining or starting the Ray cluster a job runs on, with the library shipped to its workers.

Training, Tune sweeps, a multi-worker export and the Serve deployment all start Ray here: a job submitted to
a cluster (``ray job submit`` sets ``$RAY_ADDRESS``) joins it and ships this checkout's ``xmc`` package (and
the Serve app's, when deploying) as ``py_modules``; anywhere else a local Ray starts on 127.0.0.1 with the
environment the workers need.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment a locally started Ray hands to its workers (GLOO_SOCKET_IFNAME must be set before the
#: process group forms, i.e. before any of our code runs in the worker). The AWS variables are how pyarrow
#: finds credentials and a region for ``s3://`` storage.
FORWARDED_ENV = ("GLOO_SOCKET_IFNAME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                 "RAY_USAGE_STATS_ENABLED", "XMC_WORKDIR", "XMC_CACHE", "XMC_CHUNK_BYTES",
                 "XMC_TEST_FAIL_AT_STEP", "XMC_TEST_HANG_AT_STEP", "XMC_TEST_FAIL_MARKER",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                 "AWS_REGION", "no_proxy", "http_proxy", "https_proxy")


def code_runtime_env(*extra_modules: str | os.PathLike) -> dict:
    """What a cluster that never saw this checkout needs to run the library: the ``xmc`` package itself
    (and ``extra_modules``, such as the Serve app's package), shipped by Ray's runtime environment; a
    submitted job's own ``--working-dir`` holds the scripts."""
    modules = [Path(__file__).resolve().parent, *extra_modules]  # platform/xmc first
    return {"py_modules": [str(module) for module in modules]}


def init_ray(address: str = "", extra_modules: tuple = ()) -> None:
    """Join ``address`` (or $RAY_ADDRESS, set by ``ray job submit``), shipping the library (and
    ``extra_modules``) to its workers; else start a local Ray on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, runtime_env=code_runtime_env(*extra_modules), log_to_driver=True)
        return
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # the patch echoes every worker print() twice
    # The dashboard serves the State API that Ray Train's placement-group cleaner polls; it is bound to
    # 127.0.0.1. Tests switch it off (XMC_RAY_DASHBOARD=0).
    dashboard = os.environ.get("XMC_RAY_DASHBOARD", "1") != "0"
    ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", runtime_env={"env_vars": env},
             log_to_driver=True, _node_ip_address="127.0.0.1")
