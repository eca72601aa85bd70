"""A site's CSV file loaded into DuckDB: its header found and checked, missing values read.

DuckDB's reader guesses a CSV's dialect (delimiter, quotes) and which line is
its header; a wrong guess loads the data under other column names, or a number
column as text, and nobody sees the data to notice. So the guess is checked
(see :mod:`covey.analytics._csvhead`), and a file it may be wrong about is
refused, naming the file and its lines.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from covey.analytics._csvdates import check_dates
from covey.analytics._csvdecimal import guess_decimal
from covey.analytics._csvhead import (
    Dialect,
    check_delimiter,
    check_header,
    first_lines,
    header_cells,
    not_utf8,
    shown,
    skip_hint,
    string,
    uneven_row,
    with_skip,
)
from covey.analytics._csvlines import check_skip, sniffed
from covey.analytics._csvnumbers import read_grouped
from covey.analytics._csvsep import check_header_delimiter
from covey.analytics._csvspaces import read_space_grouped, trim_text
from covey.analytics._csvtail import check_tail
from covey.analytics._sqltext import fold
from covey.analytics._tables import check_names, columns, counted, quote, table_name

#: The values a CSV cell is read as missing (NULL) for, in every column: as pandas and R do
NA_VALUES = ("", "NA", "N/A", "n/a", "NULL", "null", "#N/A", ".")


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
            (``40,5``, in a file of ``;``-delimited fields). None: a comma-separated
            file's is ``"."``; another's is told by its numbers (``1,5`` or ``7.25``),
            and a file whose numbers do not tell (``1.234`` alone: 1.234 or 1234?)
            is refused, naming the column and the value.

    Example:
        >>> CSV("visits.csv", skip=2).skip
        2
    """

    path: str | Path
    skip: int | None = None
    na: Sequence[str] = NA_VALUES
    decimal: str | None = None

    def __post_init__(self) -> None:
        if self.skip is not None and (
            isinstance(self.skip, bool) or not isinstance(self.skip, int) or self.skip < 0
        ):
            raise ValueError(f"CSV skip= takes a number of lines (0 or more), got {self.skip!r}")
        if isinstance(self.na, str) or not all(isinstance(v, str) for v in self.na):
            raise ValueError(f"CSV na= takes a list of texts, got {self.na!r}")
        if self.decimal not in (None, ".", ","):
            raise ValueError(f"CSV decimal= takes '.' or ',', got {self.decimal!r}")


