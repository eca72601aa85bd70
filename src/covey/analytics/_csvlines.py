"""Where a CSV file's header is: below comment lines at its top, or the line a skip says.

A file may begin with comment lines (``# exported by X, 2026``) that DuckDB's
reader would take for the header; and a skip its owner says may leave a blank
line for the header. See :mod:`covey.analytics._csvhead` for the header's checks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb

from covey.analytics._csvhead import (
    Dialect,
    comment_lines,
    first_lines,
    is_sep,
    is_value,
    shown,
    skip_hint,
)


def sniffed(
    con: duckdb.DuckDBPyConnection, name: str, text: str, path: Path, values: str
) -> Dialect:
    """What DuckDB's reader finds for ``path``, its header below any comment lines at its top.

    The reader may take a comment line (``# exported by X, 2026``) for the header, or
    find none; then the header is the line below the comment lines. A line of one
    field there (a title) above lines the reader splits is refused, naming it.
    """
    lead = comment_lines(path)
    if not lead:
        return Dialect(con, text, None, values)
    try:
        found: Dialect | None = Dialect(con, text, None, values)
    except duckdb.Error:  # the comment lines leave the reader no header it agrees on
        found = None
    if found is not None and found.skip >= lead and not found.comment:
        return found
    lines = first_lines(path, lead + 2)
    if found is not None and not found.comment and _names_numbers(lines[found.skip], found):
        return found  # a header whose first name begins '# ' ('# of visits'), rows below it
    if not "".join(lines[lead:]).strip():
        raise ValueError(
            f"{path} holds only comment lines ('# ...'), no header row: give it a header "
            "row naming its columns below them"
        )
    dialect = Dialect(con, text, lead, values)
    if found is not None and len(dialect.types) == 1 < len(found.types):
        top = lead + 1
        raise ValueError(
            f"line {top} of {path} ({shown(lines[top - 1])}), below its comment lines, would "
            "be read as the header of one column, "
            f"though DuckDB's reader splits the lines below at {found.delim!r}: if line {top} "
            f"is a title, remove it (or skip it too: {skip_hint(name, top)})"
        )
    if found is not None and not found.comment and found.delim not in ("", dialect.delim):
        # the '# ' line splits as the rows do at a delimiter the rows alone leave open
        # ('# weight;ward' above '5,5;A'): it is their header
        return found
    _refuse_either(name, path, lines, lead, dialect)
    return dialect


def _refuse_either(name: str, path: Path, lines: list[str], lead: int, dialect: Dialect) -> None:
    """Refuse a lone ``# `` line that may as well be the header of text columns below it.

    ``# patients,ward`` above ``x,A`` splits as the rows do, and no column of numbers
    or dates tells which line names them: read either way, a file loads wrongly.
    """
    if lead != 1 or is_sep(lines[0]) or any(kind != "VARCHAR" for kind in dialect.types):
        return
    try:
        cells = next(csv.reader([lines[0]], delimiter=dialect.delim or ",", quotechar='"'), [])
    except csv.Error:
        return
    if len(cells) == len(dialect.types) > 1:
        raise ValueError(
            f"line 1 of {path} ({shown(lines[0])}) may be a comment above the header on line 2 "
            f"({shown(lines[1])}) or the header itself, and its text columns do not tell "
            f"which: if it is a comment, {skip_hint(name, 1)}; if it names the columns, "
            f"{skip_hint(name, 0)}"
        )


def _names_numbers(line: str, dialect: Dialect) -> bool:
    """Whether ``line``, read as the header, names a column of numbers or dates by a name.

    Then the lines below it are rows (a header of names above them would have made
    that column text): ``line`` is the header (``# of visits,ward`` above ``3,A``),
    not a comment.
    """
    try:
        cells = next(csv.reader([line], delimiter=dialect.delim or ",", quotechar='"'), [])
    except csv.Error:
        return False
    return len(cells) == len(dialect.types) and any(
        kind != "VARCHAR" and not is_value(cell.strip())
        for cell, kind in zip(cells, dialect.types, strict=True)
    )


def check_skip(name: str, path: Path, skip: int) -> None:
    """Refuse a said ``skip`` that leaves a blank line for the header, naming the line below.

    DuckDB's reader fails on such a file (``Conversion Error: CSV Error on Line: 3``),
    or names the columns ``column0``, ``column1``: a title, a blank line, then the header
    is two lines above the header, not one.
    """
    lines = first_lines(path, skip + 20)
    if lines[skip].strip():
        return
    below = next((i for i in range(skip, len(lines)) if lines[i].strip()), None)
    ends = "the file ends there" if not lines[skip] else "it is blank"
    where = (
        f"the first line below it that is not blank is line {below + 1} "
        f"({shown(lines[below])}); if that is the header, say so: {skip_hint(name, below)}"
        if below is not None
        else "give the number of lines above the header"
    )
    raise ValueError(f"skip={skip} makes line {skip + 1} of {path} the header, but {ends}: {where}")
