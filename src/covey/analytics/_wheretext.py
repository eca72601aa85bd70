"""Comparisons that would order a text column by a number written as text, refused.

``n > '100'`` on a column of text compares texts, and ``'9' > '100'``: a site
whose CSV left ``n`` text (``1 234``, a stray letter) would count the wrong rows
with nobody seeing them to notice. The planner notes each order comparison
(``<``, ``<=``, ``>``, ``>=``, ``BETWEEN``) of a column with a quoted literal
that reads as a number; a site where that column holds text refuses the query,
naming the column and its type there, as it refuses ``n > 100`` (a number
against text) for its types alone. A comparison of such a column with ``=``,
``<>`` or ``IN`` stays a comparison of texts (a code such as ``'02139'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from covey.analytics._sqltext import DIALECT, QueryError, fold

__all__ = ["number_orders", "refuse_text_orders"]

_ORDERS = (exp.GT, exp.GTE, exp.LT, exp.LTE)


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
