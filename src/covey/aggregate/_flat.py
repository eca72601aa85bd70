"""Helpers shared by aggregation steps: flat vectors of a model, scaling, finiteness."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from covey.aggregate._base import AggregationError, Contribution
from covey.core._weights import Array, Weights

Vector = NDArray[np.float64]


def flatten(values: Weights, params: Weights) -> Vector:
    """All arrays of ``values``, in the order of ``params``, as one float64 vector."""
    parts = [np.ravel(values[name]) for name in params]
    if len(parts) == 1:
        return np.array(parts[0], dtype=np.float64)
    return np.concatenate(parts, dtype=np.float64)


def signed(values: Weights) -> Weights:
    """``values`` with every unsigned integer array viewed as the signed integers of its size.

    An update of an unsigned array is a change modulo ``2**bits``: a client that
    lowers a ``uint8`` from 5 to 3 sends 254, which adding to 5 wraps back to 3.
    Its value as a number is the change of least magnitude, -2, which is what the
    two's-complement view reads (no copy is made).
    """
    if all(v.dtype.kind != "u" for v in values.values()):
        return values
    return {
        name: v.view(v.dtype.str.replace("u", "i")) if v.dtype.kind == "u" else v
        for name, v in values.items()
    }


def update_of(event: Contribution, params: Weights) -> Weights:
    """A contribution's update, its integer arrays by their numeric value.

    Float and bool arrays are :meth:`Contribution.as_delta`'s. An integer array of a
    client that sent weights is ``w_k - w`` computed in float64 (in its own dtype a
    decrease of an unsigned array would wrap around to a large increase); one of a
    client that sent a delta is read by :func:`signed`.
    """
    if event.weights is None:
        return signed(event.as_delta(params))
    delta = event.as_delta(params)
    if all(p.dtype.kind not in "iu" for p in params.values()):
        return delta
    weights = event.weights
    return {
        name: int_change(weights[name], p) if p.dtype.kind in "iu" else delta[name]
        for name, p in params.items()
    }


def int_change(new: Array, old: Array) -> Vector:
    """``new - old`` of an integer array as float64, exact for any change below ``2**53``.

    Taken in integer arithmetic first: float64 holds the values themselves only
    up to ``2**53``, so subtracting them as floats would lose a change to a large
    value (a counter past ``2**53``, a timestamp in nanoseconds).
    """
    if old.dtype == np.uint64:  # modulo 2**64 as a signed number (put right below)
        change = np.subtract(new, old, dtype=np.uint64).view(np.int64)
    else:
        change = np.subtract(new, old, dtype=np.int64)
    out = np.asarray(change, dtype=np.float64)
    if old.dtype.itemsize == 8:
        # Two 64-bit values can be up to 2**64 - 1 apart: a change past int64 wraps,
        # to the sign opposite the true change's. It is put back in float64.
        up = np.greater(new, old)
        wrapped = up != (change > 0)
        if wrapped.any():
            out[wrapped] += np.where(up[wrapped], 2.0**64, -(2.0**64))
    return out


def to_int(values: Array, dtype: np.dtype[Any]) -> Array:
    """Round float ``values`` to the integer (or bool) ``dtype``; negatives wrap modulo ``2**bits``.

    Goes through int64: casting a negative float straight to an unsigned dtype is
    undefined in C.
    """
    return int64_of(np.rint(values)).astype(dtype)


def int_delta(change: Array, param: Array) -> Array:
    """The delta of integer array ``param``'s dtype that moves it by float ``change``.

    Rounded (:func:`to_int`); adding it in the dtype gives ``param + change``, whose
    true value lies in the dtype's range. For 64-bit ones, float64 may round a change
    to past its largest or smallest value (``2**63 - 1`` is ``2**63``), which would
    wrap around to the other end: such an entry moves to that end instead.
    """
    dtype = param.dtype
    rounded = np.rint(change)
    delta = int64_of(rounded).astype(dtype)
    if dtype.itemsize != 8:
        return delta
    moved = np.add(param, delta, dtype=dtype)  # wraps back to the value, modulo 2**64
    # A move that wrapped lands behind (or, by 2**64 exactly, on) where it started.
    over, under = (rounded > 0) & (moved <= param), (rounded < 0) & (moved >= param)
    if not (over.any() or under.any()):
        return delta
    edge = np.where(over, np.iinfo(dtype).max, np.iinfo(dtype).min).astype(dtype)
    return np.asarray(np.where(over | under, np.subtract(edge, param, dtype=dtype), delta))


def int64_of(rounded: Array) -> Array:
    """Whole float64 ``rounded`` as int64, modulo ``2**64``.

    A change of an int64 array can pass int64's range (from -2**62 to 2**62 is
    2**63): as int64 it wraps, and adding it to the array in int64 wraps back to
    the exact value. A plain cast of such a float is undefined (NumPy warns).
    """
    big = np.abs(rounded) >= 2.0**63
    if big.any():
        rounded = np.where(big, np.mod(rounded + 2.0**63, 2.0**64) - 2.0**63, rounded)
    return np.asarray(rounded).astype(np.int64)


def unflatten(vector: Vector, params: Weights) -> dict[str, Array]:
    """Split ``vector`` into arrays shaped and typed like ``params``.

    Non-float arrays (counters, masks) are rounded to their own dtype (a negative
    change of an unsigned array wraps, so that adding it lowers the array).
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
            out[name] = int_delta(piece, value)
    return out


