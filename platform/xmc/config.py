"""Typed configuration: dataclasses loaded from YAML, with ``--set section.key=value`` overrides.

Every component owns a small dataclass (``DatasetConfig``, ``EncoderConfig``, ...); a job composes them in
one top-level dataclass and calls :func:`load_config`. The loader is strict on purpose: a misspelt key or a
value of the wrong type is the most common way a long run silently does the wrong thing, so both fail at
load time with the dotted name of the key.

YAML files may pull in other files with a top-level ``include:`` list (paths relative to the including
file); included mappings are deep-merged in order, then the file's own keys, then the ``--set`` overrides.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

INCLUDE_KEY = "include"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and what was expected."""


# ----------------------------------------------------------------------------------------------------------
# YAML loading and merging


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated by ``update``; nested mappings merge key by key, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_tree(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, resolving its ``include:`` list recursively."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(str(p) for p in _seen + (path,))})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    includes = data.pop(INCLUDE_KEY, []) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for include in includes:
        merged = deep_merge(merged, read_yaml_tree(path.parent / include, _seen + (path,)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides; new keys are created here and rejected later by the typed conversion."""
    data = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{'.'.join(parts[: depth + 1])}' is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


# ----------------------------------------------------------------------------------------------------------
# Typed conversion


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (ints to floats, lists to tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        item_type = args[0] if args else Any
        items = [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        return list(items) if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = get_args(tp) or (Any, Any)
        return {
            _convert(k, key_type, f"{key}.<key>"): _convert(v, value_type, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a programming error in a Config class


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        names = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(f"unknown config key {names} (known keys in {where}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        factory = fields[name].default_factory
        given_in_part = isinstance(value, dict) and dataclasses.is_dataclass(hints[name])
        if given_in_part and factory is not dataclasses.MISSING:
            # a section given in part keeps the rest of its default, which may differ from its class's
            # own defaults (the export's index section)
            value = deep_merge(to_dict(factory()), value)
        kwargs[name] = _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field without a value
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{prefix + ': ' if prefix else ''}{err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (dataclasses become dicts, tuples become lists) for YAML/JSON dumps."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config(cls: type[T], path: str | os.PathLike | list | None = None,
                overrides: list[str] | None = None, base: dict | None = None) -> T:
    """Load ``cls`` from YAML file(s) (with includes; several are merged in order) and ``--set`` overrides."""
    data = dict(base or {})
    paths = path if isinstance(path, (list, tuple)) else ([] if path is None else [path])
    for one in paths:
        data = deep_merge(data, read_yaml_tree(one))
    data = apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def resolve_path(path: str | os.PathLike) -> Path:
    """Resolve a user path: absolute as is, relative against ``$XMC_WORKDIR`` (else the current directory).

    ``ray job submit --working-dir .`` runs the job from a copy of the repository in Ray's session folder,
    where relative paths such as ``../shared/data`` no longer point anywhere; setting ``XMC_WORKDIR`` to the
    submitting directory (``--runtime-env-json``) keeps the same configs valid on both paths.
    """
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute():
        return path
    return (Path(os.environ.get("XMC_WORKDIR") or os.getcwd()) / path).resolve()
