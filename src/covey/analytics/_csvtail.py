"""A CSV file's lines that are no rows: a total or a note below the data, empty rows.

A spreadsheet's export may end with a summary line (``Total: 2 rows,`` or
``Exported 2026-12-01,,``), and hold rows of empty cells alone (``,,``); DuckDB's
reader loads each as a row, so ``COUNT(*)`` counts one patient too many and a
column of numbers may read as text. Such a line is refused, naming it, before
any query sees it.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from covey.analytics._csvhead import Dialect, shown
from covey.analytics._tables import columns, counted, quote, table_name

#: How many rows at the end of a file are looked at for a summary line
_TAIL = 3
#: The label of a row of totals, in English and a few languages of Europe's exports
_TOTAL = re.compile(
    r"(grand\s+)?(sub)?(total|totals|sum|summe|gesamt|totaal|totalt|somme|suma)\b:?"
)


def last_lines(path: Path, n: int) -> list[tuple[int, str]]:
    """The last ``n`` lines of ``path`` that are not blank, as (line number, text), first first.

    Its end alone is decoded; the line ends of the rest are counted, not read as text.
    """
    ends, tail = 0, b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            ends += chunk.count(b"\n")
            tail = (tail + chunk)[-(1 << 16) :]
    kept: list[tuple[int, str]] = []
    for back, raw in enumerate(reversed(tail.split(b"\n"))):
        if raw.strip() and len(kept) < n:
            kept.append((ends + 1 - back, raw.decode("utf-8", errors="replace") + "\n"))
    return kept[::-1]


def _last_line(path: Path) -> str:
    """The last line of ``path`` that is not blank (empty: none), read from its end."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, 2) - (1 << 16)))
        lines = f.read().splitlines()
    return next((s.decode("utf-8", errors="replace") for s in reversed(lines) if s.strip()), "")


def check_tail(con: duckdb.DuckDBPyConnection, name: str, path: Path, dialect: Dialect) -> None:
    """Refuse a file whose last lines read as a summary below its rows, not as rows.

    A column of text whose values are all numbers or dates but in its last rows
    (``Total: 2 rows`` in a column of ages) ends with a line that is no row; so
    does a last line of one value and empty cells alone (``Exported 2026-12-01,,``)
    where no row above leaves those columns all empty, a row of empty cells alone
    (``,,``: a spreadsheet's empty rows, anywhere in the file), and a last row
    labelled a total (``Total,7``) holding the sums of the rows above. Each is
    refused naming the line; a row that is data says so by writing ``NA``.
    """
    table = table_name(name)
    kinds = columns(con, name)
    _check_empty_rows(con, name, path, dialect, list(kinds))
    found = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
    rows = int(found[0]) if found else 0
    if rows < 3:
        return
    for col in _candidates(con, table, [c for c, kind in kinds.items() if kind == "VARCHAR"], rows):
        first = _first_break(con, table, col, rows)
        if first is not None:
            number, line = last_lines(path, rows - first)[0]
            raise ValueError(
                f"table {name!r}: line {number} of {path} ({shown(line)}), near its end, "
                f"holds text in column {col!r}, whose values in every row above are "
                "numbers or dates: a total or a note below the rows, which would load as "
                "a row and make the column text? remove it; if it is a row, make its "
                "value a number or a missing value (NA)"
            )
    _check_note_line(con, name, path, dialect, list(kinds))
    _check_totals(con, name, path, kinds, rows)


def _typed(c: str) -> str:
    """SQL: whether column ``c``'s text reads as a number, a date or a timestamp."""
    kinds = ("DOUBLE", "DATE", "TIMESTAMP")
    return " OR ".join(f"TRY_CAST(trim({c}) AS {kind}) IS NOT NULL" for kind in kinds)


def _candidates(
    con: duckdb.DuckDBPyConnection, table: str, texts: list[str], rows: int
) -> list[str]:
    """The columns of ``texts`` whose first rows are numbers or dates and last rows are not.

    Two small reads (of the first 100 rows and the last few), so that only a column
    of text that may be one of numbers is read whole.
    """
    if not texts:
        return []
    top, end = min(100, rows - _TAIL), rows - _TAIL
    quoted = [quote(c) for c in texts]
    firsts = ", ".join(f"bool_and({c} IS NULL OR {_typed(c)})" for c in quoted)
    lasts = ", ".join(
        f"bool_or(regexp_matches({c}, '[[:alpha:]]') AND NOT ({_typed(c)}))" for c in quoted
    )
    above = con.execute(f"SELECT {firsts} FROM {table} WHERE rowid < {top}").fetchone()  # noqa: S608
    below = con.execute(f"SELECT {lasts} FROM {table} WHERE rowid >= {end}").fetchone()  # noqa: S608
    found = [*zip(above or [None] * len(texts), below or [None] * len(texts), strict=True)]
    return [
        col for col, (first, last) in zip(texts, found, strict=True) if first is not False and last
    ]


