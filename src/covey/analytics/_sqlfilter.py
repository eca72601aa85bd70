"""``FILTER (WHERE cond)`` on the aggregates of a query, answered as the query's WHERE.

The sites apply a query's one row condition, its WHERE, to every aggregate they
compute. When every aggregate of the SELECT list carries the same FILTER, the
answer is that of the query with the condition ANDed to its WHERE, which the
planner then checks as any WHERE (the same nodes allowed, the same nesting bound).
Aggregates with different conditions, or some with none, would need the sites
to apply several conditions in one query: that is refused, naming the rewrite
(each condition as the WHERE of a query of its own).
"""

from __future__ import annotations

from sqlglot import exp

from covey.analytics._sqltext import DIALECT, QueryError, SqlText


def _is_call(node: exp.Expression) -> bool:
    """Whether ``node`` calls an aggregate (or a function read as one, HISTOGRAM too)."""
    return isinstance(node, exp.AggFunc | exp.Anonymous)


def _condition(node: exp.Filter) -> exp.Expression:
    cond: exp.Expression = node.expression
    inner = cond.this if isinstance(cond, exp.Where) else cond
    return inner if isinstance(inner, exp.Expression) else cond


def pull_filter(tree: exp.Select, table: str, loc: SqlText) -> None:
    """Move the FILTER condition all aggregates share into the query's WHERE, in place.

    Raises:
        QueryError: Aggregates carry different FILTER conditions, or some carry none.
    """
    filters = [f for item in tree.expressions for f in item.find_all(exp.Filter)]
    if not filters:
        return
    calls = [n for item in tree.expressions for n in item.walk() if _is_call(n)]
    # a call in a condition is no aggregate of the SELECT list (WHERE's checks refuse it)
    bare = [
        c
        for c in calls
        if not isinstance(c.parent, exp.Filter) and c.find_ancestor(exp.Where) is None
    ]
    conditions = list(dict.fromkeys(_condition(f).sql(DIALECT) for f in filters))
    if bare or len(conditions) > 1:
        first = conditions[0]
        why = (
            f"{bare[0].sql(DIALECT)} has none"
            if bare
            else f"they carry {len(conditions)} different conditions"
        )
        rewrite = f"SELECT ... FROM {table} WHERE {first}"  # noqa: S608 - a message
        raise QueryError(
            f"FILTER{loc.where('FILTER')} is answered as the query's WHERE, so every aggregate "
            f"of the query must carry the same FILTER, and {why}; ask for the aggregates of "
            f"each condition in a query of their own, the condition as its WHERE ({rewrite})"
        )
    cond = _condition(filters[0]).copy()
    for f in filters:
        f.replace(f.this)
    where = tree.args.get("where")
    combined = cond if where is None else exp.and_(where.this, cond)
    tree.set("where", exp.Where(this=combined))
