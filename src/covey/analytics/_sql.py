"""Parse an analyst's SQL with sqlglot and check it against what federated analytics can answer.

The result is a :class:`Plan`: one table, an optional WHERE condition, GROUP BY
columns and a list of :class:`Aggregate` items, each of which the server later
rewrites into sums the sites compute. Anything else is refused with a
:class:`QueryError` naming the clause and where it starts in the SQL text.
Sites parse the same SQL themselves with :func:`plan`, so they never run a
condition they have not checked. A process keeps the plans of the texts it
parsed last (many sites simulated in one process parse a query once).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from covey.analytics import _sqlclauses, _sqlfilter, _sqlwritten
from covey.analytics._formula import Formula
from covey.analytics._select import Output, refuse_empty_names, select_list
from covey.analytics._sqltext import DIALECT, QueryError, SqlText

MAX_WHERE_DEPTH = 500  # how deep a WHERE may nest: DuckDB at the sites reads at most 1000
KEPT_PLANS = 128  # the plans a process keeps, of the texts it parsed last
MAX_KEPT_TEXT = 32_768  # a longer text is parsed again each time (the memo stays small)


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
    """

    name: str
    func: str
    column: str | None
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked query: what to aggregate, over which rows, grouped by what.

    Args:
        sql: The SQL text as given.
        table: The one table queried.
        where: The WHERE condition regenerated as DuckDB SQL (None for all rows).
        where_columns: Columns the condition reads.
        group_by: GROUP BY columns, in order.
        aggregates: The aggregates, in SELECT order.
        outputs: The answer's columns, in order: a GROUP BY column SELECT leaves out,
            then the SELECT list's items (see :func:`~covey.analytics._select.select_list`).
        formulas: The SELECT list's arithmetic over aggregates (``SUM(a) / SUM(b)``),
            which the server evaluates over the answered aggregates.
    """

    sql: str
    table: str
    where: str | None
    where_columns: tuple[str, ...]
    group_by: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]
    outputs: tuple[Output, ...]
    formulas: tuple[Formula, ...] = ()

    def columns(self) -> set[str]:
        """Every column the query reads."""
        cols = set(self.where_columns) | set(self.group_by)
        for a in self.aggregates:
            if a.column is not None:
                cols.add(a.column)
            if a.func == "kaplan_meier":
                cols.add(str(a.args[0]))
        return cols


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
_WHERE_NODES = (
    exp.And,
    exp.Or,
    exp.Not,
    exp.Paren,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Between,
    exp.In,
    exp.Is,
    exp.Like,
    exp.ILike,
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Neg,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Tuple,
)


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


def _fname(node: Any) -> str:
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


def _aggregate(node: exp.Expression, name: str, loc: SqlText, written: str) -> Aggregate:
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
    fname = _fname(node)
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


_TYPED = frozenset({"DATE", "TIME", "TIMESTAMP", "TIMESTAMPNTZ", "TIMESTAMPTZ"})


def _typed_literal(node: Any) -> bool:
    """Whether ``node`` is part of a date or time literal (``DATE '2024-01-31'``)."""
    cast = node.parent if isinstance(node, exp.DataType) else node
    return (
        type(cast) is exp.Cast
        and isinstance(cast.this, exp.Literal)
        and cast.this.is_string
        and isinstance(cast.to, exp.DataType)
        and not cast.to.expressions
        and cast.to.this.name in _TYPED
    )


_OPERATORS: dict[type, str] = {  # as written, not as sqlglot names them
    exp.NullSafeNEQ: "IS DISTINCT FROM",
    exp.NullSafeEQ: "IS NOT DISTINCT FROM",
    exp.DPipe: "||",
    exp.IntDiv: "//",
    exp.Mod: "%",
    exp.BitwiseAnd: "&",
    exp.BitwiseOr: "|",
    exp.BitwiseXor: "xor",
    exp.BitwiseLeftShift: "<<",
    exp.BitwiseRightShift: ">>",
    exp.BitwiseNot: "~",
    exp.SimilarTo: "SIMILAR TO",
    exp.Bracket: "[",
    exp.JSONExtract: "->",
    exp.JSONExtractScalar: "->>",
}


def _label(node: Any, loc: SqlText) -> str:
    """How the query wrote ``node``: its operator (its first token) or function name."""
    if isinstance(node, exp.Func) and "start" in node.meta:  # called by its name
        return str(loc.sql[node.meta["start"] : node.meta["end"] + 1]).upper()
    written = _sqlwritten.operator(node, loc)
    if written is not None:
        return written
    if type(node) in _OPERATORS:
        return _OPERATORS[type(node)]
    return _fname(node) if isinstance(node, exp.Func) else node.key.upper()


def _escape(node: Any, loc: SqlText) -> bool:
    """Whether ``node`` is the ESCAPE of a LIKE or ILIKE by one literal (``ESCAPE '!'``)."""
    if not (
        type(node) is exp.Escape
        and isinstance(node.this, exp.Like | exp.ILike)
        and isinstance(node.expression, exp.Literal)
        and node.expression.is_string
    ):
        return False
    if len(node.expression.this) > 1:  # DuckDB's error would be a syntax error at each site
        raise QueryError(
            f"ESCAPE{loc.where('ESCAPE')} takes one character (or none), got "
            f"{node.expression.sql(DIALECT)}"
        )
    return True


def _check_where(where: exp.Expression, loc: SqlText) -> tuple[str, tuple[str, ...]]:
    columns: list[str] = []
    for node in where.walk():
        if isinstance(node, exp.Select | exp.Subquery):
            raise QueryError(f"subqueries in WHERE{loc.nth('SELECT', 2)} are not supported")
        allowed = isinstance(node, _WHERE_NODES) or _typed_literal(node) or _escape(node, loc)
        if not allowed:
            label = _label(node, loc)
            hint = _sqlwritten.instead(label, node)
            raise QueryError(
                f"{label}{loc.where(label) or loc.where('WHERE')} is not allowed in WHERE; "
                + (f"{hint}; " if hint else "")
                + "use comparisons (=, <>, <, <=, >, >=), BETWEEN, IN, LIKE (ESCAPE '!' too), "
                "IS [NOT] NULL, AND, OR, NOT and + - * / on columns and literals (DATE "
                "'2024-01-31' among them)"
            )
        if isinstance(node, exp.Column):
            if node.table:
                raise _sqlclauses.qualified(node, loc)
            columns.append(str(node.name))
    return where.sql(DIALECT), tuple(dict.fromkeys(columns))


def _check_text(sql: Any) -> None:
    """Refuse a query that is not a string (None, a number, bytes, a list) before reading it."""
    if not isinstance(sql, str):
        raise QueryError(
            f"the query must be SQL text, got {type(sql).__name__} "
            "(query(sites, sql): the sites come first)"
        )


def _parse(sql: str, loc: SqlText) -> exp.Select:
    _check_text(sql)
    if not sql.strip():
        raise QueryError("the query is empty")
    try:
        trees = sqlglot.parse(sql, read=DIALECT)
    except (ParseError, TokenError) as exc:
        errors = getattr(exc, "errors", None) or []
        if errors:
            first = errors[0]
            said = str(first.get("description"))
            missing = re.match(r"Required keyword: '\w+' missing for <class '[\w.]*?(\w+)'>", said)
            if missing is not None:  # sqlglot's words for a clause with nothing after it
                said = f"{missing.group(1).upper()} is incomplete"
            raise QueryError(
                f"malformed SQL at line {first.get('line')}, column {first.get('col')}: {said}"
            ) from None
        raise QueryError(f"malformed SQL: {exc}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise QueryError(f"give exactly one SQL statement, got {len(trees)}")
    tree = trees[0]
    if isinstance(tree, exp.Union | exp.Intersect | exp.Except):
        word = tree.key.upper()
        raise QueryError(f"{word}{loc.where(word)} is not supported")
    if not isinstance(tree, exp.Select):
        raise QueryError(
            f"only SELECT statements are answered; this is not one: {sql.strip()[:60]!r}"
        )
    return tree


def plan(sql: str) -> Plan:
    """Parse and check ``sql``; raise :class:`QueryError` naming what is not supported.

    Args:
        sql: One SELECT statement over one table.

    Returns:
        The checked :class:`Plan`.

    Example:
        >>> p = plan("SELECT sex, AVG(age) FROM patients WHERE age > 18 GROUP BY sex")
        >>> p.table, p.group_by, p.aggregates[0].func
        ('patients', ('sex',), 'avg')

    A text parsed lately is answered with the same (immutable) plan, parsed and
    checked once; a refused text is parsed and refused each time.
    """
    if type(sql) is str and len(sql) <= MAX_KEPT_TEXT:
        return _kept_plan(sql)
    return _plan_on_thread(sql)


@functools.lru_cache(maxsize=KEPT_PLANS)
def _kept_plan(sql: str) -> Plan:
    """:func:`plan` of a text, kept (an error is raised, not kept)."""
    return _plan_on_thread(sql)


def _plan_on_thread(sql: Any) -> Plan:
    """Parse and check ``sql`` (see :func:`plan`) on a thread of its own."""
    # On a thread of its own: the parser's frames, not the caller's (a notebook, a
    # site's task handler), decide how deep a query may nest, the same everywhere.
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["plan"] = _plan(sql)
        except RecursionError:  # sqlglot parses and prints recursively
            box["error"] = QueryError(
                "the query nests too deeply (parentheses, NOT or operators); simplify it"
            )
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="covey-sql-plan", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box.pop("error")
    return box["plan"]  # type: ignore[no-any-return]


def _depth(node: exp.Expression) -> int:
    """How many levels the expression ``node`` nests (without recursion)."""
    deepest, todo = 0, [(node, 1)]
    while todo:
        current, level = todo.pop()
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in current.iter_expressions())
    return deepest


def _plan(sql: str) -> Plan:
    _check_text(sql)  # the tokenizer fails on None or a number with a bare TypeError
    loc = SqlText(sql)
    loc.check_nesting()
    tree = _parse(sql, loc)
    refuse_empty_names(tree, loc)
    _sqlclauses.refuse_clauses(tree, loc)
    table = _sqlclauses.table(tree, loc)
    group_by = _sqlclauses.group_by(tree, loc)
    _sqlfilter.pull_filter(tree, table, loc)  # FILTER (WHERE c) on every aggregate: WHERE c
    where = tree.args.get("where")
    if where is not None and _depth(where.this) > MAX_WHERE_DEPTH:
        raise QueryError(f"WHERE nests too deeply (over {MAX_WHERE_DEPTH} levels); simplify it")
    where_sql, where_cols = _check_where(where.this, loc) if where is not None else (None, ())
    aggregates, outputs, formulas = select_list(tree, loc, group_by, _aggregate)
    group = tuple(group_by)
    return Plan(sql, table, where_sql, where_cols, group, tuple(aggregates), outputs, formulas)
