"""Which rows a statistic reads, and so which of its clipped values it uses.

A statistic over a column reads the rows where that column holds a value; a
survival curve reads those where both its time and its event do. A value
clipped in a row no statistic shown reads is in no answer, and is not counted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from covey.analytics._tables import quote


def clip_columns(stats: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns whose clipped values a stage counts, in a fixed order.

    A survival curve's event column is among them: it is read as 0 or 1, and a
    value outside is counted as clipped.
    """
    cols = {str(s["col"]) for s in stats if s["op"] in ("sum", "sq", "bins", "km")}
    return sorted(cols | {str(s["event"]) for s in stats if s["op"] == "km"})


def reads_columns(stat: Mapping[str, Any]) -> list[str]:
    """The columns that must hold values in a row for a clipping statistic to read it."""
    if stat["op"] not in ("sum", "sq", "bins", "km"):
        return []
    cols = [str(stat["col"])]
    return [*cols, str(stat["event"])] if stat["op"] == "km" else cols


def readers_of(
    stats: Sequence[Mapping[str, Any]], col: str, present: Collection[str] | None = None
) -> tuple[int, ...]:
    """The statistics (their indices) clipping ``col`` that read a row holding ``present``.

    None for ``present``: a row where every column holds a value.
    """
    return tuple(
        i
        for i, s in enumerate(stats)
        if col in clip_columns([s]) and (present is None or set(reads_columns(s)).issubset(present))
    )


def support_expr(stat: Mapping[str, Any]) -> str:
    """The rows of a group a statistic reads: all, or those where its columns hold values.

    Of a statistic with a condition of its own (an aggregate's FILTER), those it holds on.
    """
    op, where = stat["op"], stat.get("where")
    if where is not None:
        return f"{support_expr({**stat, 'where': None})} FILTER (WHERE TRY({where}))"
    if op == "count":
        return "COUNT(*)"
    if op == "km":
        col, event = quote(str(stat["col"])), quote(str(stat["event"]))
        return f"COUNT(*) FILTER (WHERE {col} IS NOT NULL AND {event} IS NOT NULL)"
    return f"COUNT({quote(str(stat['col']))})"


__all__: Sequence[str] = ["clip_columns", "readers_of", "reads_columns", "support_expr"]
