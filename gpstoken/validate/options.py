"""Checks of plain option values: ints, numbers, flags, ``(H, W)`` pairs, array-likes of
rows, the ``move`` dict of ``edit_layout``.

Each returns the value in its canonical type or raises ``TypeError`` / ``ValueError`` whose
message starts with the argument's name.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch


def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (bool and floats refused) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"in [{low}, {high}]" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        raise ValueError(f"{name}: must be an int {bounds}, got {value}")
    return value


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        raise ValueError(f"{name}: must lie in {left}{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value}")
    return value


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool (True/False only)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def moves(value: Any, name: str = "move") -> tuple[list[int], list[tuple[float, float]]]:
    """``{index: (x, y)}`` -> (indices, centres); the form ``edit_layout(move=...)`` documents."""
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected a dict {{token index: (x, y) pixel centre}}, got {type(value).__name__}")
    indices, centres = [], []
    for key, centre in value.items():
        indices.append(integer(key, f"{name} key {key!r}"))
        if not isinstance(centre, (tuple, list, np.ndarray, torch.Tensor)) or len(centre) != 2:
            raise ValueError(f"{name}[{key}]: expected an (x, y) pixel centre, got {centre!r}")
        centres.append((number(centre[0], f"{name}[{key}] x"), number(centre[1], f"{name}[{key}] y")))
    return indices, centres


def as_tensor(value: Any, name: str, what: str) -> torch.Tensor:
    """``torch.as_tensor(value)`` for a numeric array-like, else TypeError naming ``name``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected {what}, got a string {value!r}")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} ({e})") from None


def as_rows(value: Any, name: str, width: int, what: str) -> torch.Tensor:
    """A non-empty finite float64 ``[M, width]`` tensor from a list of rows (or one row)."""
    t = as_tensor(value, name, f"a list of {what}")
    numeric = t.is_floating_point() or t.dtype.is_signed or t.dtype == torch.uint8
    if t.dtype == torch.bool or t.is_complex() or not numeric:
        raise TypeError(f"{name}: expected a list of {what}, got dtype {t.dtype}")
    if t.ndim not in (1, 2) or t.numel() == 0 or t.shape[-1] != width:
        raise ValueError(f"{name}: expected a non-empty list of {what} ({width} numbers each), got shape "
                         f"{tuple(t.shape)}")
    t = t.to(torch.float64).reshape(-1, width)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: {what} must be finite, got NaN or Inf")
    return t


def size_pair(value: Any, name: str) -> tuple[int, int]:
    """A pair of positive ints ``(H, W)`` (tuple or list)."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in value)
        or min(value) < 1
    ):
        raise ValueError(f"{name}: expected a pair of positive ints (H, W), got {value!r}")
    return int(value[0]), int(value[1])


def config_fields(cls: type, values: Mapping[str, Any], where: str, *, also: frozenset[str] = frozenset(),
                  error: type[Exception] = ValueError) -> None:
    """Every key of a config mapping read for the dataclass ``cls`` is one of its fields (or in
    ``also``); else ``error`` naming ``where``, the unknown keys and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)} | also
    unknown = set(values) - known
    if unknown:
        raise error(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(known)}")


def config_values(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Values read from a config file for the dataclass ``cls``: each field declared as exactly
    ``bool``, ``int``, ``float`` or ``str`` must get a value of that kind (an int for a float is
    fine); TypeError naming ``where.field``. Other fields (optional, unions, tuples, nested
    configs) are the class's to check."""
    kinds = {"bool": bool, "int": int, "float": float, "str": str}
    for f in dataclasses.fields(cls):
        kind = kinds.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if f.name not in values or kind is None:
            continue
        value = values[f.name]
        if kind is bool or kind is str:
            ok = isinstance(value, kind)
        else:
            ok = isinstance(value, Integral if kind is int else Real) and not isinstance(value, bool)
        if not ok:
            what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
            raise TypeError(f"{where}.{f.name}: expected {what}, got {value!r}")
