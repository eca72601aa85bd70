"""Sums that pass the largest float64: refused, naming the aggregates that read them.

A sum of values (or of their squared deviations) is a float64 at every step:
over one site's rows, with its noise, and across the sites at the server. Past
the largest float64 (about 1.8e308) it is infinite; neither an infinity nor the
largest float64 in its place is an answer, so the query is refused instead,
with the aggregates it would have answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covey.analytics._sql import Plan
from covey.analytics._sqltext import QueryError, fold

SUMMED = ("sum", "sq")
"""The statistics that sum values (not counts): the only ones that can pass float64."""

_READERS = {
    "sum": ("sum", "avg", "var_samp", "var_pop", "stddev_samp", "stddev_pop"),
    "sq": ("var_samp", "var_pop", "stddev_samp", "stddev_pop"),
}


def overflow_message(p: Plan, stat: Mapping[str, Any], where: str) -> str:
    """Why ``stat`` cannot be answered: its sum ``where`` passes the largest float64.

    Args:
        p: The query's plan, whose aggregates reading the statistic are named.
        stat: A ``sum`` or ``sq`` statistic.
        where: Which sum overflowed ("over this site's rows", "across the sites").
    """
    col = str(stat.get("col"))
    funcs = _READERS.get(str(stat["op"]), ())
    names = [
        a.name
        for a in p.aggregates
        if a.column is not None and fold(a.column) == fold(col) and a.func in funcs
    ]
    what = "values" if stat["op"] == "sum" else "squared deviations from the mean"
    return (
        f"{', '.join(names) or 'the query'} cannot be answered: the sum of the {what} of "
        f"{col!r} {where} overflows float64 (it passes the largest float64, about 1.8e308); "
        f"declare bounds of {col!r} nearer its values"
    )


def refuse_overflow(
    p: Plan, stats: Sequence[Mapping[str, Any]], vectors: Sequence[np.ndarray], where: str
) -> None:
    """Refuse (QueryError) a summed statistic whose vector is not finite: it overflowed."""
    for stat, v in zip(stats, vectors, strict=True):
        if stat["op"] in SUMMED and not np.isfinite(v).all():
            raise QueryError(overflow_message(p, stat, where))
