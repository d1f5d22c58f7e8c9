"""Save nested training state (state dicts, optimizer states, RNG states, numpy arrays) without pickle.

Tensors and arrays go to one safetensors file; the structure around them (dicts with int or str keys,
lists, tuples, numbers, strings) goes to a JSON file that names each tensor by key. Loading never executes
code from disk, unlike ``torch.load`` of an arbitrary pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from xmc.io import atomic_path


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """JSON-able skeleton of ``obj``; its tensors/arrays are moved into ``tensors`` under unique keys."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": path}
    if isinstance(obj, dict):
        items = []
        for i, (key, value) in enumerate(obj.items()):
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"cannot save dict key {key!r} at {path}")
            items.append([key, flatten(value, tensors, f"{path}.{i}")])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        kind = "__list__" if isinstance(obj, list) else "__tuple__"
        return {kind: [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save {type(obj).__name__} at {path}")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy()
        if "__dict__" in skeleton:
            return {key: unflatten(value, tensors) for key, value in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def save_state(directory: str | os.PathLike, name: str, state: Any) -> None:
    """Write ``name.safetensors`` and ``name.json`` in ``directory`` (each atomically)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    with atomic_path(directory / f"{name}.safetensors") as tmp:
        # safetensors refuses tensors that share memory; give each its own storage
        save_file({k: v.clone() if v.numel() else v for k, v in tensors.items()}, str(tmp))
    with atomic_path(directory / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(skeleton), encoding="utf-8")


def load_state(directory: str | os.PathLike, name: str) -> Any:
    directory = Path(directory)
    skeleton = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    return unflatten(skeleton, load_file(str(directory / f"{name}.safetensors")))


def rng_state() -> dict:
    """Every random generator a training step draws from (dropout, sampling)."""
    import random

    state = {"python": list(random.getstate()[1]), "python_gauss": random.getstate()[2],
             "numpy": np.random.get_state()[1], "numpy_pos": int(np.random.get_state()[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import random

    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"], state["numpy_pos"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
