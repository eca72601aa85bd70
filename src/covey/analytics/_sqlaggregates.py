"""The aggregates of a query's SELECT list, read from sqlglot's tree.

Each call (``COUNT(*)``, ``AVG(age)``, ``QUANTILE_CONT(x, 0.9)``, ``HISTOGRAM(x,
0, 10, 5)``) becomes an :class:`Aggregate`: its kind, the column it reads and
its literal arguments, each checked; anything else is refused with a
:class:`QueryError` naming the call and where it starts in the SQL text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from covey.analytics import _sqlwritten
from covey.analytics._sqltext import DIALECT, QueryError, SqlText


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate of the SELECT list.

    Args:
        name: The output column name: its SQL text as written, or its alias.
        func: The kind: ``count``, ``count_col``, ``sum``, ``avg``, ``var_samp``,
            ``var_pop``, ``stddev_samp``, ``stddev_pop``, ``min``, ``max``,
            ``quantile_cont``, ``quantile_disc``, ``histogram``, ``approx_distinct``,
            ``top_k`` or ``kaplan_meier``.
        column: The column aggregated (None for ``COUNT(*)``).
        args: Literal arguments: the quantile; ``(low, high, bins)`` of a histogram;
            ``(k,)`` of top-k; ``(event_column, step)`` of Kaplan-Meier.
        where: Its own ``FILTER (WHERE cond)`` condition as DuckDB SQL, checked as a
            WHERE is (None: the query's rows alone); see :mod:`~covey.analytics._sqlfilter`.
        where_columns: Columns that condition reads.
    """

    name: str
    func: str
    column: str | None
    args: tuple[Any, ...] = ()
    where: str | None = None
    where_columns: tuple[str, ...] = ()


_SIMPLE: dict[type[exp.Expression], str] = {
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Variance: "var_samp",
    exp.VariancePop: "var_pop",
    exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
    exp.Min: "min",
    exp.Max: "max",
    exp.Median: "median",
    exp.ApproxDistinct: "approx_distinct",
}


def _literal(node: exp.Expression | None, what: str, loc: SqlText) -> float | int | str:
    value = node
    negative = False
    if isinstance(value, exp.Neg):
        negative, value = True, value.this
    if not isinstance(value, exp.Literal):
        shown = node.sql(DIALECT) if node is not None else "nothing"
        raise QueryError(f"{what} must be a literal number, got {shown}{loc.where(what)}")
    if value.is_string:
        return str(value.this)
    number = float(value.this) if any(c in value.this for c in ".eE") else int(value.this)
    return -number if negative else number


def _column(node: exp.Expression | None, func: str, loc: SqlText) -> str:
    if isinstance(node, exp.Column) and not node.table:
        return str(node.name)
    shown = "nothing" if node is None else _sqlwritten.source(node, loc) or node.sql(DIALECT)
    hint = "" if node is None else _sqlwritten.arrow_hint(node, loc)
    if node is not None and node.find(exp.Case, exp.If) is not None:
        hint = (
            "; for the rows meeting a condition write COUNT(*) FILTER (WHERE cond) or "
            f"{func}(col) FILTER (WHERE cond), or put the condition in the query's WHERE"
        )
    raise QueryError(
        f"{func} takes a column name, not the expression {shown}{loc.where(func)}; "
        f"sites aggregate columns only{hint}"
    )


def function_name(node: Any) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    if isinstance(node, exp.Func):
        return str(type(node).sql_name()).upper()
    return str(node.key).upper()


def _count(node: exp.Count, name: str, loc: SqlText) -> Aggregate:
    arg = node.this
    if isinstance(arg, exp.Distinct):
        raise QueryError(
            f"COUNT(DISTINCT ...){loc.where('COUNT')} is not decomposable into sums; "
            "use APPROX_COUNT_DISTINCT"
        )
    if isinstance(arg, exp.Star):
        return Aggregate(name, "count", None)
    if isinstance(arg, exp.Null):
        raise QueryError(f"COUNT(NULL){loc.where('COUNT')} counts no row; write COUNT(*)")
    if isinstance(arg, exp.Literal | exp.Boolean) or (
        isinstance(arg, exp.Neg) and isinstance(arg.this, exp.Literal)
    ):  # COUNT(1): a value on every row, so every row
        return Aggregate(name, "count", None)
    return Aggregate(name, "count_col", _column(arg, "COUNT", loc))


def _quantile(node: exp.Expression, name: str, loc: SqlText, fname: str) -> Aggregate:
    col = _column(node.this, fname, loc)
    q = _literal(node.args.get("expression") or node.args.get("quantile"), fname, loc)
    if isinstance(q, str) or not 0.0 <= q <= 1.0:
        raise QueryError(f"the quantile of {name} must be a number in [0, 1], got {q!r}")
    kind = "quantile_cont" if isinstance(node, exp.PercentileCont) else "quantile_disc"
    return Aggregate(name, kind, col, (float(q),))


