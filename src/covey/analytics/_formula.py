"""Arithmetic over aggregates in the SELECT list: ``SUM(los) / SUM(cost)``, ``AVG(age) + 1``.

The sites compute the aggregates a formula names as they would compute them
asked alone (the same statistics, shared with the other items of the query);
the server then evaluates the formula over the answered values. That is
post-processing: under differential privacy a formula costs nothing beyond its
aggregates, and the query is charged for exactly those. A formula is ``+ - * /``
(and a leading minus) over aggregates and number literals; division by zero,
as a missing or suppressed value, gives NULL (NaN), as DuckDB's ``/`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlglot import exp

from covey.analytics._sqltext import DIALECT, QueryError, SqlText
from covey.analytics._sqlwritten import source

MAX_DEPTH = 64  # how deep a formula may nest (evaluated by recursion at the server)
SCALAR = frozenset(
    {
        "count",
        "count_col",
        "sum",
        "avg",
        "var_samp",
        "var_pop",
        "stddev_samp",
        "stddev_pop",
        "min",
        "max",
    }
)
_OPS: dict[type[exp.Expression], str] = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/"}
_REWRITE = "ask for the aggregates themselves and compute it from the answer's columns"


@dataclass(frozen=True, slots=True)
class Formula:
    """One SELECT item of arithmetic over aggregates.

    Args:
        name: The output column name: its SQL text as written, or its alias.
        term: ``("agg", i)`` (the plan's ``i``-th aggregate), ``("num", value)``,
            ``("neg", term)`` or ``(op, left, right)`` with ``op`` one of ``+ - * /``.
    """

    name: str
    term: tuple[Any, ...]


def _is_call(node: Any) -> bool:
    return isinstance(node, exp.AggFunc) or (
        isinstance(node, exp.Anonymous) and str(node.name).upper() in ("HISTOGRAM", "KAPLAN_MEIER")
    )


def is_formula(node: exp.Expression) -> bool:
    """Whether the SELECT item ``node`` is an expression over aggregates (not one alone).

    Those but ``+ - * /`` over aggregates and numbers are refused when read, naming
    what is not supported (``ROUND(AVG(x), 2)``, ``SUM(x) % 2``).
    """
    if _is_call(node) or isinstance(node, exp.Window | exp.Filter):  # FILTER: its own
        return False
    return any(_is_call(n) for n in node.walk())


Reader = Callable[[exp.Expression, str, SqlText, str], Any]


@dataclass(slots=True)
class _Reading:
    name: str
    loc: SqlText
    read: Reader
    leaves: list[Any]

    def term(self, node: exp.Expression, depth: int = 0) -> tuple[Any, ...]:
        if depth > MAX_DEPTH:
            raise QueryError(f"{self.name} nests too deeply (over {MAX_DEPTH} levels); simplify it")
        if isinstance(node, exp.Paren):
            return self.term(node.this, depth + 1)
        if isinstance(node, exp.Neg):
            return ("neg", self.term(node.this, depth + 1))
        if type(node) in _OPS:
            left, right = self.term(node.this, depth + 1), self.term(node.expression, depth + 1)
            return (_OPS[type(node)], left, right)
        if isinstance(node, exp.Literal) and not node.is_string:
            value = float(node.this)
            if not math.isfinite(value):
                raise QueryError(f"the number {node.this} in {self.name} is not a finite float64")
            return ("num", value)
        if _is_call(node):
            return ("agg", self.aggregate(node))
        shown = source(node, self.loc) or node.sql(DIALECT)
        what = f"the column {shown}" if isinstance(node, exp.Column) else shown
        within = "" if depth == 0 else f" in {self.name}"
        raise QueryError(
            f"{what}{self.loc.where(shown.split('(')[0])}{within} is not supported: "
            "arithmetic in the SELECT list takes + - * / over aggregates and number literals "
            f"only; {_REWRITE}"
        )

    def aggregate(self, node: exp.Expression) -> int:
        written = node.sql(DIALECT)
        agg = self.read(node, written, self.loc, written)
        if agg.func not in SCALAR:
            head = written.split("(", 1)[0].upper()
            raise QueryError(
                f"{head}{self.loc.where(head)} in {self.name} is not supported in arithmetic: "
                "only COUNT, SUM, AVG, VAR/STDDEV, MIN and MAX, each one number per group, "
                f"are; {_REWRITE}"
            )
        self.leaves.append(agg)
        return len(self.leaves) - 1


def read_formula(
    node: exp.Expression, name: str, loc: SqlText, read: Reader
) -> tuple[tuple[Any, ...], list[Any]]:
    """The term of formula ``node`` and the aggregates its ``("agg", i)`` leaves name."""
    reading = _Reading(name, loc, read, [])
    return reading.term(node), reading.leaves


def attach(
    term: tuple[Any, ...], leaves: Sequence[Any], aggregates: list[Any], names: set[str]
) -> tuple[Any, ...]:
    """``term`` with its leaves indexes into ``aggregates``, adding those not there yet.

    An aggregate the query already asks for (the same function of the same column)
    is shared; one it does not is added under its SQL text, made unique among ``names``.
    """
    if term[0] == "agg":
        leaf = leaves[term[1]]
        for i, a in enumerate(aggregates):
            if (a.func, a.column, a.args, a.where) == (leaf.func, leaf.column, leaf.args, None):
                return ("agg", i)
        name, k = leaf.name, 1
        while name in names:
            k += 1
            name = f"{leaf.name} ({k})"
        names.add(name)
        aggregates.append(type(leaf)(name, leaf.func, leaf.column, leaf.args))
        return ("agg", len(aggregates) - 1)
    if term[0] == "num":
        return term
    return (term[0], *(attach(t, leaves, aggregates, names) for t in term[1:]))


def evaluate(term: tuple[Any, ...], values: Sequence[np.ndarray]) -> Any:
    """The value of ``term`` per group, over the aggregates' ``values`` (NaN for NULL)."""
    kind = term[0]
    if kind == "agg":
        return np.asarray(values[term[1]], dtype=float)
    if kind == "num":
        return np.float64(term[1])
    if kind == "neg":
        return -evaluate(term[1], values)
    left, right = evaluate(term[1], values), evaluate(term[2], values)
    with np.errstate(all="ignore"):
        if kind == "+":
            return left + right
        if kind == "-":
            return left - right
        if kind == "*":
            return left * right
        return np.where(right == 0, np.nan, left / right)
