"""``FILTER (WHERE cond)`` on the aggregates of a query: the query's WHERE, or each its own.

The sites apply a query's row condition, its WHERE, to every aggregate they
compute. When every aggregate of the SELECT list carries the same FILTER, the
answer is that of the query with the condition ANDed to its WHERE, which the
planner then checks as any WHERE (the same nodes allowed, the same nesting bound).
Otherwise each FILTER stays on its aggregate, which the sites compute over the
rows of the WHERE its condition holds on (checked as a WHERE is): a count, a
sum or a mean, each a SELECT item of its own (``COUNT(*) FILTER (WHERE sex =
'F'), COUNT(*) FILTER (WHERE sex = 'M')``), sums over rows like any other. Any
other aggregate with a FILTER of its own, or one inside arithmetic, is refused,
naming the rewrite (each condition as the WHERE of a query of its own).
"""

from __future__ import annotations

from sqlglot import exp

from covey.analytics._sqltext import DIALECT, QueryError, SqlText

#: The aggregates a FILTER of their own is answered on: sums over the rows it keeps
OWN_FILTER = (exp.Count, exp.Sum, exp.Avg)


def _is_call(node: exp.Expression) -> bool:
    """Whether ``node`` calls an aggregate (or a function read as one, HISTOGRAM too)."""
    return isinstance(node, exp.AggFunc | exp.Anonymous)


def condition(node: exp.Filter) -> exp.Expression:
    """The condition of a ``FILTER (WHERE cond)``."""
    cond: exp.Expression = node.expression
    inner = cond.this if isinstance(cond, exp.Where) else cond
    return inner if isinstance(inner, exp.Expression) else cond


def _own(f: exp.Filter, tree: exp.Select) -> bool:
    """Whether ``f`` is a SELECT item of its own (aliased or not) on a COUNT, SUM or AVG."""
    item = f.parent.parent if isinstance(f.parent, exp.Alias) else f.parent
    return item is tree and type(f.this) in OWN_FILTER


def pull_filter(tree: exp.Select, table: str, loc: SqlText) -> None:
    """Move the FILTER condition all aggregates share into the query's WHERE, in place.

    Aggregates with different conditions, or some with none, keep theirs.

    Raises:
        QueryError: An aggregate other than a COUNT, SUM or AVG, or one inside
            arithmetic, carries a FILTER that not every aggregate shares.
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
    conditions = list(dict.fromkeys(condition(f).sql(DIALECT) for f in filters))
    if bare or len(conditions) > 1:
        other = next((f for f in filters if not _own(f, tree)), None)
        if other is None:
            return  # each COUNT, SUM and AVG over the rows its own condition keeps
        first = condition(other).sql(DIALECT)
        why = (
            f"{bare[0].sql(DIALECT)} has none"
            if bare
            else f"they carry {len(conditions)} different conditions"
        )
        rewrite = f"SELECT ... FROM {table} WHERE {first}"  # noqa: S608 - a message
        raise QueryError(
            f"FILTER{loc.where('FILTER')} of {other.sql(DIALECT)} is answered as the query's "
            f"WHERE, so every aggregate of the query must carry the same FILTER, and {why} "
            "(a COUNT, SUM or AVG that is a SELECT item of its own may carry a FILTER of its "
            "own); ask for the aggregates of each condition in a query of their own, the "
            f"condition as its WHERE ({rewrite})"
        )
    cond = condition(filters[0]).copy()
    for f in filters:
        f.replace(f.this)
    where = tree.args.get("where")
    combined = cond if where is None else exp.and_(where.this, cond)
    tree.set("where", exp.Where(this=combined))
