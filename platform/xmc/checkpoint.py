"""The on-disk form of a training checkpoint: nested state without pickle, and the layout of its files.

Tensors and arrays go to one safetensors file; the structure around them (dicts with int or str keys,
lists, tuples, numbers, strings) goes to a JSON file that names each tensor by key. Loading never executes
code from disk, unlike ``torch.load`` of an arbitrary pickle.

A checkpoint directory holds one such pair per part::

    model            encoder + heads (+ prototype network) state dict             written by rank 0
    optimizer        AdamW state of the dense parameters                          rank 0
    trainer          loop state: epoch, step, batch plan, clusters, shortlists    rank 0
    labels           label-level scoring state: labels without training positives,
                     the free-vector cluster of each label (PRIME)                rank 0
    table-rankNNNN   the classifier rows a worker owns (+ SparseAdam moments)     every rank
    free-rankNNNN    the prototype free vectors a worker owns (+ moments)         every rank
    centroids-rankNNNN  the label centroids a worker owns                         every rank
    rng-rankNNNN     every random generator of a worker                           every rank

Sharded parts record which rows they hold (``owned``), so they can be read back by any number of workers.
Training (:mod:`xmc.training.checkpoint`) writes and restores all of it; inference
(:mod:`xmc.scoring`) reads only model, labels and the row shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from xmc import storage
from xmc.config import ConfigError
from xmc.io import atomic_path
from xmc.memory import release_freed_memory

CHECKPOINT_PREFIX = "checkpoint_"
MODEL, OPTIMIZER, LOOP, LABELS = "model", "optimizer", "trainer", "labels"


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
        save_file(_unshared(tensors), str(tmp))
    with atomic_path(directory / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(skeleton), encoding="utf-8")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with a copy of each one that shares memory with another (safetensors refuses those);
    the others are written from where they are, since a label table and its moments are each as large as
    everything else in a checkpoint together."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        out[key] = tensor.clone() if storage in seen else tensor
        if storage is not None:
            seen.add(storage)
    return out


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


def shard_name(part: str, rank: int) -> str:
    """File stem of one worker's shard of a sharded part (``table``, ``free``, ``centroids``, ``rng``)."""
    return f"{part}-rank{rank:04d}"


def has_state(directory: str | os.PathLike, name: str) -> bool:
    return (Path(directory) / f"{name}.json").is_file()


#: Bytes of rows read from a saved shard at once (bounds the memory of a re-split beside the rows kept);
#: ``$XMC_CHUNK_BYTES`` changes it, as it does the chunks indexes are built in (:mod:`xmc.mining.ann`).
READ_CHUNK_BYTES = int(os.environ.get("XMC_CHUNK_BYTES", 64 << 20))


