"""A CSV file's header as DuckDB's reader guesses it, and the checks of that guess.

DuckDB's reader guesses a CSV's dialect (delimiter, quotes) and which line is
its header; a wrong guess loads the data under other column names, or a number
column as text, and nobody sees the data to notice. So the guess is checked
here, and a file it may be wrong about is refused, naming the file and its lines.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import duckdb

from covey.analytics._tables import counted
from covey.core._text import clipped

_DELIMITERS = ",;\t|"


def string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def shown(line: str) -> str:
    """A line of a file as an error message shows it: quoted, clipped to 100 characters."""
    return repr(clipped(line.rstrip("\r\n"), 100))


def first_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` lines of ``path`` (a byte order mark left out)."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        return [f.readline() for _ in range(n)]


class Dialect:
    """What DuckDB's sniffer finds for a CSV file: its dialect, skipped lines, columns."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, text: str, given: int | None, values: str
    ) -> None:
        skip = "" if given is None else f", skip = {given}"
        sniff = f"sniff_csv({text}, header = true{skip}, {values})"
        found = con.execute(
            "SELECT Delimiter, Quote, Escape, Comment, SkipRows, Columns, DateFormat, "  # noqa: S608
            f"TimestampFormat FROM {sniff}"
        ).fetchone()
        d, q, e, c, n, cols, dates, stamps = found or (",", '"', '"', "", 0, [], None, None)
        self.dates = str(dates or "")
        self.stamps = str(stamps or "")
        self.delim, self.quote, self.escape, self.comment = (
            "" if v == "(empty)" else str(v) for v in (d, q, e, c)
        )
        self.skip = int(n) if given is None else given
        self.types = [str(col["type"]) for col in cols]
        self.sql = ", ".join(
            f"{k} = {string(v)}"
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


def uneven_row(path: Path, dialect: Dialect) -> str:
    """Which line of ``path`` has other than the header's count of fields (empty: none)."""
    rows = dialect.fields(path)
    try:
        top, n = next(rows, (0, 0))
        line, count = next(((i, k) for i, k in rows if k != n), (0, 0))
    except csv.Error:
        return ""
    if not line:
        return ""
    lines = first_lines(path, line)
    return (
        f"line {line} ({shown(lines[line - 1])}) has {counted(count, 'field')}, "
        f"line {top} ({shown(lines[top - 1])}) {n}"
    )


#: A comment line: one or more ``#`` and a space (``# exported by X, 2026``), not a header
#: whose first column is named ``#`` (``#,name``) or ``#id``
_COMMENT = re.compile(r"#+ ")
#: A spreadsheet's line naming the delimiter above the header (``sep=;``)
_SEP = re.compile(r"sep=[,;\t|]\r?\n?")


def is_comment(line: str) -> bool:
    """Whether ``line`` is a comment (``# exported by X, 2026``, or ``sep=;``): no row."""
    return bool(_COMMENT.match(line)) or is_sep(line)


def is_sep(line: str) -> bool:
    """Whether ``line`` is a spreadsheet's line naming the delimiter (``sep=;``): no header."""
    return bool(_SEP.fullmatch(line))


def comment_lines(path: Path) -> int:
    """How many lines at the top of ``path`` are comment lines, and blank lines among or below.

    A spreadsheet's or a script's export may begin with ``# ...`` lines; they are
    skipped, the header looked for below them (0: the file begins with no comment).
    The blank lines below are counted too: DuckDB's reader would take one for the header.
    """
    n = comments = 0
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        for line in f:
            if not (is_comment(line) or (comments and line.strip() == "")):
                break
            n, comments = n + 1, comments + is_comment(line)
    return n if comments else 0


def skip_hint(name: str, skip: int) -> str:
    """How to say a CSV's header is below ``skip`` lines: ``covey site``'s flag, or Python's."""
    return (
        f"covey site --csv-skip {name}={skip}, or covey.analytics.CSV(path, skip={skip}) in Python"
    )


def check_header(name: str, path: Path, dialect: Dialect, con: Any, text: str, values: str) -> None:
    """Refuse a file whose header DuckDB's reader may have guessed wrong.

    A row with more fields than the header makes the reader take it for the
    header, skipping the file's own header and the rows above (``a,b`` then
    ``1,2`` then ``3,4,5`` loads as the columns ``3``, ``4`` and ``5``); a note of
    fields above the header (``exported by X, 2026-01-01``) is taken for the header,
    or skipped. Lines skipped without the delimiter (a title, a comment) are left
    skipped.
    """
    lines = first_lines(path, dialect.skip + 3)
    above = [
        i
        for i, s in enumerate(lines[: dialect.skip], 1)
        if dialect.delim in s and not _commented(s, dialect)
    ]
    if dialect.delim and above:
        uneven = uneven_row(path, with_skip(dialect, 0))
        raise ValueError(
            f"DuckDB's reader would skip {_span(dialect.skip)} of {path} (line {above[0]}: "
            f"{shown(lines[above[0] - 1])}) and take line {dialect.skip + 1} for the header "
            f"({shown(lines[dialect.skip])}){'; ' + uneven if uneven else ''}: give every row "
            f"as many fields as the header; if the lines above the header are notes, remove "
            f"them (or skip them: {skip_hint(name, dialect.skip)})"
        )
    _check_skipped(name, path, dialect, lines)
    top = dialect.skip + 1
    if _all_values(lines[top - 1], dialect):  # a file of no header: its first row names columns
        raise ValueError(
            f"line {top} of {path} ({shown(lines[top - 1])}), which DuckDB's reader would take "
            "for the header, holds only numbers or dates, no column names: give the file a "
            f"header row naming its columns (or, if line {top} is the header, say so: "
            f"{skip_hint(name, dialect.skip)})"
        )
    _check_first_row(name, path, dialect, con, text, values, lines)
    _check_note(name, path, dialect, (con, text), lines)


def _commented(line: str, dialect: Dialect) -> bool:
    """Whether ``line`` is a comment: ``# ...``, or one DuckDB's reader found the mark of."""
    return is_comment(line) or bool(dialect.comment and line.startswith(dialect.comment))


def _check_skipped(name: str, path: Path, dialect: Dialect, lines: list[str]) -> None:
    """Refuse a file whose header the reader finds below lines of one field it would skip.

    A one-column file with a later row of more fields (``a``, ``1``, then ``2,3``,
    and maybe more rows of two) is read as lines above the header, the header
    being that row: its own header and rows are lost, and the columns are named
    by data. So are two lines of one field or more above a header (which may be
    a title's lines too, but then skipping them is said), and one line above a
    header of numbers or dates alone (``a``, then ``2,3``, ``4,5``). A title line
    alone above a header of names is left skipped.
    """
    skipped = [s for s in lines[: dialect.skip] if s.strip() and not _commented(s, dialect)]
    top = dialect.skip + 1
    if not skipped or (len(skipped) == 1 and not _all_values(lines[top - 1], dialect)):
        return
    rows = dialect.fields(path)
    empty = next(rows, None) is not None and next(rows, None) is None
    uneven = uneven_row(path, with_skip(dialect, 0))
    raise ValueError(
        f"DuckDB's reader would skip {_span(dialect.skip)} of {path} and take line {top} "
        f"({shown(lines[top - 1])}) for the header{' of a table with no rows' if empty else ''}"
        f"{'; ' + uneven if uneven else ''}: give every row as many fields as the header; "
        f"if the lines above line {top} are notes, remove them (or skip them: "
        f"{skip_hint(name, dialect.skip)})"
    )


#: A header's cell that is evidently a column's name: a word, not led by a digit
_NAME = re.compile(r"[^\W\d]\w*")
#: A cell that reads as a number, a date or a time (``40``, ``-1.5e3``, ``2026-01-01 08:00``)
_VALUE = re.compile(r"[-+]?\.?\d[\d.,:/ T+-]*")


def is_value(cell: str) -> bool:
    """Whether ``cell`` reads as a number, a date or a time: a value, no column's name."""
    return bool(_VALUE.fullmatch(cell))


def _all_values(line: str, dialect: Dialect) -> bool:
    """Whether every cell of ``line`` reads as a number, a date or a time: data, not names."""
    try:
        cells = next(csv.reader([line], delimiter=dialect.delim or ",", quotechar='"'), [])
    except csv.Error:
        return False
    return bool(cells) and all(_VALUE.fullmatch(c.strip()) for c in cells)


def check_delimiter(path: Path, dialect: Dialect) -> None:
    """Refuse a file DuckDB's reader would load as one column where a row has more fields.

    A row with more fields than the others makes it find no delimiter that splits
    every line alike (``a,b`` then ``1,2,3`` loads as one column named ``a,b``);
    a one-column file's row of more fields is loaded as one value of its column
    (``a``, ``1``, ``2,3``, ``4``: the value ``'2,3'``, and the column text).
    """
    head = first_lines(path, dialect.skip + 1)[-1]
    if len(dialect.types) != 1:
        return
    if any(d in head for d in _DELIMITERS if d != dialect.delim):
        guess = max(_DELIMITERS, key=head.count)
        uneven = uneven_row(path, with_skip(dialect, dialect.skip, guess))
        raise ValueError(
            f"DuckDB's reader finds no delimiter that splits every line of {path} alike, and "
            f"would load it as one column named {shown(head)}"
            f"{'; ' + uneven if uneven else ''}: give every row as many fields as the header"
        )
    longer = _longer_row(path, dialect)
    if longer:
        line, count, delim = longer
        row = first_lines(path, line)[-1]
        raise ValueError(
            f"DuckDB's reader would load {path} as one column named {shown(head)}, and line "
            f"{line} ({shown(row)}) as one value of it; line {line} has {count} fields split "
            f"at {delim!r}, line {dialect.skip + 1} ({shown(head)}) 1: give every row as many "
            f"fields as the header (quote a value that holds {delim!r})"
        )


def _longer_row(path: Path, dialect: Dialect) -> tuple[int, int, str] | None:
    """A row below a one-column header of more fields, as (line, fields, delimiter).

    Split at a comma or at the delimiter DuckDB's reader found; the first such row,
    or None.
    """
    found: list[tuple[int, int, str]] = []
    for delim in dict.fromkeys(d for d in (",", dialect.delim) if d):
        split = with_skip(dialect, dialect.skip, delim)
        split.quote = split.quote or '"'
        try:
            found += [next(((i, k, delim) for i, k in split.fields(path) if k > 1), (0, 0, ""))]
        except csv.Error:
            continue
    return min((f for f in found if f[0]), default=None)


def _check_first_row(
    name: str,
    path: Path,
    dialect: Dialect,
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
        if was == "VARCHAR" and then != "VARCHAR" and not _grouped(con, text, dialect, i):
            top, row = dialect.skip + 1, dialect.skip + 2
            raise ValueError(
                f"line {row} of {path} ({shown(lines[row - 1])}) reads as a header: column "
                f"{i + 1} holds values of type {then} on the lines below it, but text on that "
                f"line. If line {top} ({shown(lines[top - 1])}) is a note above the header, "
                f"remove it (or skip it: {skip_hint(name, top)}); if line {row} is data, make "
                "its value in that column one of that type, or a missing value (NA), or say "
                f"the header is line {top}: {skip_hint(name, dialect.skip)}"
            )


def _check_note(
    name: str, path: Path, dialect: Dialect, read: tuple[Any, str], lines: list[str]
) -> None:
    """Refuse a header naming a column of text by a number or a date: a note, not a header.

    A note of fields above a header of text columns (``exported by X, 2026-01-01``
    above ``name,city`` and rows of names) is taken for the header, and the real
    header loads as a row; its date names a column no header would. A column of
    numbers with a decimal comma (``5,5``) read without ``decimal=","`` is text
    too, and said so.
    """
    cells = header_cells(*read, dialect)
    if len(cells) != len(dialect.types):
        return
    top = dialect.skip + 1
    for i, (cell, kind) in enumerate(zip(cells, dialect.types, strict=True)):
        if cell is not None and kind == "VARCHAR" and _VALUE.fullmatch(cell.strip()):
            comma = _decimal_comma(*read, dialect, i)
            raise ValueError(
                f"line {top} of {path} ({shown(lines[top - 1])}), which DuckDB's reader would "
                f"take for the header, names column {i + 1} {cell.strip()!r}, a number or a "
                f"date, though it holds text"
                + (
                    f" ({comma!r}: a decimal comma? if so, read the file with covey site "
                    f"--csv-decimal {name}=, or covey.analytics.CSV(path, decimal=',') in Python)"
                    if comma
                    else ""
                )
                + f": line {top} may be a note above the header; remove it (or skip it: "
                f"{skip_hint(name, top)}); if line {top} is the header, say so: "
                f"{skip_hint(name, dialect.skip)}"
            )


#: A number whose digits a no-break space groups in thousands (``1\u00a0234,5``)
SPACED = re.compile(r"[-+]?\d{1,3}([\u00a0\u202f]\d{3})+([.,]\d+)?")
#: A number whose digits are grouped in thousands, by any separator (``1,234``, ``1 234``)
_GROUPED = re.compile(r"[-+]?\d{1,3}([\u00a0\u202f ,.]\d{3})+([.,]\d+)?")


def _grouped(con: Any, text: str, dialect: Dialect, col: int) -> bool:
    """Whether the first row's value in column ``col`` is a number grouped in thousands.

    No header's name: such a column loads as numbers (see :mod:`covey.analytics._csvspaces`
    and ``_csvnumbers``), or as text refused or said of as such, not as a header's row.
    """
    cells = header_cells(con, text, with_skip(dialect, dialect.skip + 1))
    cell = cells[col] if col < len(cells) else None
    return cell is not None and _GROUPED.fullmatch(cell.strip(" ")) is not None


#: A number written with a decimal comma (``40,5``)
_COMMA = re.compile(r"[-+]?\d*,\d+")


def _decimal_comma(con: Any, text: str, dialect: Dialect, col: int) -> str:
    """The first value of column ``col`` below the header written with a decimal comma.

    Empty unless every value of that column is a number (so written or plain), or
    where the file is split at commas.
    """
    if dialect.delim == ",":
        return ""
    reader = f"read_csv({text}, header = false, all_varchar = true, skip = {dialect.skip + 1}, "
    try:
        rows = con.execute(f"SELECT * FROM {reader}{dialect.sql}) LIMIT 100").fetchall()  # noqa: S608
    except duckdb.Error:
        return ""
    cells = [str(r[col]).strip() for r in rows if col < len(r) and r[col] is not None]
    if not all(_COMMA.fullmatch(c) or _VALUE.fullmatch(c) for c in cells):
        return ""
    return next((c for c in cells if _COMMA.fullmatch(c)), "")


def _check_one_row(
    name: str, path: Path, dialect: Dialect, con: Any, text: str, lines: list[str]
) -> None:
    """Refuse a file of one row of text below its header: that row may be the header itself.

    With no second row there is no column of values to tell a header by, and a
    note above the header (``exported by X, 2026`` above ``age,ward``) would name
    the columns. A row holding a number or an empty cell is no header, and loads;
    so does a header of names alone (``name,city`` above ``Ann,Oslo``), each a word
    of letters, digits and underscores: a note's cells hold spaces or numbers.
    """
    top, row = dialect.skip + 1, dialect.skip + 2
    if not lines[row - 1].strip() or any(t != "VARCHAR" for t in dialect.types):
        return
    cells = header_cells(con, text, with_skip(dialect, row - 1))
    if len(cells) != len(dialect.types) or any(c is None or not c.strip() for c in cells):
        return
    if all(c is not None and _NAME.fullmatch(c.strip()) for c in header_cells(con, text, dialect)):
        return
    raise ValueError(
        f"DuckDB's reader would take line {top} of {path} ({shown(lines[top - 1])}) for the "
        f"header and line {row} ({shown(lines[row - 1])}) for its one row, but both are text "
        f"and no row below tells which is the header: line {top} may be a note above it. "
        f"If the header is line {row}, remove line {top} (or skip it: {skip_hint(name, top)}); "
        f"if it is line {top}, say so: "
        f"{skip_hint(name, dialect.skip)}"
    )


def with_skip(dialect: Dialect, skip: int, delim: str = "") -> Dialect:
    """``dialect`` with its header below ``skip`` lines (and split by ``delim``, if given)."""
    other = object.__new__(Dialect)
    other.__dict__.update(dialect.__dict__, skip=skip)
    if delim:
        other.delim = delim
    return other


def _span(skip: int) -> str:
    return f"line {skip}" if skip == 1 else f"lines 1 to {skip}"


def header_cells(con: Any, text: str, dialect: Dialect) -> list[str | None]:
    """A CSV file's header row, each cell as written (None: empty), split as DuckDB splits it."""
    reader = f"read_csv({text}, header = false, all_varchar = true, skip = {dialect.skip}, "
    row = con.execute(f"SELECT * FROM {reader}{dialect.sql}) LIMIT 1").fetchone()  # noqa: S608
    return list(row or ())


def not_utf8(path: Path) -> str:
    """Where ``path`` is not UTF-8 text, as an error says it, with what to do."""
    with path.open("rb") as f:
        head = f.read(2)
        if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return (
                f"{path} is UTF-16 text (a spreadsheet's 'Unicode text'), not UTF-8: "
                "save it as UTF-8 ('CSV UTF-8'), or convert it: iconv -f utf-16 -t utf-8"
            )
        f.seek(0)
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = raw.decode("utf-8", errors="replace")
                return (
                    f"{path} is not UTF-8 text: line {number} ({shown(line)}) holds the byte "
                    f"0x{raw[exc.start]:02x}, which UTF-8 text does not (a file saved as "
                    "Latin-1 or Windows-1252 holds such bytes for letters like ø or é): save "
                    "it as UTF-8 ('CSV UTF-8' in a spreadsheet), or convert it: "
                    "iconv -f latin1 -t utf-8"
                )
    return f"{path} is not UTF-8 text: save it as UTF-8"
