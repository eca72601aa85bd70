"""What a site checks in a stage's request: only the statistics its own plan of the SQL needs.

A site parses the SQL itself and checks it against its policy; the statistics
of a stage come from the server alongside. Without this check a server could
send a harmless SQL text (``SELECT SUM(salary) ...``) and ask for another
statistic over the same column (its unclipped ``MAX``, bins one unit wide, the
hashed set of its values), past everything the policy checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from covey.analytics._policy import PolicyError
from covey.analytics._sql import Plan
from covey.analytics._sqlaggregates import Aggregate

_MOMENTS = ("sum", "avg", "var_samp", "var_pop", "stddev_samp", "stddev_pop")
_VARIANCES = ("var_samp", "var_pop", "stddev_samp", "stddev_pop")
_QUANTILES = ("quantile_cont", "quantile_disc")

#: For each statistic a stage may ask for, the aggregates of the SQL that need it.
NEEDED_BY: dict[str, tuple[str, ...]] = {
    "count_col": ("count_col", *_MOMENTS, *_QUANTILES),
    "sum": _MOMENTS,
    "sq": _VARIANCES,
    "min": ("min",),
    "max": ("max",),
    "bins": ("histogram", *_QUANTILES),
    "distinct": ("approx_distinct",),
    "prefix": ("top_k",),
    "km": ("kaplan_meier",),
}


def _same(a: Any, b: float) -> bool:
    try:
        return math.isclose(float(a), b, rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return False


def _histogram_bins(a: Aggregate, stat: Mapping[str, Any]) -> bool:
    """Whether ``stat`` asks for exactly the bins of the histogram ``a``."""
    low, high, nbins = a.args
    width = (float(high) - float(low)) / int(nbins)
    lows, widths, highs = stat.get("low"), stat.get("width"), stat.get("high", [])
    if not (
        isinstance(lows, Sequence) and isinstance(widths, Sequence) and isinstance(highs, Sequence)
    ):
        return False
    return (
        stat.get("bins") == int(nbins)
        and all(_same(v, float(low)) for v in lows)
        and all(_same(v, width) for v in widths)
        and all(_same(v, float(high)) for v in highs)
    )


def _filtered(a: Aggregate, op: str, stat: Mapping[str, Any]) -> bool:
    """Whether ``stat`` is one of those the COUNT, SUM or AVG ``a`` with a FILTER needs."""
    if op == "count":
        return a.func == "count" and stat.get("col") is None
    return a.func in NEEDED_BY.get(op, ()) and stat.get("col") == a.column


def _serves(a: Aggregate, stat: Mapping[str, Any]) -> bool:
    """Whether the aggregate ``a`` of the SQL needs the statistic ``stat``."""
    op = stat["op"]
    if a.where is not None or stat.get("where") is not None:  # a FILTER of its own
        return a.where == stat.get("where") and _filtered(a, op, stat)
    if a.func not in NEEDED_BY.get(op, ()) or stat.get("col") != a.column:
        return False
    if op == "bins" and a.func == "histogram":
        return _histogram_bins(a, stat)
    if op == "km":
        low = stat.get("low")
        finite = isinstance(low, int | float) and math.isfinite(low)
        same = stat.get("event") == str(a.args[0]) and _same(stat.get("step"), float(a.args[1]))
        return finite and same
    return True


def check_stats(p: Plan, stats: Any) -> None:
    """Refuse a request asking for a statistic the SQL does not need.

    Args:
        p: The site's own plan of the request's SQL.
        stats: The statistics the request asks for.

    Raises:
        PolicyError: Naming the first statistic the SQL does not ask for.
    """
    if not isinstance(stats, Sequence) or isinstance(stats, str | bytes):
        raise PolicyError("a request's statistics must be a list")
    for stat in stats:
        if not isinstance(stat, Mapping) or not isinstance(stat.get("op"), str):
            raise PolicyError("each statistic of a request is a mapping with an 'op'")
        if stat["op"] == "count" and stat.get("where") is None:
            continue
        if not any(_serves(a, stat) for a in p.aggregates):
            where = "" if stat.get("where") is None else f" where {str(stat['where'])[:200]!r}"
            raise PolicyError(
                f"the request asks for {stat['op']!r} of {stat.get('col')!r}{where}, which the "
                f"SQL does not ask for ({p.sql[:200]})"
            )


__all__: Sequence[str] = ["NEEDED_BY", "check_stats"]
