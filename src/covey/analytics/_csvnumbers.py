"""A CSV file's numbers written with thousands separators (``1,234.56``, ``1.234,56``), read.

DuckDB's reader reads such a column as text unless told the separator
(``thousands``), and told it, it drops the separator from every column of numbers
alike: ``"1,5"`` in another column of a comma-separated file, a decimal comma,
would read as 15. So the separator is used only for the columns whose every value
is a number grouped by it in threes, and every other column keeps the type it was
read as.
"""

from __future__ import annotations

import duckdb

from covey.analytics._csvhead import string
from covey.analytics._tables import columns, per_column, quote, table_name


def _patterns(decimal: str) -> tuple[str, str]:
    """(the thousands separator, a number written with it or without) for ``decimal``."""
    sep = "," if decimal == "." else "."
    s, d = ("\\" + sep if sep == "." else sep), ("\\" + decimal if decimal == "." else decimal)
    return sep, rf"[-+]?([1-9]\d{{0,2}}({s}\d{{3}})+|\d{{1,3}})({d}\d+)?"


def read_grouped(
    con: duckdb.DuckDBPyConnection, name: str, reader: str, decimal: str, said: bool = False
) -> None:
    """Read again, as numbers, table ``name``'s columns of text that are numbers in groups.

    ``reader``: the ``read_csv(...`` call that loaded the table, open for more options.
    A column is read as numbers where every value is a number (its integer part in
    groups of three digits, ``1,234,567.5``, or of three digits at most, ``12.5``),
    at least one grouped. With a decimal point, a column whose grouped values are all
    ``1,234`` (one group, no decimal part) is left text, unless the decimal point
    was said (``said``): it may be written with a decimal comma, 1.234.
    """
    kinds = columns(con, name)
    texts = [c for c, kind in kinds.items() if kind == "VARCHAR"]
    if not texts:
        return
    sep, number = _patterns(decimal)
    grouped = string(f"^[-+]?\\d{{1,3}}\\{sep}" if sep == "." else f"^[-+]?\\d{{1,3}}{sep}")
    told = string(f"\\{decimal}|\\{sep}.*\\{sep}" if decimal == "." else "^$")
    table = table_name(name)
    sample = ", ".join(
        f"bool_and(regexp_full_match(trim({c}), {string(number)}))" for c in map(quote, texts)
    )
    first = con.execute(f"SELECT {sample} FROM {table} WHERE rowid < 1000").fetchone()  # noqa: S608
    texts = [
        c for c, ok in zip(texts, first or [None] * len(texts), strict=True) if ok is not False
    ]
    if not texts:
        return
    found = per_column(
        con,
        table,
        texts,
        lambda c: (
            f"bool_and(regexp_full_match(trim({c}), {string(number)}))",
            f"bool_or(regexp_matches(trim({c}), {grouped}))",
            f"bool_or(regexp_matches(trim({c}), {told}))",
            f"bool_or(contains(trim({c}), {string(decimal)}))",
        ),
    )
    if found is None:
        return
    read = {}
    for col, (numbers, grouped_, unambiguous, fraction) in zip(texts, found, strict=True):
        if numbers and grouped_ and (decimal == "," or unambiguous or said):
            read[col] = "DOUBLE" if fraction else "BIGINT"
    if not read:
        return
    types = ", ".join(string(read.get(c, kind)) for c, kind in kinds.items())
    try:
        con.execute(
            f"CREATE OR REPLACE TABLE {table_name(name)} AS SELECT * FROM "  # noqa: S608
            f"{reader}, thousands = {string(sep)}, types = [{types}])"
        )
    except duckdb.Error:  # a value the reader reads otherwise: the columns stay text
        return
