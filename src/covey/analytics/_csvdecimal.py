"""A CSV file's decimal separator, when its reading does not say it: told by its numbers.

A file of ``;``-delimited fields (a European spreadsheet's export) may write
``1,5`` with a decimal comma, its thousands grouped by points (``1.234``), or
``1.5`` with a decimal point. A value such as ``1.234`` (one group of three
digits) reads either way: 1.234 or 1234. So the file's numbers are read:
where one of them can only be written with a decimal comma (``1,5``,
``1.234,5``) the file is read with one, where one can only be written with a
decimal point (``7.25``, ``0.125``) with a point, and where none tells, while a
column holds numbers such as ``1.234``, the file is refused naming the column
and the value, and the option that says which (``decimal=``). So is a file with
both kinds. A comma-separated file is read with a decimal point, as before (a
decimal comma there is quoted, ``"1,5"``, and a column of such stays text).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from covey.analytics._csvhead import Dialect, header_cells, string
from covey.analytics._tables import per_column

#: A number whose one group of three digits reads either way: ``1.234``, ``1,234``
AMBIGUOUS = r"[-+]?[1-9]\d{0,2}[.,]\d{3}"
#: A number written with a decimal comma (``1,5``, ``1.234,5``), or its thousands by points
_COMMA = r"[-+]?(\d{1,3}(\.\d{3})+|\d*),\d+|[-+]?\d{1,3}(\.\d{3}){2,}"
#: A number written with a decimal point (``7.25``, ``1,234.5``), or its thousands by commas
_POINT = r"[-+]?(\d{1,3}(,\d{3})+|\d*)\.\d+|[-+]?\d{1,3}(,\d{3}){2,}"


def _hint(name: str) -> str:
    return (
        f"say which: covey site --csv-decimal {name}=, (a decimal comma, points grouping "
        f"thousands) or --csv-decimal {name}=. (a decimal point), or "
        "covey.analytics.CSV(path, decimal=',') or decimal='.' in Python"
    )


def guess_decimal(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, text: str, dialect: Dialect
) -> str:
    """The decimal separator of a CSV file read without one given: ``"."`` or ``","``.

    Raises:
        ValueError: Its numbers do not tell, or tell both (see the module's docstring).
    """
    if dialect.delim == ",":
        return "."
    reader = (
        f"read_csv({text}, header = false, all_varchar = true, skip = {dialect.skip + 1}, "
        f"{dialect.sql})"
    )
    try:
        empty = con.execute(f"SELECT * FROM {reader} LIMIT 0")  # noqa: S608
        cols = [str(d[0]) for d in empty.description or ()]
        found = per_column(con, reader, cols, _scan)
    except duckdb.Error:  # no rows below the header, or none DuckDB reads: nothing to tell
        return "."
    if found is None:
        return "."
    # numbers only: a note's '1.5' among words tells nothing
    numbers = [(i, f) for i, f in enumerate(found) if f[0] is not False]
    comma = next(((i, f[1]) for i, f in numbers if f[1] is not None), None)
    point = next(((i, f[2]) for i, f in numbers if f[2] is not None), None)
    either = next(((i, f[3]) for i, f in numbers if f[3] is not None), None)
    header = _header(con, text, dialect, len(found))
    if comma is not None and point is not None:
        raise ValueError(
            f"{path} writes numbers with a decimal comma (column {header[comma[0]]!r}: "
            f"{comma[1]!r}) and with a decimal point (column {header[point[0]]!r}: "
            f"{point[1]!r}): {_hint(name)}; a column written the other way is read as text"
        )
    if comma is not None or point is not None:
        return "," if comma is not None else "."
    if either is not None:
        value = either[1]
        sep = value[-4]
        kind, groups = ("point", "points") if sep == "." else ("comma", "commas")
        raise ValueError(
            f"column {header[either[0]]!r} of {path} holds numbers such as {value!r}, which "
            f"reads as {value.replace(',', '.')} with a decimal {kind} or as "
            f"{value.replace(sep, '')} with {groups} grouping thousands, and no number of the "
            f"file tells which: {_hint(name)}"
        )
    return "."


def _scan(c: str) -> tuple[str, ...]:
    """Whether column ``c`` holds numbers alone; one written with a decimal comma, point, either."""
    v, has_digit = f"trim({c})", f"regexp_matches({c}, '\\d')"
    return (
        f"bool_and(regexp_full_match({v}, '[-+]?[\\d.,]+')) FILTER (WHERE {has_digit})",
        f"min({v}) FILTER (WHERE regexp_full_match({v}, {string(_COMMA)}) AND NOT "
        f"regexp_full_match({v}, {string(AMBIGUOUS)}))",
        f"min({v}) FILTER (WHERE regexp_full_match({v}, {string(_POINT)}) AND NOT "
        f"regexp_full_match({v}, {string(AMBIGUOUS)}))",
        f"min({v}) FILTER (WHERE regexp_full_match({v}, {string(AMBIGUOUS)}))",
    )


def _header(con: duckdb.DuckDBPyConnection, text: str, dialect: Dialect, count: int) -> list[str]:
    """The names of the header's ``count`` cells (``column i`` where it has fewer)."""
    cells = header_cells(con, text, dialect)
    return [
        str(cells[i]).strip() if i < len(cells) and cells[i] is not None else f"column {i + 1}"
        for i in range(count)
    ]
