"""Arithmetic over noisy aggregates kept within what the public bounds allow.

Under differential privacy a formula (``SUM(los) / COUNT(los)``, ``AVG(age) + 1``)
is evaluated over noisy aggregates, and noise can carry it where no data could:
a ratio of a noisy sum and a small noisy count can be far past the column's
bounds, a noisy count can be negative. Each aggregate's true value lies in a
range the public bounds give (a count is not negative, an average lies within the
bounds, a sum of values none of them negative is not negative, a variance is at
most a quarter of the range squared, doubled for a sample's), and so does the
value of arithmetic over them, by interval arithmetic; ``SUM(x) / COUNT(x)`` over
the same rows is a mean and lies within ``x``'s bounds, ``SUM(x) / COUNT(*)``
within them and 0. A count of the rows another count also counts, subtracted
from it (``COUNT(*) - COUNT(x)``: the rows where ``x`` is NULL; ``COUNT(x) -
COUNT(x)``), is not negative, and the difference the other way not positive:
every aggregate of a query is over the same rows, and ``COUNT(x)`` counts a
subset of those ``COUNT(*)`` counts, withheld groups included (a site withholds
``COUNT(x)`` wherever it withholds ``COUNT(*)``). Each step of the formula is
brought back into its range: post-processing of released values with public
bounds, which costs no privacy and only moves an answer nearer the truth.
Answers without noise are exact and are evaluated as written
(:func:`~covey.analytics._formula.evaluate`).
MIN and MAX carry no range: they are not clipped to the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covey.analytics._formula import evaluate

Range = tuple[float, float]
_ANY: Range = (-math.inf, math.inf)


def ranges(aggregates: Sequence[Any], bounds: Mapping[str, Sequence[float]]) -> list[Range]:
    """Each aggregate's range of true values, from its column's public ``bounds``."""
    out: list[Range] = []
    for a in aggregates:
        if a.func in ("count", "count_col"):
            out.append((0.0, math.inf))
            continue
        if a.func not in ("sum", "avg", "var_samp", "var_pop", "stddev_samp", "stddev_pop"):
            out.append(_ANY)
            continue
        low, high = (float(b) for b in bounds[str(a.column)])
        if a.func == "sum":
            out.append((0.0 if low >= 0 else -math.inf, 0.0 if high <= 0 else math.inf))
        elif a.func == "avg":
            out.append((low, high))
        else:
            top = (high - low) * (high - low) / 4 * (2 if a.func.endswith("samp") else 1)
            out.append((0.0, math.sqrt(top) if a.func.startswith("stddev") else top))
    return out


def _mul(a: Range, b: Range) -> Range:
    # the ends of finite values' products; 0 times an unbounded end is 0, not NaN
    ends = [0.0 if 0.0 in (x, y) else x * y for x in a for y in b]
    return (min(ends), max(ends))


def _inverse(x: float, zero: float) -> float:
    return zero if x == 0 else 1 / x  # 1 / inf is 0


def _div(a: Range, b: Range) -> Range:
    # a divisor of 0 gives NaN: within a range of one sign, the nonzero ones have that sign
    if b == (0.0, 0.0) or (b[0] < 0 < b[1]):
        return _ANY
    if b[0] >= 0:
        return _mul(a, (_inverse(b[1], math.inf), _inverse(b[0], math.inf)))
    return _mul(a, (_inverse(b[1], -math.inf), _inverse(b[0], -math.inf)))


def _mean(term: tuple[Any, ...], aggregates: Sequence[Any], bounds: Any) -> Range | None:
    """The range of ``SUM(x) / COUNT(x)`` (``x``'s bounds) or ``SUM(x) / COUNT(*)``."""
    if term[0] != "/" or term[1][0] != "agg" or term[2][0] != "agg":
        return None
    top, bottom = aggregates[term[1][1]], aggregates[term[2][1]]
    if top.func != "sum" or not (
        bottom.func == "count" or (bottom.func == "count_col" and bottom.column == top.column)
    ):
        return None
    low, high = (float(b) for b in bounds[str(top.column)])
    return (low, high) if bottom.func == "count_col" else (min(low, 0.0), max(high, 0.0))


def _subset(whole: Any, part: Any) -> bool:
    """Whether the count ``part`` counts a subset of the rows the count ``whole`` counts."""
    if part.func == "count_col" and whole.func in ("count", "count_col"):
        return bool(whole.func == "count" or whole.column == part.column)
    return bool(part.func == "count" and whole.func == "count")


def _difference(term: tuple[Any, ...], aggregates: Sequence[Any], span: Range) -> Range:
    """``span`` of ``a - b``: >= 0 when ``b`` counts a subset of ``a``'s rows, <= 0 if reversed."""
    if term[0] != "-" or term[1][0] != "agg" or term[2][0] != "agg":
        return span
    left, right = aggregates[term[1][1]], aggregates[term[2][1]]
    low, high = span
    if _subset(left, right):
        low = max(low, 0.0)
    if _subset(right, left):
        high = min(high, 0.0)
    return (low, high)


def within(
    term: tuple[Any, ...],
    values: Sequence[np.ndarray],
    aggregates: Sequence[Any],
    bounds: Mapping[str, Sequence[float]],
) -> np.ndarray:
    """The value of ``term`` per group over noisy ``values``, each step within its range."""
    found, _ = _within(term, values, ranges(aggregates, bounds), aggregates, bounds)
    return np.asarray(found, dtype=float)


def _within(
    term: tuple[Any, ...],
    values: Sequence[np.ndarray],
    leaf: Sequence[Range],
    aggregates: Sequence[Any],
    bounds: Any,
) -> tuple[Any, Range]:
    kind = term[0]
    if kind == "agg":
        span = leaf[term[1]]
    elif kind == "num":
        return np.float64(term[1]), (term[1], term[1])
    else:
        parts = [_within(t, values, leaf, aggregates, bounds) for t in term[1:]]
        rs = [r for _, r in parts]
        if kind == "neg":
            span = (-rs[0][1], -rs[0][0])
        elif kind in ("+", "-"):
            sign = 1 if kind == "+" else -1
            other = rs[1] if sign == 1 else (-rs[1][1], -rs[1][0])
            span = (rs[0][0] + other[0], rs[0][1] + other[1])
        else:
            span = _mul(rs[0], rs[1]) if kind == "*" else _div(rs[0], rs[1])
        span = _mean(term, aggregates, bounds) or _difference(term, aggregates, span)
        term = (kind, *(("agg", i) for i in range(len(parts))))
        values = [np.asarray(v, dtype=float) for v, _ in parts]
    with np.errstate(all="ignore"):
        return np.clip(evaluate(term, values), span[0], span[1]), span


def _divisor(term: tuple[Any, ...]) -> tuple[Any, ...]:
    """A divisor without its sign and number factors: ``-2 * COUNT(*)`` is ``COUNT(*)``."""
    while True:
        if term[0] == "neg":
            term = term[1]
        elif term[0] == "*" and term[1][0] == "num":
            term = term[2]
        elif term[0] in ("*", "/") and term[2][0] == "num":
            term = term[1]
        else:
            return term


def count_divisors(term: tuple[Any, ...], aggregates: Sequence[Any]) -> list[int]:
    """The counts (their aggregates' indices) that ``term`` divides by, times numbers alone."""
    if term[0] in ("agg", "num"):
        return []
    found = [i for t in term[1:] for i in count_divisors(t, aggregates)]
    if term[0] == "/":
        bottom = _divisor(term[2])
        if bottom[0] == "agg" and aggregates[bottom[1]].func in ("count", "count_col"):
            found.append(bottom[1])
    return found
