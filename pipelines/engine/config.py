"""Typed, frozen configuration: YAML -> dataclasses in one place, with errors naming the key.

Every config class is a frozen dataclass whose fields have defaults and documented meanings;
``load_config(path, cls)`` validates the YAML against it (unknown keys, wrong types, invalid
``Literal`` choices) and raises ``ValueError("<file>: <key>: <what is wrong>")``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from stdiff.pipelines.engine.resources import resolve_config

T = TypeVar("T")


def _loc(where: str) -> str:
    return where.rstrip(":")


def _child(where: str, key: Any) -> str:
    """``file.yaml: a.b`` style locations for error messages."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{_loc(where)}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(
                f"{_loc(where)}: {value!r} is not valid; choose one of {list(get_args(tp))}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(arg, value, where)
            except ValueError as e:  # a list's own error first: "spread[1]: expected float"
                if isinstance(value, list | tuple) and get_origin(arg) in (list, tuple):
                    errors.insert(0, str(e))
                else:
                    errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{_loc(where)}: invalid value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{_loc(where)}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{_loc(where)}: expected a mapping, got {type(value).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, where): _convert(vt, v, _child(where, k)) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is str and isinstance(value, datetime.date):  # YAML reads 2013-01-01 as a date
        return value.isoformat()
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"{_loc(where)}: expected true or false, got {value!r}")
    if tp in (int, float, str) and (
        not isinstance(value, tp) or (isinstance(value, bool) and tp is int)
    ):
        raise ValueError(f"{_loc(where)}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config:") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, validating every key recursively."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{_loc(where)}: unknown key(s) {unknown}; valid keys are {names}")
    kwargs = {k: _convert(hints[k], v, _child(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{_loc(where)}: {e}") from None


def load_config(path: str | Path, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML file into ``cls``; ``overrides`` are dotted keys (``train.steps``) set on top."""
    path = resolve_config(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file; save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return from_dict(cls, nested(overrides or {}, data), f"{path}:")


def nested(overrides: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``data`` (a new mapping when None) with the dotted keys of ``overrides`` (``train.steps``,
    ``calibrate.split``) set into its sections."""
    data = {} if data is None else data
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        node[leaf] = value
    return data


def at_least_one(cfg: Any, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value on ``cfg`` is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")


def check_range(
    cfg: Any,
    *names: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value is not a finite number in
    the interval (``low``/``high`` bounds, open where said)."""
    for name in names:
        v = getattr(cfg, name)
        ok = isinstance(v, int | float) and math.isfinite(v)
        ok = ok and (low is None or (v > low if low_open else v >= low))
        ok = ok and (high is None or (v < high if high_open else v <= high))
        if not ok:
            lo = "" if low is None else f"{'(' if low_open else '['}{low:g}, "
            hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
            want = f"in {lo or '(-inf, '}{hi}"
            raise ValueError(f"{name} must be a finite number {want}, got {v!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for checkpoints and provenance)."""
    return dataclasses.asdict(cfg)