def scaled(values: Weights, factor: float, params: Weights) -> dict[str, Array]:
    """``factor * values`` per array, in the dtypes of ``params`` (non-floats rounded).

    ``values`` is an update as :func:`update_of` gives it (integer arrays by value).

    Raises:
        AggregationError: an integer array's scaled change is past what a delta of
            its dtype holds (read as a signed number, as the reducers read a delta):
            it would wrap around to a change of the other sign.
    """
    out: dict[str, Array] = {}
    for name, value in values.items():
        dtype = params[name].dtype
        if dtype.kind == "f":
            out[name] = np.multiply(value, factor, dtype=dtype)
            continue
        change = np.rint(value * factor)
        if dtype.kind in "iu":
            _refuse_past(name, change, dtype, factor)
        out[name] = int64_of(change).astype(dtype)
    return out


def a_dtype(dtype: np.dtype[Any]) -> str:
    """``"an int8"``, ``"a uint8"``: an integer dtype as a message names it."""
    return f"{'an' if dtype.name.startswith('i') else 'a'} {dtype}"


def delta_range(dtype: np.dtype[Any]) -> str:
    """``"(-128 to 127)"``: what a delta of integer ``dtype`` holds, read signed as reducers do."""
    top = 2 ** (dtype.itemsize * 8 - 1)
    return f"({-top} to {top - 1})"


def _refuse_past(name: str, change: Array, dtype: np.dtype[Any], factor: float) -> None:
    """Refuse a scaled integer ``change`` outside the signed range of ``dtype``'s size."""
    top = 2.0 ** (dtype.itemsize * 8 - 1)
    past = np.flatnonzero((change < -top) | (change >= top))
    if past.size:
        raise AggregationError(
            f"{name!r} changed by {int(change.reshape(-1)[past[0]])} at flat index "
            f"{int(past[0])} once scaled by {factor:.6g}, past what {a_dtype(dtype)} update "
            f"holds {delta_range(dtype)}: it would be averaged as another change; keep "
            f"{name!r} in a wider integer dtype"
        )


_CHUNK = 1 << 16
"""Values widened to float64 at a time when a norm is taken (a bounded temporary)."""


def sq_norm(values: Weights) -> float:
    """The squared L2 norm of all arrays taken together, summed in float64.

    Narrower arrays are widened a chunk at a time: summed in float32, the squares of
    a model of millions of values lose up to 1e-3 of the norm (an update a little
    over a clip bound would pass as under it), and in float16 the square of a norm
    past 256 overflows. A norm past float64's range is infinite, without NumPy's
    warning: the callers check what they get.
    """
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for value in values.values():
            flat = np.ravel(value)
            if flat.dtype == np.float64:
                total += float(np.dot(flat, flat))
                continue
            for start in range(0, flat.size, _CHUNK):
                part = flat[start : start + _CHUNK].astype(np.float64)
                total += float(np.dot(part, part))
    return total


def finite(values: Weights) -> bool:
    """Whether every floating-point value in ``values`` is finite."""
    return all(v.dtype.kind != "f" or bool(np.isfinite(v).all()) for v in values.values())


NO_EXAMPLES = "no_examples"
"""``Aggregate.info`` key: how many contributions reported ``num_examples=0`` and took no part."""


def no_examples(rule: str, count: int, step: str, round: int) -> AggregationError:
    """The error of a round whose every one of ``count`` contributions reported 0 examples."""
    return AggregationError(
        f"{step} {round}: all {count} contributions have num_examples=0 (clients with no "
        f"data to train on), so {rule} has no update to combine; the model is kept"
    )


def needs_params(params: Weights | None, step: str) -> Weights:
    """The round's global weights, or a clear error if the step saw no ``Begin``."""
    if params is None:
        raise AggregationError(
            f"{step} received an event before the round's Begin; it must come after "
            "steps that pass Begin on"
        )
    return params


def check_count(value: Any, what: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, or a clear TypeError (no int) or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_switch(value: Any, what: str) -> bool:
    """``value`` as True or False, or a clear TypeError (any text would read as true)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def check_positive(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), or a clear TypeError (no number) or ValueError."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise TypeError(
            f"{what} must be a finite number {bound}, got {type(value).__name__} {value!r}"
        )
    number = float(value)
    if not np.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{what} must be a finite number {bound}, got {value!r}")
    return number


def written_fraction(value: Any) -> Any:
    """A NumPy float narrower than float64 as the decimal it prints as; anything else as is.

    ``np.float32(0.7)`` is ``0.699999988...``, which as a float64 is no rounding of
    0.7 that :func:`floor_fraction` can tell from a fraction just under it: 0.7 of
    90 clients would be 62. Its shortest decimal, ``0.7``, is what was written.
    """
    if isinstance(value, np.floating) and value.dtype.itemsize < 8 and np.isfinite(value):
        return float(str(value))
    return value


def floor_fraction(fraction: float, count: int) -> int:
    """``floor(fraction * count)`` as in exact arithmetic: how many of ``count`` a fraction is.

    In binary floating point ``0.7 * 90`` is ``62.99999999999999``; a product within
    a few units in the last place of the next integer (the error of writing a
    decimal fraction in binary and multiplying) counts as that integer, so 0.7 of
    90 clients is 63 of them, not 62.

    Example:
        >>> floor_fraction(0.7, 90), floor_fraction(0.25, 10)
        (63, 2)
    """
    product = fraction * count
    whole = math.floor(product)
    if math.isclose(product, whole + 1, rel_tol=1e-15):
        whole += 1
    return whole
