"""A site's CSV file loaded into DuckDB: its header found and checked, missing values read.

DuckDB's reader guesses a CSV's dialect (delimiter, quotes) and which line is
its header; a wrong guess loads the data under other column names, or a number
column as text, and nobody sees the data to notice. So the guess is checked,
and a file it may be wrong about is refused, naming the file and its lines.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from covey.analytics._sqltext import fold
from covey.analytics._tables import check_names, columns, counted, quote, table_name
from covey.core._text import clipped

#: The values a CSV cell is read as missing (NULL) for, in every column: as pandas and R do
NA_VALUES = ("", "NA", "N/A", "n/a", "NULL", "null", "#N/A", ".")
_DELIMITERS = ",;\t|"


@dataclass(frozen=True)
class CSV:
    """A CSV file as a site's table, with the options its reading needs.

    A path alone (``"t.csv"``) reads as ``CSV("t.csv")``.

    Args:
        path: The file.
        skip: How many lines above the header to skip (None: DuckDB's reader finds
            the header, and a file where that guess could be wrong is refused). A
            number says which line is the header, and nothing is guessed.
        na: The cell values read as missing (NULL) in every column; an empty cell
            always is. Any other text in a column of numbers makes it a column of text.
        decimal: The decimal separator of the file's numbers, ``"."`` or ``","``
            (``40,5``, in a file of ``;``-delimited fields).

    Example:
        >>> CSV("visits.csv", skip=2).skip
        2
    """

    path: str | Path
    skip: int | None = None
    na: Sequence[str] = NA_VALUES
    decimal: str = "."

    def __post_init__(self) -> None:
        if self.skip is not None and (
            isinstance(self.skip, bool) or not isinstance(self.skip, int) or self.skip < 0
        ):
            raise ValueError(f"CSV skip= takes a number of lines (0 or more), got {self.skip!r}")
        if isinstance(self.na, str) or not all(isinstance(v, str) for v in self.na):
            raise ValueError(f"CSV na= takes a list of texts, got {self.na!r}")
        if self.decimal not in (".", ","):
            raise ValueError(f"CSV decimal= takes '.' or ',', got {self.decimal!r}")


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _shown(line: str) -> str:
    return repr(clipped(line.rstrip("\r\n"), 100))


def _lines(path: Path, n: int) -> list[str]:
    """The first ``n`` lines of ``path`` (a byte order mark left out)."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        return [f.readline() for _ in range(n)]


class _Dialect:
    """What DuckDB's sniffer finds for a CSV file: its dialect, skipped lines, columns."""

    def __init__(self, con: duckdb.DuckDBPyConnection, text: str, opts: CSV, values: str) -> None:
        skip = "" if opts.skip is None else f", skip = {opts.skip}"
        sniff = f"sniff_csv({text}, header = true{skip}, {values})"
        found = con.execute(
            f"SELECT Delimiter, Quote, Escape, Comment, SkipRows, Columns FROM {sniff}"  # noqa: S608
        ).fetchone()
        d, q, e, c, n, cols = found or (",", '"', '"', "", 0, [])
        self.delim, self.quote, self.escape, self.comment = (
            "" if v == "(empty)" else str(v) for v in (d, q, e, c)
        )
        self.skip = int(n) if opts.skip is None else opts.skip
        self.types = [str(col["type"]) for col in cols]
        self.sql = ", ".join(
            f"{k} = {_string(v)}"
            for k, v in (
                ("delim", self.delim),
                ("quote", self.quote),
                ("escape", self.escape),
                ("comment", self.comment),
            )
        )

    def fields(self, path: Path) -> Iterator[tuple[int, int]]:
        """(line, field count) of each row of ``path``, the header's first, as this dialect splits.

        Only read when a file is refused, to say where.
        """
        quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL if self.quote else csv.QUOTE_NONE
        escape = self.escape if self.escape and self.escape != self.quote else None
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
            for _ in range(self.skip):
                f.readline()
            rows = csv.reader(
                f,
                delimiter=self.delim or ",",
                quotechar=self.quote or None,
                escapechar=escape,
                quoting=quoting,
            )
            for row in rows:
                if row and not (self.comment and row[0].startswith(self.comment)):
                    yield rows.line_num + self.skip, len(row)


def _uneven(path: Path, dialect: _Dialect) -> str:
    """Which line of ``path`` has other than the header's count of fields (empty: none)."""
    rows = dialect.fields(path)
    try:
        top, n = next(rows, (0, 0))
        line, count = next(((i, k) for i, k in rows if k != n), (0, 0))
    except csv.Error:
        return ""
    if not line:
        return ""
    lines = _lines(path, line)
    return (
        f"line {line} ({_shown(lines[line - 1])}) has {counted(count, 'field')}, "
        f"line {top} ({_shown(lines[top - 1])}) {n}"
    )