def _top_k(node: exp.ApproxTopK, name: str, loc: SqlText) -> Aggregate:
    col = _column(node.this, "APPROX_TOP_K", loc)
    k = _literal(node.expression, "APPROX_TOP_K", loc)
    if not isinstance(k, int) or not 1 <= k <= 100:
        raise QueryError(f"APPROX_TOP_K needs k in 1..100, got {k!r}")
    return Aggregate(name, "top_k", col, (k,))


def _histogram(node: exp.Anonymous, name: str, loc: SqlText) -> Aggregate:
    args = node.expressions
    if len(args) != 4:
        raise QueryError(
            f"HISTOGRAM(column, low, high, bins) takes 4 arguments{loc.where('HISTOGRAM')}"
        )
    low, high, bins = (_literal(a, "HISTOGRAM", loc) for a in args[1:])
    if isinstance(low, str) or isinstance(high, str) or not low < high:
        raise QueryError(f"HISTOGRAM needs low < high, got {low!r}, {high!r}")
    if not math.isfinite(float(high) - float(low)):  # 1e400 reads as inf
        raise QueryError(
            f"HISTOGRAM needs finite low and high whose difference is a finite float64, "
            f"got {low!r}, {high!r}"
        )
    if not isinstance(bins, int) or not 1 <= bins <= 10_000:
        raise QueryError(f"HISTOGRAM needs 1 to 10000 bins, got {bins!r}")
    return Aggregate(name, "histogram", _column(args[0], "HISTOGRAM", loc), (low, high, bins))


def _kaplan_meier(node: exp.Anonymous, name: str, loc: SqlText) -> Aggregate:
    args = node.expressions
    if len(args) != 3:
        raise QueryError(
            f"KAPLAN_MEIER(time, event, step) takes 3 arguments{loc.where('KAPLAN_MEIER')}"
        )
    step = _literal(args[2], "KAPLAN_MEIER", loc)
    if isinstance(step, str) or not (step > 0 and math.isfinite(step)):
        raise QueryError(f"KAPLAN_MEIER needs a positive, finite time step, got {step!r}")
    time = _column(args[0], "KAPLAN_MEIER", loc)
    return Aggregate(name, "kaplan_meier", time, (_column(args[1], "KAPLAN_MEIER", loc), step))


def aggregate(node: exp.Expression, name: str, loc: SqlText, written: str) -> Aggregate:
    """The aggregate of SELECT item ``node`` named ``name``, written ``written`` in the query."""
    agg = _read_aggregate(node, name, loc, written)
    head = written.split("(", 1)[0].strip().upper()
    takes, given = (1 if head == "MEDIAN" else _ARITY.get(agg.func, 1)), loc.arguments(written)
    if given != takes:  # MAX(x, 3) is DuckDB's 3 largest values, not MAX(x)
        raise QueryError(
            f"{head}{loc.where(head)} takes {takes} argument{'s' * (takes > 1)}, got {given} "
            f"in {written}; federated analytics answers no other form of it"
        )
    return agg


_ARITY = {"quantile_cont": 2, "quantile_disc": 2, "top_k": 2, "kaplan_meier": 3, "histogram": 4}


def _read_aggregate(node: exp.Expression, name: str, loc: SqlText, written: str) -> Aggregate:
    fname = function_name(node)
    head = written.split("(", 1)[0].strip()
    if isinstance(node, exp.Func) and "(" in written and head.replace("_", "").isalnum():
        fname = head.upper()  # as the query spells it (QUANTILE_CONT, not PERCENTILE_CONT)
    if isinstance(node, exp.Count):
        return _count(node, name, loc)
    for cls, func in _SIMPLE.items():
        if isinstance(node, cls) and type(node).__name__ == cls.__name__:
            col = _column(node.this, fname, loc)
            if func == "median":
                return Aggregate(name, "quantile_cont", col, (0.5,))
            return Aggregate(name, func, col)
    if isinstance(node, exp.PercentileCont | exp.PercentileDisc | exp.Quantile):
        return _quantile(node, name, loc, fname)
    if isinstance(node, exp.ApproxTopK):
        return _top_k(node, name, loc)
    if isinstance(node, exp.Anonymous) and fname == "HISTOGRAM":
        return _histogram(node, name, loc)
    if isinstance(node, exp.Anonymous) and fname == "KAPLAN_MEIER":
        return _kaplan_meier(node, name, loc)
    if isinstance(node, exp.Window):
        raise QueryError(f"window functions (OVER){loc.where('OVER')} are not supported")
    called = isinstance(node, exp.Func) and written.upper().startswith(fname)  # not x::INT
    what = f"the function {fname}" if called else written
    first = written.split("(", 1)[0].split()[0] if written.strip() else fname
    raise QueryError(
        f"{what}{loc.where(first)} is not supported in federated analytics: each SELECT "
        "item is a GROUP BY column or one of COUNT, SUM, AVG, VAR_SAMP/VAR_POP/VARIANCE, "
        "STDDEV_SAMP/STDDEV_POP/STDDEV, MIN, MAX, MEDIAN, QUANTILE_CONT, QUANTILE_DISC, "
        "HISTOGRAM, APPROX_COUNT_DISTINCT, APPROX_TOP_K, KAPLAN_MEIER over a column"
    )
