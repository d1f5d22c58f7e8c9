"""The driver: resolve a config into a run, start (or join) Ray, and launch the Ray Train ``TorchTrainer``.

Three layers, as Ray's Train+Tune guide prescribes: a Tune trial (or ``jobs/train.py``) calls
:func:`run_training`, which builds the ``TorchTrainer``, whose workers run
:func:`xmc.training.ray_worker.train_loop_per_worker`. Resuming is Ray Train V2's: the same
``RunConfig(name, storage_path)`` finds the run's latest checkpoint and the loop continues from it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from xmc import storage
from xmc.config import ConfigError, dump_yaml, resolve_path, to_dict
from xmc.data.dataset import PreparedDataset
from xmc.data.prepare import prepare_dataset, read_manifest
from xmc.experiment import ExperimentConfig
from xmc.models.config import DEFAULT_MODEL
from xmc.models.encoder import resolve_model_dir
from xmc.scoring.run import RUN_CONFIG

#: Environment a locally started Ray hands to its workers (GLOO_SOCKET_IFNAME must be set before the
#: process group forms, i.e. before any of our code runs in the worker). The AWS variables are how pyarrow
#: finds credentials and a region for ``s3://`` storage.
FORWARDED_ENV = ("GLOO_SOCKET_IFNAME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                 "RAY_USAGE_STATS_ENABLED", "XMC_WORKDIR", "XMC_CACHE",
                 "XMC_TEST_FAIL_AT_STEP", "XMC_TEST_HANG_AT_STEP", "XMC_TEST_FAIL_MARKER",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                 "AWS_REGION", "no_proxy", "http_proxy", "https_proxy")


def resolve_run(config: ExperimentConfig, default_name: str = "run") -> tuple[ExperimentConfig, str]:
    """A copy of ``config`` whose locations every process reads alike (local paths absolute, URIs as they
    are) and the run's location, ``run.storage/run.name``."""
    config = copy.deepcopy(config)
    if not config.dataset.prepared:
        raise ConfigError("dataset.prepared: no prepared dataset directory configured")
    config.dataset.prepared = storage.resolve(config.dataset.prepared)
    if config.dataset.source:
        config.dataset.source = storage.resolve(config.dataset.source)
    if config.encoder.model != DEFAULT_MODEL:
        config.encoder.model = str(resolve_path(config.encoder.model))
    config.run.name = config.run.name or default_name
    config.run.storage = storage.resolve(config.run.storage)
    return config, storage.join(config.run.storage, config.run.name)


def ensure_prepared(config: ExperimentConfig) -> PreparedDataset:
    """Prepare the dataset from ``dataset.source`` if it has not been. A local dataset's token cache is built
    here, once, instead of in every worker; nodes build their own copy of a remote dataset's."""
    prepared = config.dataset.prepared
    if read_manifest(prepared) is None:
        if not config.dataset.source:
            raise ConfigError(f"dataset.prepared: {prepared} is not a prepared dataset and dataset.source is "
                              "not set; run jobs/prepare.py first")
        prepare_dataset(config.dataset.source, prepared, config.dataset.allow_empty_text)
    dataset = PreparedDataset(prepared)
    if storage.is_local(prepared):
        data = config.dataset
        dataset.token_cache(resolve_model_dir(config.encoder.model), data.max_len, data.query_text,
                            data.label_text, progress=config.train.progress)
    return dataset


def code_runtime_env(*extra_modules: str | os.PathLike) -> dict:
    """What a cluster that never saw this checkout needs to run the library: the ``xmc`` package itself
    (and ``extra_modules``, such as the Serve app's package), shipped by Ray's runtime environment; a
    submitted job's own ``--working-dir`` holds the scripts."""
    modules = [Path(__file__).resolve().parents[1], *extra_modules]  # platform/xmc first
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


def build_trainer(config: ExperimentConfig, run_location: str, callbacks: list | None = None):
    """The ``TorchTrainer`` for a resolved config (locations resolved, run name set); ``callbacks`` are Ray
    Train callbacks (a Tune trial passes ``TuneReportCallback``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from xmc.training.ray_worker import train_loop_per_worker

    cfg = config.train
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
                 **cfg.worker_resources}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "run_location": run_location},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources if cfg.num_workers else None),
        run_config=RunConfig(name=config.run.name, **storage.ray_storage(config.run.storage),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             callbacks=callbacks or None),
    )


def write_run_config(config: ExperimentConfig, run_location: str) -> None:
    """The resolved config, next to the run's checkpoints: what export, calibration and evaluation read."""
    storage.write_text(storage.join(run_location, RUN_CONFIG), dump_yaml(config))


def run_training(config: ExperimentConfig, default_name: str = "run"):
    """Train (or resume) the run described by ``config``; returns Ray's ``Result`` and the run's location."""
    config, run_location = resolve_run(config, default_name)
    ensure_prepared(config)
    write_run_config(config, run_location)
    if config.train.num_workers > 0:
        init_ray(config.run.ray_address)
    return build_trainer(config, run_location).fit(), run_location