def skip_hint(name: str, skip: int) -> str:
    """How to say a CSV's header is below ``skip`` lines: ``covey site``'s flag, or Python's."""
    return (
        f"covey site --csv-skip {name}={skip}, or covey.analytics.CSV(path, skip={skip}) in Python"
    )


def _check_header(
    name: str, path: Path, dialect: _Dialect, con: Any, text: str, values: str
) -> None:
    """Refuse a file whose header DuckDB's reader may have guessed wrong.

    A row with more fields than the header makes the reader take it for the
    header, skipping the file's own header and the rows above (``a,b`` then
    ``1,2`` then ``3,4,5`` loads as the columns ``3``, ``4`` and ``5``); a note of
    fields above the header (``exported by X, 2026-01-01``) is taken for the header,
    or skipped. Lines skipped without the delimiter (a title, a comment) are left
    skipped.
    """
    lines = _lines(path, dialect.skip + 3)
    above = [
        i
        for i, s in enumerate(lines[: dialect.skip], 1)
        if dialect.delim in s and not (dialect.comment and s.startswith(dialect.comment))
    ]
    if dialect.delim and above:
        uneven = _uneven(path, _with_skip(dialect, 0))
        raise ValueError(
            f"DuckDB's reader would skip {_span(dialect.skip)} of {path} (line {above[0]}: "
            f"{_shown(lines[above[0] - 1])}) and take line {dialect.skip + 1} for the header "
            f"({_shown(lines[dialect.skip])}){'; ' + uneven if uneven else ''}: give every row "
            f"as many fields as the header; if the lines above the header are notes, remove "
            f"them (or skip them: {skip_hint(name, dialect.skip)})"
        )
    _check_skipped(name, path, dialect, lines)
    _check_first_row(name, path, dialect, con, text, values, lines)


def _check_skipped(name: str, path: Path, dialect: _Dialect, lines: list[str]) -> None:
    """Refuse a file whose header the reader finds below lines of one field, with no row below.

    A one-column file with a later row of more fields (``a``, ``1``, then ``2,3``)
    is read as lines above the header, the header being that row: its own header
    and rows are lost, and the table has none.
    """
    skipped = [
        s
        for s in lines[: dialect.skip]
        if s.strip() and not (dialect.comment and s.startswith(dialect.comment))
    ]
    if len(skipped) < 2:  # a title line alone is left skipped
        return
    rows = dialect.fields(path)
    if next(rows, None) is None or next(rows, None) is not None:
        return
    uneven = _uneven(path, _with_skip(dialect, 0))
    top = dialect.skip + 1
    raise ValueError(
        f"DuckDB's reader would skip {_span(dialect.skip)} of {path} and take line {top} "
        f"({_shown(lines[top - 1])}) for the header of a table with no rows"
        f"{'; ' + uneven if uneven else ''}: give every row as many fields as the header; "
        f"if the lines above line {top} are notes, remove them (or skip them: "
        f"{skip_hint(name, dialect.skip)})"
    )


def _check_delimiter(path: Path, dialect: _Dialect) -> None:
    """Refuse a file DuckDB's reader would load as one column though its header has fields.

    A row with more fields than the others makes it find no delimiter that splits
    every line alike (``a,b`` then ``1,2,3`` loads as one column named ``a,b``).
    """
    head = _lines(path, dialect.skip + 1)[-1]
    if len(dialect.types) == 1 and any(d in head for d in _DELIMITERS if d != dialect.delim):
        guess = max(_DELIMITERS, key=head.count)
        uneven = _uneven(path, _with_skip(dialect, dialect.skip, guess))
        raise ValueError(
            f"DuckDB's reader finds no delimiter that splits every line of {path} alike, and "
            f"would load it as one column named {_shown(head)}"
            f"{'; ' + uneven if uneven else ''}: give every row as many fields as the header"
        )