def load_csv(
    con: duckdb.DuckDBPyConnection, name: str, source: Path | CSV, named: Collection[str] = ()
) -> None:
    """Load a CSV file as table ``name``, under the names its header gives, or refuse it.

    The header is checked first (see :func:`check_header`), unless ``source``
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
    text = string(str(path))
    nulls = ", ".join(string(v) for v in sorted({"", *opts.na}))
    decimal = opts.decimal or "."
    values = f"nullstr = [{nulls}], decimal_separator = {string(decimal)}"
    dialect: Dialect | None = None
    try:
        if opts.skip is None:
            dialect = sniffed(con, name, text, path, values)  # '# ...' lines at the top: no data
        else:
            check_skip(name, path, opts.skip)
            dialect = Dialect(con, text, opts.skip, values)
        if opts.decimal is None and guess_decimal(con, name, path, text, dialect) == ",":
            decimal = ","
            values = f"nullstr = [{nulls}], decimal_separator = ','"
            dialect = Dialect(con, text, dialect.skip, values)
        check_delimiter(path, dialect)  # a wrong delimiter first: the header's checks split by it
        if opts.skip is None:
            check_header_delimiter(name, path, dialect)  # 'ward;age' above 'A,40'
            check_header(name, path, dialect, con, text, values)
        cells = header_cells(con, text, dialect)
        reader = f"read_csv({text}, header = true, skip = {dialect.skip}, {dialect.sql}, "
        con.execute(
            f"CREATE TABLE {table_name(name)} AS SELECT * FROM {reader}{values})"  # noqa: S608
        )
        # '1,234.5' read as a number ('1,234' only where the decimal separator was said)
        read_grouped(con, name, reader + values, decimal, said=opts.decimal is not None)
        read_space_grouped(con, name, decimal)  # '1\u00a0234,5' too
        trim_text(con, name, opts.na)  # 'Ann, A': the ward 'A'
    except duckdb.Error as exc:
        if "not utf-8" in str(exc).lower():
            raise ValueError(f"table {name!r}: {not_utf8(path)}") from None
        uneven = uneven_row(path, dialect) if dialect is not None else ""
        why = uneven + ": give every row as many fields as the header" if uneven else ""
        why = why or str(exc).strip().splitlines()[0]
        raise ValueError(f"table {name!r}: {path} cannot be read as CSV: {why}") from None
    except ValueError as exc:
        raise ValueError(f"table {name!r}: {exc}") from None
    _check_names(con, name, path, cells, dialect.skip if dialect is not None else 0)
    if dialect is not None:
        check_tail(con, name, path, dialect)
        formats = {"DATE": dialect.dates, "TIMESTAMP": dialect.stamps}
        check_dates(con, name, path, formats, columns(con, name))
    if opts.skip is None and named and dialect is not None:
        _check_named(con, name, path, with_skip(dialect, dialect.skip + 1), text, named)


def _check_named(
    con: duckdb.DuckDBPyConnection,
    name: str,
    path: Path,
    below: Dialect,
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
        row = header_cells(con, text, below)
    except duckdb.Error:  # no row below the header
        return
    held = [c.strip() for c in row if c is not None and fold(c.strip()) in lacked]
    if not held:
        return
    top, line = below.skip, below.skip + 1
    lines = first_lines(path, line)
    names = ", ".join(repr(c) for c in held)
    raise ValueError(
        f"table {name!r}: the policy names the {'column' if len(held) == 1 else 'columns'} "
        f"{names}, which line {top} of {path} ({shown(lines[top - 1])}), taken by DuckDB's "
        f"reader for the header, does not name but line {line} ({shown(lines[line - 1])}) "
        f"holds: line {top} may be a note above the header; remove it (or skip it: "
        f"{skip_hint(name, top)})"
    )


def _check_names(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, cells: list[str | None], skip: int
) -> None:
    """Refuse the names DuckDB gave a CSV's columns where they are not its header's.

    A header of one name and empty cells above rows that fill those columns is a
    title (a spreadsheet's ``Patient list,,``), said so, with the skip that reads it.
    """
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
        if n and len(unnamed) == len(cells) - 1 > 0:
            top = skip + 1
            raise ValueError(
                f"table {name!r}: line {top} of {path} "
                f"({shown(first_lines(path, top)[-1])}), which DuckDB's reader would take for "
                f"the header, holds one name and empty cells, though column {i + 1} holds "
                f"values in {counted(n, 'row')}: a title above the header? remove it (or skip it: "
                f"{skip_hint(name, top)}); if it is the header, give every column a name"
            )
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
    """Whether a file holds nothing but white space (DuckDB reads it as a column ``column0``).

    A byte order mark alone (a spreadsheet's empty "CSV UTF-8") is no content either.
    """
    with path.open("rb") as f:
        chunk = f.read(1 << 16).removeprefix(codecs.BOM_UTF8)
        while chunk:
            if chunk.strip():
                return False
            chunk = f.read(1 << 16)
    return True


def _value_counts(con: duckdb.DuckDBPyConnection, name: str, cols: Sequence[str]) -> list[int]:
    """How many rows of table ``name`` hold a value in each of ``cols``."""
    if not cols:
        return []
    counts = ", ".join(f"COUNT({quote(c)})" for c in cols)
    row = con.execute(f"SELECT {counts} FROM {table_name(name)}").fetchone()  # noqa: S608
    return [int(n) for n in row or ()]
