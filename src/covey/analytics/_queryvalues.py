"""Each aggregate's answer from the sums its query's stages gathered.

A count as summed, means and variances from their sums (see
:mod:`~covey.analytics._moments`), MIN and MAX from each site's answer, a
histogram's bins, a distinct count from its buckets, a survival curve, the
quantiles and heavy hitters from their own stages; values over fewer rows than
the minimum group size are not shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.analytics._dp import noise_threshold
from covey.analytics._exchange import StageResult
from covey.analytics._formula_range import count_divisors
from covey.analytics._moments import moment
from covey.analytics._sqlaggregates import Aggregate
from covey.analytics._stats import Quantiles, TopK, survival

if TYPE_CHECKING:
    from covey.analytics._query import _Query

#: The chance that the noise alone lifts a count of no value to where a mean is shown
MEAN_NOISE_CHANCE = 0.025


def filtered_ops(a: Aggregate) -> tuple[str, ...]:
    """The statistics a COUNT, SUM or AVG with a FILTER of its own is answered from."""
    return (
        ("count",)
        if a.func == "count"
        else ("count_col",)
        if a.func == "count_col"
        else (
            "count_col",
            "sum",
        )
    )


def first_filtered(
    aggregates: Sequence[Aggregate],
) -> tuple[list[dict[str, Any]], dict[tuple[Any, ...], int]]:
    """The first stage's ``COUNT(*)``, and the statistics of each FILTER of its own, keyed."""
    stats: list[dict[str, Any]] = [{"op": "count"}]
    index: dict[tuple[Any, ...], int] = {("count",): 0}
    for a in aggregates:
        for op in filtered_ops(a) if a.where is not None else ():
            key = stat_key(op, a)
            if key not in index:
                index[key] = len(stats)
                stats.append({"op": op, "col": a.column, "where": a.where})
    return stats, index


def stat_key(op: str, a: Aggregate) -> tuple[Any, ...]:
    """The key of aggregate ``a``'s statistic ``op`` among a stage's (its FILTER's own)."""
    return ("count",) if op == "count" and a.where is None else (op, a.column, a.where)


def value(
    q: _Query,
    a: Aggregate,
    first: StageResult,
    index: dict[tuple[Any, ...], int],
    centers: dict[str, np.ndarray],
    squares: dict[str, np.ndarray],
    quantiles: Quantiles,
    topk: TopK,
    precision: dict[str, Any],
) -> Any:
    v = first.vectors
    k = q.decl["min_group_size"]
    if a.where is not None:
        return _filtered(q, a, v, index)
    if a.func == "count":
        return v[0]
    key = ("count_col", a.column)
    few = v[index[key]] < k if key in index else np.zeros(q.groups, dtype=bool)
    if a.func == "count_col":
        return np.where(few, np.nan, v[index[("count_col", a.column)]])
    if a.func in ("min", "max"):
        stacked = np.stack([site[index[(a.func, a.column)]] for site in first.per_site.values()])
        # fmin/fmax skip NaN and give NaN for an all-empty group, without a warning
        reduce = np.fmin if a.func == "min" else np.fmax
        return reduce.reduce(stacked, axis=0)
    if a.func == "histogram":
        counts = v[index[("hist", a.name)]][:, 1:-1]
        # a bin is a group too: fewer records than the minimum are not shown
        small = counts < q.decl["min_group_size"]
        return list(np.where(small, np.nan, counts))
    if a.func == "approx_distinct":
        buckets = v[index[("distinct", a.column)]]
        zero = np.sum(buckets < 0.5, axis=1)
        m = buckets.shape[1]
        # every bucket set: far more values than the buckets can tell (about m ln m
        # and up): no estimate, NaN as its precision, rather than an infinite count
        est = np.where(zero > 0, -m * np.log(np.maximum(zero, 1) / m), np.nan)
        t = est / m
        precision[a.name] = np.sqrt(m * (np.exp(t) - t - 1)) / np.maximum(est, 1)
        return est
    if a.func == "kaplan_meier":
        curve = v[index[("km", a.name)]]
        low, step = float(first_stat_low(q, a)), float(a.args[1])
        precision[a.name] = {"times": [low + k * step for k in range(curve.shape[2])]}
        k = float(q.decl["min_group_size"])
        return [survival(row[0], row[1], k) for row in curve]
    if a.func.startswith("quantile"):
        precision[a.name] = quantiles.width(a) / 2
        return _quantile(q, a, quantiles)
    if a.func == "top_k":
        values, top_counts = topk.run(a)
        precision[a.name] = {"counts": top_counts}
        return values
    n = v[index[("count_col", a.column)]]
    s = v[index[("sum", a.column)]]
    if a.func != "sum":  # a mean over a noisy count the noise alone could give: noise
        few = few | _unavailable(q, a, n)
    # fewer values than the minimum (a sum over one bonus among forty rows is that bonus)
    n = np.where(few, 0.0, n)
    col = str(a.column)
    bounds = q.decl["bounds"][col]
    return moment(a.func, n, s, bounds, centers.get(col), squares.get(col))


