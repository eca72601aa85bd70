"""Helpers shared by aggregation steps: flat vectors of a model, scaling, finiteness."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from covey.aggregate._base import AggregationError
from covey.core._weights import Array, Weights

Vector = NDArray[np.float64]


def flatten(values: Weights, params: Weights) -> Vector:
    """All arrays of ``values``, in the order of ``params``, as one float64 vector."""
    parts = [np.ravel(values[name]) for name in params]
    if len(parts) == 1:
        return np.array(parts[0], dtype=np.float64)
    return np.concatenate(parts, dtype=np.float64)


def unflatten(vector: Vector, params: Weights) -> dict[str, Array]:
    """Split ``vector`` into arrays shaped and typed like ``params``.

    Non-float arrays (counters, masks) are rounded to their own dtype.
    """
    out: dict[str, Array] = {}
    start = 0
    for name, value in params.items():
        size = int(value.size)
        piece = vector[start : start + size].reshape(value.shape)
        start += size
        if value.dtype.kind == "f":
            out[name] = piece.astype(value.dtype, copy=True)
        else:
            out[name] = np.rint(piece).astype(value.dtype)
    return out


def scaled(values: Weights, factor: float) -> dict[str, Array]:
    """``factor * values`` per array, each array keeping its dtype (non-floats rounded)."""
    out: dict[str, Array] = {}
    for name, value in values.items():
        if value.dtype.kind == "f":
            out[name] = np.multiply(value, factor, dtype=value.dtype)
        else:
            out[name] = np.rint(value * factor).astype(value.dtype)
    return out


def sq_norm(values: Weights) -> float:
    """The squared L2 norm of all arrays taken together."""
    total = 0.0
    for value in values.values():
        flat = np.ravel(value)
        if flat.dtype.kind == "f":
            total += float(np.dot(flat, flat))
        else:
            total += float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))
    return total


def finite(values: Weights) -> bool:
    """Whether every floating-point value in ``values`` is finite."""
    return all(v.dtype.kind != "f" or bool(np.isfinite(v).all()) for v in values.values())


def needs_params(params: Weights | None, step: str) -> Weights:
    """The round's global weights, or a clear error if the step saw no ``Begin``."""
    if params is None:
        raise AggregationError(
            f"{step} received an event before the round's Begin; it must come after "
            "steps that pass Begin on"
        )
    return params


def check_count(value: Any, what: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, or a clear ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_positive(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), or a clear ValueError."""
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")
    if not ok or not np.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, got {value!r}")
    return number
