"""The SELECT list of a query: which column of the answer is which, in what order, named how.

The answer's columns are those of the SELECT list, in its order and named as
DuckDB names them: an item's alias, a group column as SELECT spells it, an
aggregate by its SQL text as written. A GROUP BY column the SELECT list leaves
out still comes first, so each row says which group it is. A name SQL has not
(the empty quoted name ``""``) and two columns of one name, which a DataFrame
would hold as one, are refused, naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlglot import exp
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

from covey.analytics._formula import Formula, attach, evaluate, is_formula, read_formula
from covey.analytics._formula_range import within
from covey.analytics._sqlclauses import alias_hint, qualified
from covey.analytics._sqltext import DIALECT, QueryError, SqlText, fold


@dataclass(frozen=True, slots=True)
class Output:
    """One column of the answer.

    Args:
        name: Its name in the answer.
        kind: ``"group"`` (the keys of a GROUP BY column), ``"aggregate"`` or
            ``"formula"`` (arithmetic over aggregates).
        index: Which GROUP BY column, aggregate or formula of the plan it shows.
        aliased: Whether the name is an alias (``AS name``).
    """

    name: str
    kind: str
    index: int
    aliased: bool = False


def refuse_empty_names(tree: exp.Expression, loc: SqlText) -> None:
    """Refuse the empty quoted name ``""``: DuckDB has no such name ("zero-length identifier")."""
    for node in tree.walk():
        if isinstance(node, exp.Identifier) and node.this == "":
            empty = [
                t.start for t in loc.tokens if t.token_type == TokenType.IDENTIFIER and not t.text
            ]
            at = loc.at(empty[0]) if empty else ""
            raise QueryError(
                f'the empty name ""{at} names no column and can be no alias: SQL has no '
                "empty name (DuckDB refuses a zero-length quoted identifier); name it with "
                "at least one character"
            )


Reader = Callable[[exp.Expression, str, SqlText, str], Any]


def select_list(
    tree: exp.Select, loc: SqlText, group_by: list[str], read: Reader
) -> tuple[list[Any], tuple[Output, ...], tuple[Formula, ...]]:
    """The aggregates of the SELECT list, the answer's columns and the formulas.

    The aggregates come in SELECT order, then those only a formula names
    (``SUM(a) / SUM(b)``: see :mod:`~covey.analytics._formula`).

    Args:
        tree: The parsed query.
        loc: Its text, for where a refused item starts.
        group_by: The GROUP BY columns; one SELECT spells otherwise is renamed as it
            spells it (``GROUP BY sex``, ``SELECT SEX``).
        read: Reads an aggregate item: ``read(node, name, loc, text_as_written)``.
    """
    texts = loc.select_texts()
    folded = [fold(g) for g in group_by]
    aggregates: list[Any] = []
    items: list[Output] = []
    formulas: list[tuple[str, tuple[Any, ...], list[Any]]] = []
    for i, item in enumerate(tree.expressions):
        node, alias = (item.this, item.alias) if isinstance(item, exp.Alias) else (item, None)
        if isinstance(node, exp.Star):
            raise QueryError(f"SELECT *{loc.where('*')} is row-level output and is not supported")
        if isinstance(node, exp.Column):
            if node.table:
                raise qualified(node, loc)
            if fold(str(node.name)) not in folded:
                raise QueryError(
                    f"the column {node.name}{loc.where(node.name)} is neither aggregated nor in "
                    f"GROUP BY{alias_hint(tree, group_by)}; row-level output is not supported"
                )
            at = folded.index(fold(str(node.name)))
            group_by[at] = str(node.name)
            items.append(Output(str(alias) if alias else str(node.name), "group", at, bool(alias)))
            continue
        text = texts[i] if i < len(texts) and texts[i] else node.sql(DIALECT)
        name = str(alias) if alias else text.strip()
        if is_formula(node):
            items.append(Output(name, "formula", len(formulas), bool(alias)))
            formulas.append((name, *read_formula(node, name, loc, read)))
            continue
        items.append(Output(name, "aggregate", len(aggregates), bool(alias)))
        aggregates.append(read(node, name, loc, text.strip()))
    names = {o.name for o in items} | {a.name for a in aggregates}
    done = tuple(Formula(n, attach(t, leaves, aggregates, names)) for n, t, leaves in formulas)
    if not aggregates:
        raise QueryError("the query has no aggregate; row-level output is not supported")
    selected = {o.index for o in items if o.kind == "group"}
    unselected = [Output(g, "group", k) for k, g in enumerate(group_by) if k not in selected]
    _refuse_shared_names(unselected, items)
    return aggregates, (*unselected, *items), done


def _refuse_shared_names(unselected: list[Output], items: list[Output]) -> None:
    """Refuse two columns of the answer of one name: a DataFrame reads them as one."""
    keys = {o.name for o in (*unselected, *items) if o.kind == "group"}
    seen = {o.name for o in unselected}
    for o in items:
        if o.kind != "group" and o.name in keys:  # that column holds the group keys
            what = f"the alias {o.name!r}" if o.aliased else f"the aggregate {o.name}"
            raise QueryError(
                f"{what} is the name of a GROUP BY column, whose keys the answer shows under "
                "that name; give another alias"
            )
        if o.name in seen:
            raise QueryError(
                f"two columns of the answer would be named {o.name!r} (the SELECT list gives "
                "that name twice), and a DataFrame holds one column of a name; give one of "
                "them an alias (AS another_name)"
            )
        seen.add(o.name)


def answer_columns(
    outputs: Sequence[Output],
    aggregates: Sequence[Any],
    keys: list[tuple[Any, ...]],
    values: dict[str, Any],
    suppressed: np.ndarray,
    formulas: Sequence[Formula] = (),
    noisy: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The answer's columns in order: each group's keys, and each aggregate's values.

    Args:
        outputs: The plan's :attr:`~covey.analytics._sql.Plan.outputs`.
        aggregates: The plan's aggregates.
        keys: Each group's key, one value per GROUP BY column.
        values: Each aggregate's values (an array, or a list of a histogram's bins),
            by the aggregate's name.
        suppressed: Which groups are suppressed (their values NaN).
        formulas: The plan's formulas, evaluated over the aggregates' values.
        noisy: Under DP, the columns' public bounds: each step of a formula is kept
            within the range they give its true value
            (:mod:`~covey.analytics._formula_range`); None evaluates it as written.
    """
    data: dict[str, Any] = {}
    for out in outputs:
        if out.kind == "group":
            data[out.name] = [k[out.index] for k in keys]
            continue
        if out.kind == "formula":
            term, operands = formulas[out.index].term, [values[a.name] for a in aggregates]
            if noisy is None:
                found = evaluate(term, operands)
            else:
                found = within(term, operands, aggregates, noisy)
            data[out.name] = np.where(suppressed, np.nan, found)
            continue
        found = values[aggregates[out.index].name]
        if isinstance(found, np.ndarray):
            data[out.name] = np.where(suppressed, np.nan, found.astype(float))
        else:
            data[out.name] = [np.nan if s else c for c, s in zip(found, suppressed, strict=True)]
    return data
