"""The YAML search space as Ray Tune domains, and trial parameters as training-config overrides."""

from __future__ import annotations

import copy
from typing import Any

from xmc.config import ConfigError, from_dict
from xmc.experiment import ExperimentConfig


def to_tune_domain(spec: dict[str, list]):
    from ray import tune

    kind, values = next(iter(spec.items()))
    if kind == "grid":
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    if kind == "uniform":
        return tune.uniform(float(values[0]), float(values[1]))
    if kind == "loguniform":
        return tune.loguniform(float(values[0]), float(values[1]))
    if kind == "randint":
        return tune.randint(int(values[0]), int(values[1]) + 1)  # inclusive upper bound in the YAML
    return tune.quniform(float(values[0]), float(values[1]), float(values[2]))


def param_space(search_space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Tune's param_space; keys are dotted training keys (flat, so results tables name them as in YAML)."""
    return {key: to_tune_domain(spec) for key, spec in search_space.items()}


def set_path(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"tune.search_space.{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def apply_params(base: dict, params: dict[str, Any]) -> ExperimentConfig:
    """The typed training config of a trial: ``base`` with the trial's values (unknown keys rejected)."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_path(data, key, value.item() if hasattr(value, "item") else value)
    return from_dict(ExperimentConfig, data)
