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

import dataclasses
import functools
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
from covey.analytics._sqlaggregates import Aggregate, aggregate, function_name
from covey.analytics._sqltext import DIALECT, QueryError, SqlText
from covey.analytics._wheretext import number_orders

MAX_WHERE_DEPTH = 500  # how deep a WHERE may nest: DuckDB at the sites reads at most 1000
KEPT_PLANS = 128  # the plans a process keeps, of the texts it parsed last
MAX_KEPT_TEXT = 32_768  # a longer text is parsed again each time (the memo stays small)


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
        number_orders: ``(column, comparison)`` of each column a condition orders
            by a number written as text (``n > '100'``), which a site refuses where
            the column holds text (see :mod:`~covey.analytics._wheretext`).
    """

    sql: str
    table: str
    where: str | None
    where_columns: tuple[str, ...]
    group_by: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]
    outputs: tuple[Output, ...]
    formulas: tuple[Formula, ...] = ()
    number_orders: tuple[tuple[str, str], ...] = ()

    def conditions(self) -> list[str]:
        """The row conditions the sites run: the WHERE, and each aggregate's own FILTER."""
        found = [self.where] + [a.where for a in self.aggregates]
        return list(dict.fromkeys(c for c in found if c is not None))

    def columns(self) -> set[str]:
        """Every column the query reads."""
        cols = set(self.where_columns) | set(self.group_by)
        for a in self.aggregates:
            cols.update(a.where_columns)
            if a.column is not None:
                cols.add(a.column)
            if a.func == "kaplan_meier":
                cols.add(str(a.args[0]))
        return cols


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
    return function_name(node) if isinstance(node, exp.Func) else node.key.upper()


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


def _filtered(node: exp.Expression, name: str, _: SqlText, written: str, *, loc: SqlText) -> Any:
    """The aggregate of SELECT item ``node``, with the condition of its own FILTER if any."""
    if not isinstance(node, exp.Filter):
        return aggregate(node, name, loc, written)
    cond = _sqlfilter.condition(node)
    if _depth(cond) > MAX_WHERE_DEPTH:
        raise QueryError(f"FILTER nests too deeply (over {MAX_WHERE_DEPTH} levels); simplify it")
    where, columns = _check_where(cond, loc)
    call = re.split(r"\)\s*FILTER\b", written, maxsplit=1, flags=re.IGNORECASE)[0] + ")"
    found = aggregate(node.this, name, loc, call)
    return dataclasses.replace(found, where=where, where_columns=columns)


def _plan(sql: str) -> Plan:
    _check_text(sql)  # the tokenizer fails on None or a number with a bare TypeError
    loc = SqlText(sql)
    loc.check_nesting()
    tree = _parse(sql, loc)
    refuse_empty_names(tree, loc)
    _sqlclauses.refuse_clauses(tree, loc)
    table = _sqlclauses.table(tree, loc)
    group_by = _sqlclauses.group_by(tree, loc)
    # FILTER (WHERE c) on every aggregate: WHERE c; else each COUNT, SUM or AVG its own
    _sqlfilter.pull_filter(tree, table, loc)
    where = tree.args.get("where")
    if where is not None and _depth(where.this) > MAX_WHERE_DEPTH:
        raise QueryError(f"WHERE nests too deeply (over {MAX_WHERE_DEPTH} levels); simplify it")
    where_sql, where_cols = _check_where(where.this, loc) if where is not None else (None, ())
    aggregates, outputs, formulas = select_list(
        tree, loc, group_by, functools.partial(_filtered, loc=loc)
    )
    group = tuple(group_by)
    orders = number_orders([tree])  # the WHERE's and each FILTER's
    aggs = tuple(aggregates)
    return Plan(sql, table, where_sql, where_cols, group, aggs, outputs, formulas, orders)