def _check_first_row(
    name: str,
    path: Path,
    dialect: _Dialect,
    con: Any,
    text: str,
    values: str,
    lines: list[str],
) -> None:
    """Refuse a file whose first row below the header reads as a header itself.

    A column of numbers (or dates) below that row, and text in it, would make the
    column text: either the line above is a note and this row the header, or the
    row holds a value that is no number (nor a missing value).
    """
    if not lines[-1].strip():  # no row below the first one: no column of values to tell
        _check_one_row(name, path, dialect, con, text, lines)
        return
    below = f"sniff_csv({text}, header = true, skip = {dialect.skip + 1}, {dialect.sql}, "
    try:
        found = con.execute(f"SELECT Columns FROM {below}{values})").fetchone()  # noqa: S608
    except duckdb.Error:  # nothing the reader can sniff below that row: nothing to tell
        return
    types = [str(c["type"]) for c in (found[0] if found else [])]
    if len(types) != len(dialect.types):
        return
    for i, (was, then) in enumerate(zip(dialect.types, types, strict=True)):
        if was == "VARCHAR" and then != "VARCHAR":
            top, row = dialect.skip + 1, dialect.skip + 2
            raise ValueError(
                f"line {row} of {path} ({_shown(lines[row - 1])}) reads as a header: column "
                f"{i + 1} holds values of type {then} on the lines below it, but text on that "
                f"line. If line {top} ({_shown(lines[top - 1])}) is a note above the header, "
                f"remove it (or skip it: {skip_hint(name, top)}); if line {row} is data, make "
                "its value in that column one of that type, or a missing value (NA), or say "
                f"the header is line {top}: {skip_hint(name, dialect.skip)}"
            )


def _check_one_row(
    name: str, path: Path, dialect: _Dialect, con: Any, text: str, lines: list[str]
) -> None:
    """Refuse a file of one row of text below its header: that row may be the header itself.

    With no second row there is no column of values to tell a header by, and a
    note above the header (``exported by X, 2026`` above ``age,ward``) would name
    the columns. A row holding a number or an empty cell is no header, and loads.
    """
    top, row = dialect.skip + 1, dialect.skip + 2
    if not lines[row - 1].strip() or any(t != "VARCHAR" for t in dialect.types):
        return
    cells = _header_cells(con, text, _with_skip(dialect, row - 1))
    if len(cells) != len(dialect.types) or any(c is None or not c.strip() for c in cells):
        return
    raise ValueError(
        f"DuckDB's reader would take line {top} of {path} ({_shown(lines[top - 1])}) for the "
        f"header and line {row} ({_shown(lines[row - 1])}) for its one row, but both are text "
        f"and no row below tells which is the header: line {top} may be a note above it. "
        f"If the header is line {row}, remove line {top} (or skip it: {skip_hint(name, top)}); "
        f"if it is line {top}, say so: "
        f"{skip_hint(name, dialect.skip)}"
    )


def _with_skip(dialect: _Dialect, skip: int, delim: str = "") -> _Dialect:
    other = object.__new__(_Dialect)
    other.__dict__.update(dialect.__dict__, skip=skip)
    if delim:
        other.delim = delim
    return other


def _span(skip: int) -> str:
    return f"line {skip}" if skip == 1 else f"lines 1 to {skip}"


def _header_cells(con: Any, text: str, dialect: _Dialect) -> list[str | None]:
    """A CSV file's header row, each cell as written (None: empty), split as DuckDB splits it."""
    reader = f"read_csv({text}, header = false, all_varchar = true, skip = {dialect.skip}, "
    row = con.execute(f"SELECT * FROM {reader}{dialect.sql}) LIMIT 1").fetchone()  # noqa: S608
    return list(row or ())


def load_csv(
    con: duckdb.DuckDBPyConnection, name: str, source: Path | CSV, named: Collection[str] = ()
) -> None:
    """Load a CSV file as table ``name``, under the names its header gives, or refuse it.

    The header is checked first (see :func:`_check_header`), unless ``source``
    says which line it is. A cell of one of the missing values (``na``) is NULL.
    A row with other than the header's count of fields is refused, naming it.
    DuckDB's reader names a column whose header cell is empty or white space
    ``column<i>`` (or ``C<i>``), and one whose name an earlier column has (in any
    case of its ASCII letters) ``<name>_1``: names the data's owner never gave, and
    the second may be another column's. Such a header is refused, naming the file
    and the column's position, unless an unnamed column holds no value in any row
    (a trailing comma on every line makes one): that one is left out. The spaces
    DuckDB trims around a name (``age, city`` names ``city``) are trimmed.
    ``named``: the columns a site's policy names; a header guessed (no ``skip``)
    that lacks some while the row below holds them is refused (see :func:`_check_named`).
    """
    opts = source if isinstance(source, CSV) else CSV(source)
    path = Path(opts.path)
    if _blank(path):
        raise ValueError(f"table {name!r}: {path} is empty; give at least its header row")
    text = _string(str(path))
    nulls = ", ".join(_string(v) for v in sorted({"", *opts.na}))
    values = f"nullstr = [{nulls}], decimal_separator = {_string(opts.decimal)}"
    dialect: _Dialect | None = None
    try:
        dialect = _Dialect(con, text, opts, values)
        if opts.skip is None:
            _check_header(name, path, dialect, con, text, values)
        _check_delimiter(path, dialect)
        cells = _header_cells(con, text, dialect)
        reader = f"read_csv({text}, header = true, skip = {dialect.skip}, {dialect.sql}, "
        con.execute(
            f"CREATE TABLE {table_name(name)} AS SELECT * FROM {reader}{values})"  # noqa: S608
        )
    except duckdb.Error as exc:
        uneven = _uneven(path, dialect) if dialect is not None else ""
        why = uneven + ": give every row as many fields as the header" if uneven else ""
        why = why or str(exc).strip().splitlines()[0]
        raise ValueError(f"table {name!r}: {path} cannot be read as CSV: {why}") from None
    except ValueError as exc:
        raise ValueError(f"table {name!r}: {exc}") from None
    _check_names(con, name, path, cells)
    if opts.skip is None and named and dialect is not None:
        _check_named(con, name, path, _with_skip(dialect, dialect.skip + 1), text, named)


