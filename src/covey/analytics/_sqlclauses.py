"""The clauses of a query around its SELECT list and WHERE: FROM, GROUP BY and refused ones.

Each check raises :class:`QueryError` naming the clause and where it starts.
"""

from __future__ import annotations

from sqlglot import exp

from covey.analytics._sqltext import DIALECT, TABLE_NAME, QueryError, SqlText, fold
from covey.analytics._sqlwritten import source

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


def _group_all(tree: exp.Select) -> list[exp.Expression]:
    """``GROUP BY ALL``: the SELECT list's plain columns, in its order, as DuckDB groups."""
    items = (i.this if isinstance(i, exp.Alias) else i for i in tree.expressions)
    columns: dict[str, exp.Expression] = {}
    for item in items:
        if isinstance(item, exp.Column):  # SELECT region, region AS again: one group column
            columns.setdefault(fold(str(item.name)) if not item.table else item.sql(), item)
    return list(columns.values())


def _aliases(tree: exp.Select) -> dict[str, str]:
    """Each alias of a SELECT item, folded, and the item's SQL."""
    items = tree.expressions
    return {fold(str(i.alias)): i.this.sql(DIALECT) for i in items if isinstance(i, exp.Alias)}


def qualified(node: exp.Column, loc: SqlText) -> QueryError:
    """The refusal of a column named with its table (``p.age``), saying what to write."""
    return QueryError(
        f"qualified column {node.sql(DIALECT)}{loc.where(node.sql(DIALECT))} is not supported: "
        f"name the column alone ({node.this.sql(DIALECT)}); a query reads one table"
    )


def _not_a_column(node: exp.Expression, loc: SqlText) -> QueryError:
    """The refusal of a GROUP BY item that is no plain column, saying what to write."""
    got = source(node, loc) or node.sql(DIALECT)
    hint = ""
    if isinstance(node, exp.Literal) and not node.is_string:
        hint = " (a position in the SELECT list is not supported: name the column)"
    elif isinstance(node, exp.Column) and node.table:
        hint = f" (name the column alone: {node.this.sql(DIALECT)})"
    return QueryError(f"GROUP BY{loc.where('GROUP')} takes column names, got {got}{hint}")


def alias_hint(tree: exp.Select, group_by: list[str]) -> str:
    """Why a SELECT column is not among ``group_by`` when GROUP BY names its alias, or ''."""
    aliases = _aliases(tree)
    named = [g for g in group_by if fold(g) in aliases]
    if not named:
        return ""
    return (
        f" (GROUP BY {named[0]} names the alias of {aliases[fold(named[0])]}, and GROUP BY "
        f"takes only the table's column names: write GROUP BY {aliases[fold(named[0])]})"
    )


def group_by(tree: exp.Select, loc: SqlText) -> list[str]:
    """The GROUP BY columns, in order, each a plain column named once."""
    group_by: list[str] = []
    group = tree.args.get("group")
    if group is not None:
        nodes = group.expressions
        if group.args.get("all") and not nodes:
            nodes = _group_all(tree)
        for node in nodes:
            if not isinstance(node, exp.Column) or node.table:
                raise _not_a_column(node, loc)
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
