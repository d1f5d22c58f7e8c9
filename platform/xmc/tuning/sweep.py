"""A Ray Tune sweep over training configs, the three layers of Ray's Train+Tune guide:

Tuner → :func:`trial` (one Tune trial: builds the ``TorchTrainer`` with ``TuneReportCallback`` and runs it)
→ the per-worker training loop. Trials train on the training data minus a fixed validation hold-out and
report validation metrics every epoch; ASHA stops weak trials at epoch boundaries. The test split is never
looked at during the sweep: the best configuration is retrained on all training data and evaluated on
test once, at the end.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
from pathlib import Path
from typing import Any

from xmc import storage
from xmc.cluster import init_ray
from xmc.config import ConfigError, dump_yaml, load_config, resolve_path, to_dict
from xmc.experiment import ExperimentConfig
from xmc.training.driver import (
    build_trainer,
    ensure_prepared,
    resolve_run,
    run_training,
    write_run_config,
)
from xmc.training.ray_worker import PLACEMENT_GROUP_FILE
from xmc.tuning.config import TuneFile, TuneSweepConfig
from xmc.tuning.space import apply_params, param_space

#: The sweep's training runs, one per trial.
RUNS = "train-runs"


def load_sweep(path: str | Path, overrides: list[str]) -> tuple[TuneSweepConfig, dict, str]:
    """The sweep settings, the resolved base training config (as a dict) and the sweep's location (a path
    or a storage URI).

    ``--set`` overrides starting with ``tune.`` change the sweep; the others change every trial's training.
    """
    path = resolve_path(path)
    sweep = load_config(TuneFile, path, [o for o in overrides if o.startswith("tune.")]).tune
    if not sweep.base:
        raise ConfigError(f"{path}: tune.base must name the training config(s) trials start from")
    training_overrides = [*sweep.overrides, *[o for o in overrides if not o.startswith("tune.")],
                          f"dataset.validation_fraction={sweep.validation_fraction}",
                          f"dataset.validation_seed={sweep.validation_seed}", "eval.split=validation",
                          "train.eval_every=1", "train.checkpoint_every_steps=0", "train.progress=false"]
    base = load_config(ExperimentConfig, [path.parent / p for p in sweep.base], training_overrides)
    base, _ = resolve_run(base, sweep.name)
    base_dict = to_dict(base)
    for key, spec in sweep.search_space.items():  # fail now, naming the key, not inside a trial
        kind, values = next(iter(spec.items()))
        try:
            apply_params(base_dict, {key: values[0]})
        except ConfigError as err:
            raise ConfigError(f"tune.search_space.{key}: {err}") from None
    return sweep, base_dict, storage.join(storage.resolve(sweep.storage), sweep.name)


def trial(params: dict[str, Any], base: dict, runs_dir: str) -> None:
    """One Tune trial: the training run of ``base`` with ``params``, reporting to Tune every epoch."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    config = apply_params(base, params)
    config.run.name = tune.get_context().get_trial_id()
    config.run.storage = runs_dir
    run_location = storage.join(runs_dir, config.run.name)
    write_run_config(config, run_location)
    build_trainer(config, run_location, callbacks=[TuneReportCallback()]).fit()


def trial_concurrency(sweep: TuneSweepConfig, base: dict) -> int:
    """Trials run at once: as configured, else one on CPU (trials share the cores) and as many as the
    cluster's GPUs hold on GPU."""
    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    if not base["train"]["use_gpu"]:
        return 1  # CPU trials share the same cores: one after another
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    per_trial = max(base["train"]["num_workers"], 1) * base["train"]["gpus_per_worker"]
    return max(1, int(gpus / per_trial + 1e-9))


def build_tuner(sweep: TuneSweepConfig, base: dict, sweep_dir: str):
    """A new Tuner, or the interrupted sweep at ``sweep_dir`` restored (finished trials are not rerun)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(
        functools.partial(trial, base=base, runs_dir=storage.join(sweep_dir, RUNS)),
        {"cpu": sweep.trial_cpus})
    where = storage.ray_storage(sweep_dir)  # the sweep's own directory, as Tuner.restore takes it
    path, filesystem = where["storage_path"], where.get("storage_filesystem")
    if tune.Tuner.can_restore(path, filesystem):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=filesystem), True
    scheduler = None
    if sweep.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=base["train"]["epochs"],
                                  grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor)
    search_alg = None
    if sweep.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as err:
            raise ConfigError(f"tune.search: optuna is not installed ({err}); pip install optuna") from None
        search_alg = OptunaSearch()
    tuner = tune.Tuner(
        trainable, param_space=param_space(sweep.search_space),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    scheduler=scheduler, search_alg=search_alg,
                                    max_concurrent_trials=trial_concurrency(sweep, base)),
        run_config=tune.RunConfig(name=storage.name(sweep_dir),
                                  **storage.ray_storage(storage.parent(sweep_dir))),
    )
    return tuner, False


def release_placement_groups(runs_dir: str) -> int:
    """Remove the placement groups that trials killed by the scheduler left reserved; returns how many."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    released = 0
    for run in storage.list_dir(runs_dir):
        recorded = storage.join(runs_dir, run, PLACEMENT_GROUP_FILE)
        if not storage.is_file(recorded):
            continue
        group_id = storage.read_text(recorded).strip()
        if placement_group_table().get(group_id, {}).get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
            released += 1
    if released:
        ray.util.placement_group_table()  # a round trip to the GCS, so the removal is visible before we go on
    return released