def _check_named(
    con: duckdb.DuckDBPyConnection,
    name: str,
    path: Path,
    below: _Dialect,
    text: str,
    named: Collection[str],
) -> None:
    """Refuse a CSV whose header lacks columns the policy names that the row below it holds.

    A note above the header (``exported by X; 2026`` above ``age;ward``) is taken
    for the header when every column below reads as text (``40,5`` without
    ``decimal=","``, ``?``): then the header's names are data, the first row.
    """
    have = {fold(c) for c in columns(con, name)}
    lacked = {fold(c): c for c in named if fold(c) not in have}
    if not lacked:
        return
    try:
        row = _header_cells(con, text, below)
    except duckdb.Error:  # no row below the header
        return
    held = [c.strip() for c in row if c is not None and fold(c.strip()) in lacked]
    if not held:
        return
    top, line = below.skip, below.skip + 1
    lines = _lines(path, line)
    names = ", ".join(repr(c) for c in held)
    raise ValueError(
        f"table {name!r}: the policy names the {'column' if len(held) == 1 else 'columns'} "
        f"{names}, which line {top} of {path} ({_shown(lines[top - 1])}), taken by DuckDB's "
        f"reader for the header, does not name but line {line} ({_shown(lines[line - 1])}) "
        f"holds: line {top} may be a note above the header; remove it (or skip it: "
        f"{skip_hint(name, top)})"
    )


def _check_names(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, cells: list[str | None]
) -> None:
    """Refuse the names DuckDB gave a CSV's columns where they are not its header's."""
    loaded = list(columns(con, name))
    where = f"the header of {path}"
    if len(cells) != len(loaded):
        raise ValueError(
            f"table {name!r}: DuckDB reads {len(loaded)} columns from {path} but "
            f"{len(cells)} cells in its header row; check the file's delimiter and quotes"
        )
    unnamed = [i for i, cell in enumerate(cells) if cell is None or not cell.strip()]
    counts = _value_counts(con, name, [loaded[i] for i in unnamed])
    for i, n in zip(unnamed, counts, strict=True):
        if n:
            cell = "an empty cell" if cells[i] is None else f"only white space, {cells[i]!r}"
            raise ValueError(
                f"table {name!r}: column {i + 1} of {where} has no name ({cell}) but holds "
                f"values in {counted(n, 'row')}, which DuckDB would load as a column {loaded[i]!r} "
                "the file does not name; give it a name in the header, or leave it out"
            )
    kept = [i for i in range(len(cells)) if i not in unnamed]
    if not kept:
        raise ValueError(f"table {name!r}: {where} names no column; give the columns' names")
    named = [str(cells[i]) for i in kept]
    given = [loaded[i] if loaded[i] == c else c.strip() for i, c in zip(kept, named, strict=True)]
    check_names(name, given, where, kept)
    for i, cell in zip(kept, named, strict=True):
        if loaded[i] not in (cell, cell.strip()):
            raise ValueError(
                f"table {name!r}: DuckDB's reader names column {i + 1} of {where} "
                f"{loaded[i]!r}, not {cell!r}; rename it in the header"
            )
    for i in unnamed:
        con.execute(f"ALTER TABLE {table_name(name)} DROP COLUMN {quote(loaded[i])}")


def _blank(path: Path) -> bool:
    """Whether a file holds nothing but white space (DuckDB reads it as a column ``column0``)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _value_counts(con: duckdb.DuckDBPyConnection, name: str, cols: Sequence[str]) -> list[int]:
    """How many rows of table ``name`` hold a value in each of ``cols``."""
    if not cols:
        return []
    counts = ", ".join(f"COUNT({quote(c)})" for c in cols)
    row = con.execute(f"SELECT {counts} FROM {table_name(name)}").fetchone()  # noqa: S608
    return [int(n) for n in row or ()]
