"""Comparisons that would order a text column by a number written as text, refused.

``n > '100'`` on a column of text compares texts, and ``'9' > '100'``: a site
whose CSV left ``n`` text (``1 234``, a stray letter) would count the wrong rows
with nobody seeing them to notice. The planner notes each order comparison
(``<``, ``<=``, ``>``, ``>=``, ``BETWEEN``) of a column with a quoted literal
that reads as a number; a site where that column holds text refuses the query,
naming the column and its type there, as it refuses ``n > 100`` (a number
against text) for its types alone. A comparison of such a column with ``=``,
``<>`` or ``IN`` stays a comparison of texts (a code such as ``'02139'``).

A DATE column compared with a quoted literal is compared as the instant it
names (see :func:`at_instants`), as a TIMESTAMP column is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from covey.analytics._sqltext import DIALECT, QueryError, fold

__all__ = ["at_instants", "number_orders", "refuse_text_orders"]

_ORDERS = (exp.GT, exp.GTE, exp.LT, exp.LTE)
_EQUALS = (exp.EQ, exp.NEQ)


def _number(node: Any) -> bool:
    """Whether ``node`` is a quoted literal that reads as a finite number (``'100'``)."""
    if not (isinstance(node, exp.Literal) and node.is_string):
        return False
    try:
        return math.isfinite(float(node.this))
    except ValueError:
        return False


def _pairs(node: Any) -> list[tuple[Any, Any]]:
    """The (side, other side) pairs an order comparison ``node`` compares."""
    if isinstance(node, _ORDERS):
        return [(node.this, node.expression), (node.expression, node.this)]
    if isinstance(node, exp.Between):
        return [(node.this, node.args.get("low")), (node.this, node.args.get("high"))]
    return []


def number_orders(conditions: Sequence[exp.Expression]) -> tuple[tuple[str, str], ...]:
    """``(column, comparison)`` of each column ordered by a number written as text."""
    found: list[tuple[str, str]] = []
    for cond in conditions:
        for node in cond.walk():
            for side, other in _pairs(node):
                if isinstance(side, exp.Column) and _number(other):
                    found.append((str(side.name), node.sql(DIALECT)))
    return tuple(dict.fromkeys(found))


def refuse_text_orders(orders: Sequence[tuple[str, str]], kinds: Mapping[str, str]) -> None:
    """Refuse the query if a column it orders by a number's text holds text here.

    Raises:
        QueryError: naming the column, its type at this site and the comparison.
    """
    for column, comparison in orders:
        kind = next((k for c, k in kinds.items() if fold(c) == fold(column)), "")
        if kind != "VARCHAR":
            continue
        raise QueryError(
            f"{comparison} orders column {column!r}, which holds text ({kind}) at this site, "
            "by a number written as text: it would compare the texts ('9' > '100'); "
            f"the site must hold {column!r} as numbers (a CSV's column of numbers stays text "
            "where a value is no number, such as '1 234'), or compare it with = or IN"
        )


def _compared(node: Any) -> list[tuple[Any, Any]]:
    """The (side, other side) pairs any comparison ``node`` compares, ``IN`` too."""
    if isinstance(node, _EQUALS):
        return [(node.this, node.expression), (node.expression, node.this)]
    if isinstance(node, exp.In):
        return [(node.this, value) for value in node.expressions]
    return _pairs(node)


def at_instants(where: str | None, kinds: Mapping[str, str]) -> str | None:
    """``where`` with each quoted literal a DATE column is compared with read as a TIMESTAMP.

    DuckDB casts ``'2024-01-02 08:00'`` to a DATE column's type, dropping its
    time: ``d = '2024-01-02 08:00'`` holds on that day and ``d < '2024-01-02
    00:00:01'`` does not, where a TIMESTAMP column (pandas' ``datetime64``)
    compares the instants. A site holding the column as DATE would count other
    rows than one holding it as TIMESTAMP; read as a TIMESTAMP, the literal
    names the same instant at both (a day alone, ``'2024-01-02'``, is its
    midnight, as before). ``kinds``: the site's ``{column: DuckDB type}``.
    """
    dates = {fold(c) for c, kind in kinds.items() if kind.upper() == "DATE"}
    if where is None or not dates:
        return where
    import sqlglot

    tree = sqlglot.parse_one(where, read=DIALECT)
    changed = False
    for node in list(tree.walk()):
        for side, other in _compared(node):
            if (
                isinstance(side, exp.Column)
                and fold(str(side.name)) in dates
                and isinstance(other, exp.Literal)
                and other.is_string
            ):
                other.replace(exp.cast(other.copy(), "TIMESTAMP"))
                changed = True
    return tree.sql(DIALECT) if changed else where