def results_table(grid, sweep: TuneSweepConfig, epochs: int) -> list[dict]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        rows.append({
            "trial": metrics.get("trial_id", Path(result.path).name),
            **{key: result.config.get(key) for key in sweep.search_space},
            sweep.metric: metrics.get(sweep.metric),
            "epochs": metrics.get("epoch"),
            "stopped_early": metrics.get("epoch", 0) < epochs,
            "error": None if result.error is None else type(result.error).__name__,
        })
    rows.sort(key=lambda r: (r[sweep.metric] is None, -(r[sweep.metric] or 0) if sweep.mode == "max"
                             else (r[sweep.metric] or 0)))
    return rows


def write_table(rows: list[dict], location: str) -> str:
    """results.csv at ``location``; returns the same rows as a Markdown table."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(location, text.getvalue())
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                       for v in row.values()) + " |")
    return "\n".join(lines)


def plot_metric(rows: list[dict], sweep: TuneSweepConfig, location: str) -> None:
    """One panel per searched key: the validation metric of every trial against that key's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sweep.search_space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    for axis, key in zip(axes[0], keys):
        points = [(r[key], r[sweep.metric], r["stopped_early"]) for r in rows if r[sweep.metric] is not None]
        categorical = any(isinstance(p[0], str) for p in points)
        labels = sorted({str(p[0]) for p in points}) if categorical else None
        for value, metric, stopped in points:
            x = labels.index(str(value)) if categorical else value
            axis.scatter(x, metric, marker="x" if stopped else "o",
                         color="tab:gray" if stopped else "tab:blue")
        if categorical:
            axis.set_xticks(range(len(labels)), labels)
        axis.set(xlabel=key, ylabel=f"validation {sweep.metric}", title=key)
    fig.suptitle("o: ran to the end, x: stopped early by ASHA", fontsize=9)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes(location, image.getvalue())


def best_config(base: dict, params: dict, sweep: TuneSweepConfig) -> ExperimentConfig:
    """The winning trial's config for a full run: all training data, evaluated on test."""
    data = copy.deepcopy(base)
    data["dataset"]["validation_fraction"] = 0.0
    data["eval"]["split"] = "test"
    data["train"]["progress"] = True
    data["run"]["name"] = f"{sweep.name}-best"
    return apply_params(data, {k: params[k] for k in sweep.search_space})


def run_sweep(path: str | Path, overrides: list[str]) -> dict:
    """Run (or resume) the sweep; write results.csv, metric_vs_params.png, best_config.yaml and, after
    retraining the best, best_test_metrics.json. Returns a summary."""
    sweep, base, sweep_dir = load_sweep(path, overrides)
    ensure_prepared(apply_params(base, {}))  # once here, not in every trial
    init_ray(base["run"]["ray_address"])
    tuner, resumed = build_tuner(sweep, base, sweep_dir)
    grid = tuner.fit()
    release_placement_groups(storage.join(sweep_dir, RUNS))
    rows = results_table(grid, sweep, base["train"]["epochs"])
    table = write_table(rows, storage.join(sweep_dir, "results.csv"))
    plot_metric(rows, sweep, storage.join(sweep_dir, "metric_vs_params.png"))
    best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="last")
    chosen = best_config(base, best.config, sweep)
    storage.write_text(storage.join(sweep_dir, "best_config.yaml"), dump_yaml(chosen))
    summary = {"sweep": sweep_dir, "resumed": resumed, "trials": len(rows), "table": table,
               "best_params": {k: best.config[k] for k in sweep.search_space},
               f"best_validation_{sweep.metric}": best.metrics.get(sweep.metric)}
    if sweep.retrain_best:
        result, run_location = run_training(chosen)
        summary["best_test_metrics"] = dict(result.metrics)  # what the run's last epoch reported to Ray
        summary["best_run"] = run_location
        storage.write_json(storage.join(sweep_dir, "best_test_metrics.json"), summary["best_test_metrics"])
    return summary
