"""A sweep's settings (``configs/tune/*.yaml``, top-level section ``tune``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SPEC_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")


@dataclass(kw_only=True)
class TuneSweepConfig:
    """Args:
        name: sweep name; the sweep lives in ``storage/name`` (rerun to resume an interrupted sweep).
        storage: directory of sweeps, a path (relative paths resolve against $XMC_WORKDIR or the cwd) or a
            storage URI such as ``s3://bucket/sweeps``.
        base: training config file(s) every trial starts from (relative to the sweep file).
        overrides: ``section.key=value`` settings applied to every trial (before the searched ones).
        search_space: training key -> one spec: ``{grid: [...]}``, ``{choice: [...]}``,
            ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``,
            ``{quniform: [lo, hi, q]}``.
        search: ``grid`` or ``random`` (Tune's variant generator: every combination of the grid axes,
            ``num_samples`` times, other axes sampled) or ``optuna`` (``num_samples`` trials).
        num_samples: trials (random/optuna) or repetitions of the grid.
        metric, mode: what selects the best trial, computed on the validation split (P@k, nDCG@k, PSP@k, ...).
        validation_fraction, validation_seed: the hold-out of the training data that trials are scored on.
        scheduler: ``asha`` stops weak trials early (at epoch boundaries), ``none`` runs all to the end.
        grace_period, reduction_factor: ASHA's minimum epochs before stopping a trial, and its halving rate.
        max_concurrent_trials: 0 = one at a time on CPU, as many as GPUs per trial fit on a GPU cluster.
        trial_cpus: CPU reserved by each trial's driver (the workers reserve their own).
        retrain_best: train the best configuration on all training data and evaluate it once on test.
    """

    name: str = "sweep"
    storage: str = "runs/tune"
    base: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    search_space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = 1
    metric: str = "P@1"
    mode: Literal["max", "min"] = "max"
    validation_fraction: float = 0.1
    validation_seed: int = 0
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent_trials: int = 0
    trial_cpus: float = 0.01
    retrain_best: bool = True

    def validate(self) -> None:
        if not self.search_space:
            raise ValueError("tune.search_space is empty; declare at least one training key to search")
        for key, spec in self.search_space.items():
            if len(spec) != 1 or next(iter(spec)) not in SPEC_KINDS:
                raise ValueError(f"tune.search_space.{key}: expected exactly one of {', '.join(SPEC_KINDS)}, "
                                 f"got {spec}")
            kind, values = next(iter(spec.items()))
            if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
                raise ValueError(f"tune.search_space.{key}.{kind}: expected [low, high], got {values}")
            if kind in ("grid", "choice") and not values:
                raise ValueError(f"tune.search_space.{key}.{kind}: expected a non-empty list")
        if self.search == "optuna" and any(next(iter(s)) == "grid" for s in self.search_space.values()):
            raise ValueError("tune.search: optuna cannot search 'grid' axes; use choice")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"tune.validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.num_samples < 1:
            raise ValueError("tune.num_samples must be >= 1")


@dataclass(kw_only=True)
class TuneFile:
    tune: TuneSweepConfig = field(default_factory=TuneSweepConfig)
