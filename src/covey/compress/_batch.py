"""A model's many small arrays worked on together, to the bytes each alone gives.

A ResNet's or a transformer's hundreds of small arrays (biases, norms) would
cost a dozen NumPy calls each to quantize or dequantize. Here consecutive
small arrays are worked on as one run of float64 values, each value beside its
own array's minimum and step, a few NumPy calls per :data:`CHUNK` values: each
value goes through the same float64 operations as in
:func:`~covey.compress._kernels._quantize` and
:func:`~covey.compress._kernels._dequantize`, and the stochastic rounding's
random numbers come from one draw per run, the stream the per-array draws take
in turn (an array larger than :data:`SMALL` is encoded alone, after the runs
before it). So the codes, minimums and steps are bit for bit those of the
per-array kernels, and so are the decoded values. Top-k's decoder checks the
small arrays' indices in one pass and scatters their values into one array.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from covey.compress._kernels import CHUNK, _pack4, _quantize, _scale, _unpack4
from covey.core._weights import Array, Weights, WeightsError

SMALL = 1 << 12
"""Arrays of at most this many values are quantized together with their neighbours."""


def quantize_all(
    delta: Weights, levels: int, rng: np.random.Generator
) -> dict[str, tuple[float, float, Array]]:
    """``(lo, step, codes)`` of each float array of ``delta``, as ``_quantize`` gives.

    Raises the error ``_quantize`` raises for the first array it refuses.
    """
    out: dict[str, tuple[float, float, Array]] = {}
    run: list[tuple[str, Array]] = []
    held = 0
    for n, x in delta.items():
        if x.dtype.kind != "f":
            continue
        if x.size > SMALL:
            _quantize_run(run, levels, rng, out)  # their random numbers come first
            run, held = [], 0
            out[n] = _quantize(n, x, levels, rng)
            continue
        run.append((n, np.asarray(x).reshape(-1)))
        held += x.size
        if held >= CHUNK:
            _quantize_run(run, levels, rng, out)
            run, held = [], 0
    _quantize_run(run, levels, rng, out)
    return out


def _quantize_run(
    run: list[tuple[str, Array]],
    levels: int,
    rng: np.random.Generator,
    out: dict[str, tuple[float, float, Array]],
) -> None:
    """Quantize the flat arrays of ``run`` together into ``out``."""
    if not run:
        return
    sizes = [flat.size for _, flat in run]
    values = np.concatenate([flat for _, flat in run], dtype=np.float64)
    starts = np.cumsum([0, *sizes[:-1]])
    filled = [s for s, size in zip(starts.tolist(), sizes, strict=True) if size]
    lows = iter(np.minimum.reduceat(values, filled).tolist() if filled else [])
    highs = iter(np.maximum.reduceat(values, filled).tolist() if filled else [])
    los: list[float] = []
    steps: list[float] = []
    for (n, _), size in zip(run, sizes, strict=True):
        lo, hi = (next(lows), next(highs)) if size else (0.0, 0.0)
        los.append(lo)
        steps.append(_scale(n, lo, hi, levels))
    values -= np.repeat(los, sizes)
    values /= np.repeat([s if s > 0.0 else 1.0 for s in steps], sizes)
    if 0.0 in steps:  # each value of a constant array is its minimum: its codes are 0
        values[np.repeat([s == 0.0 for s in steps], sizes)] = 0.0
    values += rng.random(values.size)
    np.floor(values, out=values)
    np.clip(values, 0, levels, out=values)
    codes = values.astype(np.uint8)
    for (n, _), start, size, lo, step in zip(run, starts.tolist(), sizes, los, steps, strict=True):
        mine = codes[start : start + size]
        out[n] = (lo, step, _pack4(mine) if levels == 15 else mine)


def dequantize_all(
    items: Sequence[tuple[Array, int, float, float, np.dtype[Any]]], *, four: bool
) -> list[Array]:
    """``lo + code * step`` of each ``(codes, size, lo, step, dtype)``, as ``_dequantize`` gives.

    The items are small arrays (at most :data:`SMALL` values each) whose codes
    and scales were checked.
    """
    out: list[Array] = []
    first = held = 0
    for last, (_, size, _, _, _) in enumerate(items, 1):
        held += size
        if held >= CHUNK or last == len(items):
            out.extend(_dequantize_run(items[first:last], four=four))
            first, held = last, 0
    return out


def _dequantize_run(
    items: Sequence[tuple[Array, int, float, float, np.dtype[Any]]], *, four: bool
) -> list[Array]:
    sizes = [size for _, size, _, _, _ in items]
    codes = [_unpack4(c, size) if four else c for c, size, _, _, _ in items]
    value = np.concatenate(codes).astype(np.float64)
    value *= np.repeat([step for _, _, _, step, _ in items], sizes)
    value += np.repeat([lo for _, _, lo, _, _ in items], sizes)
    dtypes = {dtype for _, _, _, _, dtype in items}
    whole = value.astype(dtypes.pop()) if len(dtypes) == 1 else None  # one dtype: one cast
    out: list[Array] = []
    start = 0
    for size, (_, _, _, _, dtype) in zip(sizes, items, strict=True):
        mine = value[start : start + size]
        out.append(mine.astype(dtype) if whole is None else whole[start : start + size])
        start += size
    return out


@functools.cache
def _limit(dtype: np.dtype[Any]) -> float:
    """The least float64 magnitude that rounds to Inf as ``dtype`` (to nearest, ties to even)."""
    top = np.finfo(dtype).max
    below = np.nextafter(top, dtype.type(0))
    return float(top) + (float(top) - float(below)) / 2


def fits(dtype: np.dtype[Any], *values: float) -> bool:
    """Whether float64 ``values`` stay finite as ``dtype`` (rounded to nearest, as decoded)."""
    if dtype.itemsize >= 8:
        return True
    limit = _limit(dtype)
    return all(abs(v) < limit for v in values)  # False for NaN, as its cast is not finite


def check_indices(name: str, idx: Array, size: int) -> None:
    """Refuse top-k's indices ``idx`` into ``size`` values unless in range and increasing."""
    if idx.size and int(idx[-1]) >= size:
        raise WeightsError(f"encoded update: {name!r} has an index out of range")
    if idx.size > 1 and not (idx[1:] > idx[:-1]).all():
        raise WeightsError(f"encoded update: {name!r} has indices not strictly increasing")