def read_rows(directory: str | os.PathLike, part: str, keys: tuple[str, ...], num_rows: int,
              owned: np.ndarray, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Rows ``owned`` of a sharded part, whatever the number of workers that wrote it.

    Every saved shard lists its rows in ``owned``; the rows this reader owns are read out of each shard a
    bounded window at a time (a shard holding none of them is not read), so memory holds the reader's rows,
    never a whole saved shard or all ``num_rows``. ``into`` gives the tensors to fill in place for some
    keys (a table's own rows: no second copy of them is made). Returns float32 tensors per key of ``keys``
    that the shards hold, plus the shards' ``step`` when saved.
    """
    from safetensors import safe_open

    paths = sorted(Path(directory).glob(f"{part}-rank*.json"))
    if not paths:
        raise FileNotFoundError(f"{directory}: no {part}-rank*.json shards")
    owned = np.asarray(owned, dtype=np.int64)
    position = np.full(num_rows, -1, dtype=np.int64)
    position[owned] = np.arange(len(owned))
    out: dict[str, torch.Tensor] = {}
    held = np.zeros(len(owned), dtype=bool)  # rows some saved shard holds
    found = {key: np.zeros(len(owned), dtype=bool) for key in keys}  # and those it holds a key's value of
    for path in paths:
        entries = dict(json.loads(path.read_text(encoding="utf-8"))["__dict__"])
        tensors = str(path.with_suffix(".safetensors"))
        with safe_open(tensors, framework="pt") as handle:
            saved = handle.get_tensor(_tensor_name(entries["owned"])).numpy()
            if "step" in entries:
                step = entries["step"]
                out["step"] = handle.get_tensor(_tensor_name(step)) if isinstance(step, dict) else step
            shapes = {key: handle.get_slice(_tensor_name(entries[key])).get_shape() for key in keys
                      if key in entries}
        target = position[saved]
        rows = np.flatnonzero(target >= 0)  # positions in this shard of rows the reader owns
        held[target[rows]] = True
        for key, shape in shapes.items() if len(rows) else ():
            width = int(shape[1])
            if key not in out:
                out[key] = (into or {}).get(key)
                if out[key] is None:
                    out[key] = torch.empty(len(owned), width)
                if tuple(out[key].shape) != (len(owned), width):
                    raise ValueError(f"{path}: {key} rows are {width} wide, expected {tuple(out[key].shape)}")
            # windows of consecutive saved rows, so a read is bounded whatever the stride of the owned rows
            window = max(1, READ_CHUNK_BYTES // (width * 4))
            for start in range(int(rows[0]) // window * window, int(rows[-1]) + 1, window):
                chunk = rows[np.searchsorted(rows, start):np.searchsorted(rows, start + window)]
                if not len(chunk):
                    continue
                # Opened per window: a slice of a memory-mapped file reads only its own pages, which the
                # close unmaps (held open, every page read stays resident; the pread backend reads the
                # whole tensor for any slice).
                with safe_open(tensors, framework="pt") as handle:
                    block = handle.get_slice(_tensor_name(entries[key]))[int(chunk[0]):int(chunk[-1]) + 1]
                picked = block.float()[torch.from_numpy(chunk - chunk[0])]
                out[key][torch.from_numpy(target[chunk])] = picked.to(out[key].device)
                del block, picked
                release_freed_memory()  # else the heap keeps every window's freed block (xmc.memory)
            found[key][target[rows]] = True
    if not held.all():
        raise ValueError(f"{directory}: the {part} shards miss {int((~held).sum())} of this worker's rows")
    for key, got in found.items():  # a key no shard saved (moments of a table never stepped) is absent
        if key in out and not got.all():
            raise ValueError(f"{directory}: the {part} shards hold no {key} for {int((~got).sum())} of this "
                             "worker's rows")
    return out


class StoredRows:
    """Rows of a sharded part, read from the checkpoint when asked (:func:`read_rows`, a window at a time)
    instead of held: a reader that needs each row once, such as an export task folding its labels'
    classifier rows into an index a chunk at a time, then never holds them beside what it builds."""

    def __init__(self, directory: str | os.PathLike, part: str, num_rows: int, key: str = "weight"):
        self.directory, self.part, self.num_rows, self.key = Path(directory), part, num_rows, key

    def __call__(self, ids: np.ndarray) -> torch.Tensor:
        """The float32 rows of ``ids``, in that order."""
        return read_rows(self.directory, self.part, (self.key,), self.num_rows, ids)[self.key]


def _tensor_name(entry: dict) -> str:
    """The safetensors key of a tensor or array in a :func:`flatten` skeleton."""
    return entry.get("__tensor__") or entry["__ndarray__"]


def find_checkpoint(run_location: str | os.PathLike, name: str = "") -> str:
    """The name of the run's checkpoint directory ``name``, or of its latest (names sort by epoch, then
    step). ``run_location`` is a path or a storage URI (:mod:`xmc.storage`)."""
    found = [entry for entry in storage.list_dir(run_location) if entry.startswith(CHECKPOINT_PREFIX)
             and storage.is_file(storage.join(run_location, entry, f"{MODEL}.json"))]
    if name:
        if name not in found:
            raise ConfigError(f"checkpoint: {name!r} not in {run_location}; found {found}")
        return name
    if not found:
        raise ConfigError(f"--run: {run_location} holds no checkpoint; expected a run directory of "
                          "jobs/train.py")
    return found[-1]
