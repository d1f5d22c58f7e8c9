"""The driver: resolve a config into a run, start (or join) Ray, and launch the Ray Train ``TorchTrainer``.

Three layers, as Ray's Train+Tune guide prescribes: a Tune trial (or ``jobs/train.py``) calls
:func:`run_training`, which builds the ``TorchTrainer``, whose workers run
:func:`xmc.training.ray_worker.train_loop_per_worker`. Resuming is Ray Train V2's: the same
``RunConfig(name, storage_path)`` finds the run's latest checkpoint and the loop continues from it.
"""

from __future__ import annotations

import copy

from xmc import storage
from xmc.cluster import init_ray
from xmc.config import ConfigError, dump_yaml, resolve_path, to_dict
from xmc.data.dataset import PreparedDataset
from xmc.data.lengths import token_cache
from xmc.data.prepare import prepare_dataset, read_manifest
from xmc.experiment import ExperimentConfig
from xmc.models.config import DEFAULT_MODEL
from xmc.models.encoder import resolve_model_dir
from xmc.scoring.run import RUN_CONFIG
from xmc.training.adapt import adapt_to_data


def resolve_run(config: ExperimentConfig, default_name: str = "run") -> tuple[ExperimentConfig, str]:
    """A copy of ``config`` whose locations every process reads alike (local paths absolute, URIs as they
    are) and the run's location, ``run.storage/run.name``."""
    config = copy.deepcopy(config)
    data = config.dataset
    if not data.prepared:
        if not data.source:
            raise ConfigError("dataset: neither prepared (a prepared dataset) nor source (raw files) is set")
        # beside the other prepared datasets, named after the raw files
        data.prepared = storage.join("data", data.name or storage.name(storage.resolve(data.source)))
    data.name = data.name or storage.name(storage.resolve(data.prepared))
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
        token_cache(dataset, config.dataset, resolve_model_dir(config.encoder.model),
                    progress=config.train.progress)
    return dataset


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
    config = adapt_to_data(config, ensure_prepared(config))
    write_run_config(config, run_location)
    if config.train.num_workers > 0:
        init_ray(config.run.ray_address)
    result = build_trainer(config, run_location).fit()
    if config.train.calibrate and config.dataset.validation_fraction > 0:
        calibrate_after_training(config, run_location)
    return result, run_location


def calibrate_after_training(config: ExperimentConfig, run_location: str) -> dict:
    """Choose the fused-score settings on the run's validation hold-out (:mod:`xmc.evaluation.calibration`,
    with its default grid): ``calibration.json``, which export applies, and the choice in config.yaml's
    ``adapted`` with the validation figure it was chosen by."""
    from xmc.evaluation.calibration import calibrate_run
    from xmc.evaluation.config import CalibrateConfig

    record = calibrate_run(run_location, CalibrateConfig())
    metric = record["metric"]
    why = (f"chosen on the validation hold-out ({record['validation_points']:,} points, {metric} "
           f"{record['validation'][metric]:.2f}) after training; calibration.json, which export applies")
    config.adapted = {**config.adapted, **{f"model.{key}": f"{value}: {why}"
                                           for key, value in record["selected"].items()}}
    write_run_config(config, run_location)
    return record
