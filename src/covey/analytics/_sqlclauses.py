"""The clauses of a query around its SELECT list and WHERE: FROM, GROUP BY and refused ones.

Each check raises :class:`QueryError` naming the clause and where it starts.
"""

from __future__ import annotations

from sqlglot import exp

from covey.analytics._sqltext import DIALECT, TABLE_NAME, QueryError, SqlText, fold

_REFUSED_CLAUSES = {
    "joins": ("JOIN", "joins across tables or sites are not supported"),
    "order": ("ORDER BY", "ORDER BY is not supported: answers are aggregates, not rows"),
    "limit": ("LIMIT", "LIMIT is not supported: answers are aggregates, not rows"),
    "offset": ("OFFSET", "OFFSET is not supported"),
    "having": ("HAVING", "HAVING is not supported; filter the returned DataFrame instead"),
    "with_": ("WITH", "WITH (common table expressions) is not supported"),
    "with": ("WITH", "WITH (common table expressions) is not supported"),
    "qualify": ("QUALIFY", "QUALIFY is not supported"),
    "windows": ("WINDOW", "WINDOW is not supported"),
    "distinct": ("DISTINCT", "SELECT DISTINCT returns rows and is not supported"),
    "laterals": ("LATERAL", "LATERAL is not supported"),
    "pivots": ("PIVOT", "PIVOT is not supported"),
    "sample": ("SAMPLE", "SAMPLE is not supported"),
}


_TABLE_ARGS = {
    "sample": "TABLESAMPLE",
    "when": "AT/BEFORE (time travel)",
    "columns": "column aliases",
}


def table(tree: exp.Select, loc: SqlText) -> str:
    """The one table the query's FROM names, checked."""
    source = tree.args.get("from_") or tree.args.get("from")
    if source is None:
        raise QueryError("the query has no FROM clause")
    table = source.this
    if isinstance(table, exp.Table) and isinstance(table.this, exp.Func):
        raise QueryError(
            f"FROM{loc.where('FROM')} must name one table, not the function "
            f"{table.this.sql(DIALECT).split('(')[0]}: sites read only their own tables"
        )
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        raise QueryError(f"FROM{loc.where('FROM')} must name one table, not a subquery")
    if table.args.get("db") or table.args.get("catalog"):
        raise QueryError(f"FROM{loc.where('FROM')} must name a table without a schema")
    extra = sorted(k for k, v in table.args.items() if v and k not in ("this", "alias"))
    alias = table.args.get("alias")
    if alias is not None and alias.args.get("columns"):
        extra.append("columns")
    if extra:  # TABLESAMPLE, AT (VERSION => ...), ...: never silently answered over all rows
        words = ", ".join(_TABLE_ARGS.get(k, k.upper()) for k in extra)
        raise QueryError(f"FROM{loc.where('FROM')}: {words} on the table is not supported")
    name = str(table.name)
    if not TABLE_NAME.fullmatch(name):  # FROM '/etc/passwd' would have DuckDB read a file
        raise QueryError(
            f"FROM{loc.where('FROM')} names {name!r}, which is no site's table: a table's name "
            "is 1 to 63 ASCII letters, digits and underscores, not starting with a digit, and "
            "sites read no files, paths or URLs named in a query"
        )
    return name


def group_by(tree: exp.Select, loc: SqlText) -> list[str]:
    """The GROUP BY columns, in order, each a plain column named once."""
    group_by: list[str] = []
    group = tree.args.get("group")
    if group is not None:
        for node in group.expressions:
            if not isinstance(node, exp.Column) or node.table:
                raise QueryError(
                    f"GROUP BY{loc.where('GROUP')} takes column names, got {node.sql(DIALECT)}"
                )
            if fold(str(node.name)) in map(fold, group_by):
                raise QueryError(
                    f"GROUP BY{loc.where('GROUP')} names {node.name!r} twice; name each column once"
                )
            group_by.append(str(node.name))
    return group_by


def refuse_clauses(tree: exp.Select, loc: SqlText) -> None:
    """Refuse the first clause of :data:`_REFUSED_CLAUSES` the query has, saying where."""
    for key, (word, why) in _REFUSED_CLAUSES.items():
        if key in tree.args and tree.args.get(key):
            at = loc.where(word.split()[0])
            if not at and key == "joins":  # FROM t, u: a join without the word
                raise QueryError(f"FROM{loc.where('FROM')} names more than one table, and {why}")
            raise QueryError(f"{word}{at}: {why}")
