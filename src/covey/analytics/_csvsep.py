"""A CSV header written with another delimiter than its rows: refused, naming both.

A spreadsheet exported in one locale and edited in another can give a header
split by ``;`` above rows split by ``,`` (``ward;age;cost`` above ``A,40,12.5``).
DuckDB's reader finds the rows' delimiter, takes the header for a note above
the table and skips it, and the first row of data becomes the header: the
columns are named by a row's values (``A``, ``40``, ``12.5``) and that row is
lost, or the file is refused as one whose row below the header reads as a
header, which says nothing of the delimiters. Such a file is refused saying
which line is split by which delimiter.
"""

from __future__ import annotations

import csv
from pathlib import Path

from covey.analytics._csvhead import Dialect, first_lines, is_comment, is_value, shown, skip_hint

__all__ = ["check_header_delimiter"]

_DELIMITERS = ",;\t|"


def _cells(line: str, delim: str) -> list[str]:
    """``line`` split at ``delim`` (quotes read as the reader reads them), or none."""
    try:
        return next(csv.reader([line.rstrip("\r\n")], delimiter=delim, quotechar='"'), [])
    except csv.Error:
        return []


def check_header_delimiter(name: str, path: Path, dialect: Dialect) -> None:
    """Refuse a file whose skipped line above the header splits as a header at another delimiter.

    The line just above the line the reader takes for the header is one it would
    skip; where it holds no field of the rows' delimiter but splits at another
    into as many fields as the rows have, none empty and not all numbers or
    dates, it is the header written with that other delimiter.
    """
    width = len(dialect.types)
    if not dialect.delim or dialect.skip < 1 or width < 2:
        return
    lines = first_lines(path, dialect.skip + 1)
    line = lines[dialect.skip - 1]
    if dialect.delim in line or is_comment(line) or not line.strip():
        return
    for delim in _DELIMITERS:
        cells = [c.strip() for c in _cells(line, delim)] if delim != dialect.delim else []
        if len(cells) == width and all(cells) and not all(map(is_value, cells)):
            top = dialect.skip + 1
            raise ValueError(
                f"line {dialect.skip} of {path} ({shown(line)}) is split by {delim!r} into "
                f"{width} fields, and the rows below it by {dialect.delim!r} into as many: "
                f"DuckDB's reader would skip it and take line {top} ({shown(lines[top - 1])}) "
                f"for the header, naming the columns by that row's values. If line "
                f"{dialect.skip} is the header, write it with {dialect.delim!r} between its "
                f"names, as the rows are; if it is a note above a header on line {top}, skip "
                f"it: {skip_hint(name, dialect.skip)}"
            )