def _first_break(con: duckdb.DuckDBPyConnection, table: str, col: str, rows: int) -> int | None:
    """The first of the last rows whose ``col`` breaks a column of numbers or dates (0-based).

    A value that breaks it holds a letter (``Total``, ``exported by X``), not only
    digits (``1,5``). None unless every value that is no number nor date lies in the
    last rows, below more values that are (at least two) than rows from it to the end.
    """
    c = quote(col)
    typed = _typed(c)
    values = f"(SELECT {c}, rowid AS n FROM {table} WHERE {c} IS NOT NULL)"  # noqa: S608
    words = f"NOT ({typed}) AND regexp_matches({c}, '[[:alpha:]]')"
    found = con.execute(f"SELECT MIN(n) FILTER (WHERE {words}) FROM {values}").fetchone()  # noqa: S608
    first = found[0] if found else None
    if first is None or first < rows - _TAIL:
        return None
    above = con.execute(
        f"SELECT COUNT(*), bool_and({typed}) FROM {values} WHERE n < {int(first)}"  # noqa: S608
    ).fetchone()
    if above is None or not above[1] or above[0] < max(2, rows - first + 1):
        return None
    return int(first)


def _check_empty_rows(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, dialect: Dialect, names: list[str]
) -> None:
    """Refuse rows of empty cells alone (``,,``), which would load as rows of missing values.

    A spreadsheet writes them for rows it once formatted; ``COUNT(*)`` would count
    them. A row whose missing values are marked (``NA,NA``) is a row, and loads.
    """
    if len(names) < 2:
        return
    empty = " AND ".join(f"{quote(c)} IS NULL" for c in names)
    found = con.execute(f"SELECT COUNT(*) FROM {table_name(name)} WHERE {empty}").fetchone()  # noqa: S608
    if not found or not found[0]:
        return
    delim = dialect.delim or ","
    marks = {delim, dialect.quote or '"', " "}
    lines = []
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        for number, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            if number > dialect.skip + 1 and delim in text and set(text) <= marks:
                lines.append((number, line))
    if not lines:
        return
    number, line = lines[0]
    more = len(lines) - 1
    others = f", and so {'does' if more == 1 else 'do'} {counted(more, 'other line')}"
    raise ValueError(
        f"table {name!r}: line {number} of {path} ({shown(line)}) holds empty cells alone"
        f"{others if more else ''}: a spreadsheet's empty rows, which would load as rows of "
        "missing values, counted by COUNT(*)? remove them; if a row is data, write its "
        "missing values as NA"
    )


def _check_note_line(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, dialect: Dialect, names: list[str]
) -> None:
    """Refuse a last line of one value and empty cells that no row above looks like.

    Only where it leaves two cells empty or more: a row of two columns, its last
    value missing (``P3,``), is common data.
    """
    delim = dialect.delim or ","
    text = _last_line(path)
    if len(names) < 3 or not text.endswith(delim * (len(names) - 1)):
        return
    value = text[: len(text) - len(names) + 1]
    if not value.strip() or delim in value or (dialect.quote and dialect.quote in value):
        return
    empty = " AND ".join(f"{quote(c)} IS NULL" for c in names[1:])
    found = con.execute(f"SELECT COUNT(*) FROM {table_name(name)} WHERE {empty}").fetchone()  # noqa: S608
    if found is None or found[0] != 1:
        return
    number, line = last_lines(path, 1)[0]
    raise ValueError(
        f"table {name!r}: line {number} of {path} ({shown(line)}), its last, holds one value "
        "and empty cells, as no row above does: a note below the rows (an export's date, a total), "
        "which would load as a row? remove it; if it is a row, write its missing values as NA"
    )


def _check_totals(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, kinds: dict[str, str], rows: int
) -> None:
    """Refuse a last row labelled a total whose numbers are the sums of the rows above.

    ``Total,7`` below ``A,3`` and ``B,4`` reads as a row of a ward named ``Total``:
    its types tell nothing, but its label and its sums do.
    """
    first = next(iter(kinds))
    numbers = [c for c, kind in kinds.items() if kind in _NUMBERS]
    if kinds[first] != "VARCHAR" or not numbers:
        return
    table, last = table_name(name), rows - 1
    sums = ", ".join(
        f"ANY_VALUE({quote(c)}) FILTER (WHERE rowid = {last}), "
        f"SUM({quote(c)}) FILTER (WHERE rowid < {last})"
        for c in numbers
    )
    found = con.execute(
        f"SELECT ANY_VALUE({quote(first)}) FILTER (WHERE rowid = {last}), {sums} FROM {table}"  # noqa: S608
    ).fetchone()
    if found is None or not isinstance(found[0], str) or not _TOTAL.match(found[0].strip().lower()):
        return
    pairs = [(v, s) for v, s in zip(found[1::2], found[2::2], strict=True) if v is not None]
    if not pairs or any(s is None or abs(v - s) > 1e-9 * max(1.0, abs(s)) for v, s in pairs):
        return
    number, line = last_lines(path, 1)[0]
    raise ValueError(
        f"table {name!r}: line {number} of {path} ({shown(line)}), its last, holds the sums "
        f"of the rows above under the label {found[0].strip()!r}: a row of totals, which "
        "would load as one more row, counting the table twice in its sums; remove it"
    )


#: The DuckDB types of a CSV's columns of numbers
_NUMBERS = ("BIGINT", "DOUBLE", "INTEGER", "HUGEINT", "SMALLINT", "TINYINT", "FLOAT")