def all_increasing(items: Sequence[tuple[str, Array, int]]) -> bool:
    """Whether :func:`check_indices` takes each ``(name, idx, size)``, the small arrays' at once."""
    filled = [(idx, size) for _, idx, size in items if idx.size]
    if not filled:
        return True
    if any(int(idx[-1]) >= size for idx, size in filled):
        return False
    every = np.concatenate([idx for idx, _ in filled]).astype(np.int64)
    up = every[1:] > every[:-1]
    up[np.cumsum([idx.size for idx, _ in filled])[:-1] - 1] = True  # from one array to the next
    return bool(up.all())


def densify(items: Sequence[tuple[Array, Array, int]]) -> list[Array]:
    """``size`` zeros but ``value`` at the (checked) indices ``idx``, for each item.

    Small arrays of one dtype are views of one zeroed array, filled at once.
    """
    out: list[Array | None] = [None] * len(items)
    small = [i for i, (_, _, size) in enumerate(items) if size <= SMALL]
    dtypes = {items[i][1].dtype for i in small}
    if len(small) > 1 and len(dtypes) == 1:
        sizes = [items[i][2] for i in small]
        starts = np.cumsum([0, *sizes[:-1]])
        whole = np.zeros(sum(sizes), dtype=dtypes.pop())
        at = np.concatenate([items[i][0] for i in small]).astype(np.intp)
        at += np.repeat(starts, [items[i][0].size for i in small])
        whole[at] = np.concatenate([items[i][1] for i in small])
        for i, start, size in zip(small, starts.tolist(), sizes, strict=True):
            out[i] = whole[start : start + size]
    for i, (idx, value, size) in enumerate(items):
        if out[i] is None:
            dense = np.zeros(size, dtype=value.dtype)
            dense[idx] = value
            out[i] = dense
    return [x for x in out if x is not None]