def mean_level(q: _Query) -> float:
    """The count of values a mean (or a variance) needs to be shown.

    The minimum group size and, under DP, the level the count's noise alone
    passes with probability :data:`MEAN_NOISE_CHANCE`: below it the noisy count
    may be all noise (a group of no record), and a noisy sum over it gives a mean
    anywhere in the bounds (post-processing: it costs no privacy).
    """
    level = float(max(1, int(q.decl["min_group_size"])))
    if q.multiplier is None:
        return level
    terms = 1 if q.opt["secure"] else len(q.fed.cids)
    noise = noise_threshold(q.opt["mechanism"], q.multiplier, terms, MEAN_NOISE_CHANCE)
    return max(level, noise)


def _unavailable(q: _Query, a: Aggregate, n: np.ndarray) -> np.ndarray:
    """Where mean ``a`` over ``n`` values is not shown; each such group noted with the reason."""
    level = mean_level(q)
    low = ~(n >= level)  # a NaN count too
    if np.any(low):
        if q.multiplier is None:
            why = f"fewer values of {a.column!r} than the minimum group size, {level:g}"
        else:
            why = (
                f"the noisy count of values of {a.column!r} is under {level:.4g}, which the "
                "noise alone passes 1 time in 40 (a group of no value), so the mean is noise"
            )
        q.unavailable[a.name] = (low, why)
    return low


def rank_level(q: _Query, multiplier: float) -> float:
    """The rows the DP noise on one rank count of a quantile's bisection passes 1 time in 40.

    A rank count is the sum of up to ``q.bins + 1`` noisy bin counts (the bins
    below the order statistic and the count below the interval), so its noise is
    that of as many cells (post-processing: it costs no privacy).
    """
    terms = (q.bins + 1) * (1 if q.opt["secure"] else len(q.fed.cids))
    return noise_threshold(q.opt["mechanism"], multiplier, terms, MEAN_NOISE_CHANCE)


def _quantile(q: _Query, a: Aggregate, quantiles: Quantiles) -> np.ndarray:
    """A quantile per group; under DP, NaN where its ranks' noise can pass the whole group.

    There the bisection may follow the noise to bins no record is in: the answer
    is noise, whatever the precision of the bisection (each such group is noted
    in ``q.unavailable`` with the reason, and the rank error in ``q.rank_error``).
    """
    found = quantiles.value(a)
    if q.multiplier is None:
        return found
    level = rank_level(q, q.multiplier)
    q.rank_error[a.name] = level
    low = ~(quantiles.counts[a.name] >= level)
    if np.any(low):
        q.unavailable[a.name] = (
            low,
            f"the noisy count of values of {a.column!r} is under {level:.4g}, the rows the "
            "noise on one rank count of the bisection passes 1 time in 40, so the quantile "
            "is noise",
        )
    return np.where(low, np.nan, found)


def noisy_divisions(q: _Query, values: dict[str, Any]) -> dict[str, np.ndarray]:
    """Under DP, each formula's groups whose count divided by is one the noise alone could give.

    ``SUM(x) / COUNT(*)`` over a group of no record is a noisy sum over a noisy
    count, anywhere in the bounds; where a count a formula divides by is under
    :func:`mean_level`, as a mean there, the formula is not shown (its groups
    are noted in ``q.unavailable`` with the reason).
    """
    found: dict[str, np.ndarray] = {}
    if q.multiplier is None:
        return found
    level = mean_level(q)
    aggregates = q.plan.aggregates
    for f in q.plan.formulas:
        low = np.zeros(q.groups, dtype=bool)
        why = ""
        for i in count_divisors(f.term, aggregates):
            few = ~(np.asarray(values[aggregates[i].name], dtype=float) >= level)
            if np.any(few & ~low) and not why:
                why = (
                    f"the noisy count it divides by, {aggregates[i].name}, is under "
                    f"{level:.4g}, which the noise alone passes 1 time in 40 (a group of no "
                    "value), so it is noise"
                )
            low = low | few
        if np.any(low):
            q.unavailable[f.name] = (low, why)
            found[f.name] = low
    return found


def first_stat_low(q: _Query, a: Aggregate) -> float:
    """The low end of an aggregate column's merged bounds."""
    return float(q.decl["bounds"][a.column][0])


def _filtered(
    q: _Query, a: Aggregate, v: list[np.ndarray], index: dict[tuple[Any, ...], int]
) -> np.ndarray:
    """A COUNT, SUM or AVG over the rows its own FILTER keeps; under the minimum rows, NaN."""
    n = v[index[stat_key(filtered_ops(a)[0], a)]]
    few = n < q.decl["min_group_size"]  # one record's value, or whether it is there
    if a.func in ("count", "count_col"):
        return np.where(few, np.nan, n)
    s = v[index[stat_key("sum", a)]]
    if a.func == "avg":
        few = few | _unavailable(q, a, n)
    found = moment(a.func, np.where(few, 0.0, n), s, q.decl["bounds"][str(a.column)], None, None)
    return np.where(few, np.nan, found)
