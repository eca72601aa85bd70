"""Spaces in a CSV file's cells: around its text values, and grouping its numbers' digits.

A spreadsheet or a hospital system often writes a space after each delimiter
(``Ann, 40, A``); DuckDB's reader reads a number so written as the number, but
keeps the spaces of text, so ``' A'`` would be no ward ``'A'`` of a policy's
domain. The spaces around a text value are trimmed, and a value of spaces
alone, or a missing-value mark with spaces around it (``' NA'``), is missing.

A French, Swiss or Scandinavian export groups a number's digits by a no-break
space (U+00A0) or a narrow no-break space (U+202F), ``1 234,5``, which DuckDB's
reader reads as text: a column whose every value is a number grouped so (its
integer part in groups of three, or of three digits at most, at least one
grouped) is read as numbers. Such a space stands in no other number, so no
column is read otherwise for it. A plain space between digits (``1 234``) may
be two values run together and stays text.
"""

from __future__ import annotations

from collections.abc import Collection

import duckdb

from covey.analytics._csvhead import string
from covey.analytics._tables import columns, per_column, quote, table_name

#: The spaces that group a number's digits in thousands: no-break and narrow no-break
GROUP_SPACES = "\u00a0\u202f"


def _texts(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [c for c, kind in columns(con, name).items() if kind == "VARCHAR"]


def trim_text(con: duckdb.DuckDBPyConnection, name: str, na: Collection[str]) -> None:
    """Trim the spaces around table ``name``'s text values; a value of ``na`` so found is NULL."""
    texts = _texts(con, name)
    if not texts:
        return
    nulls = ", ".join(string(v) for v in sorted({"", *na}))
    table = table_name(name)
    spaced = ", ".join(f"bool_or({c} <> trim({c}, ' '))" for c in map(quote, texts))
    found = con.execute(f"SELECT {spaced} FROM {table}").fetchone()  # noqa: S608
    cols = [c for c, has in zip(texts, found or (), strict=True) if has]
    if not cols:
        return
    trims = ", ".join(
        f"CASE WHEN trim({c}, ' ') IN ({nulls}) THEN NULL ELSE trim({c}, ' ') END AS {c}"
        for c in map(quote, cols)
    )
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * REPLACE ({trims}) FROM {table}")  # noqa: S608


def read_space_grouped(con: duckdb.DuckDBPyConnection, name: str, decimal: str) -> None:
    """Read as numbers table ``name``'s text columns of numbers grouped by no-break spaces."""
    texts = _texts(con, name)
    if not texts:
        return
    s, d = f"[{GROUP_SPACES}]", "\\" + decimal if decimal == "." else decimal
    number = string(rf"[-+]?([1-9]\d{{0,2}}({s}\d{{3}})+|\d{{1,3}})({d}\d+)?")
    grouped = string(s)
    table = table_name(name)
    found = per_column(
        con,
        table,
        texts,
        lambda c: (
            f"bool_and(regexp_full_match(trim({c}, ' '), {number}))",
            f"bool_or(regexp_matches({c}, {grouped}))",
            f"bool_or(contains({c}, {string(decimal)}))",
        ),
    )
    if found is None:
        return
    casts = []
    for col, (numbers, has_group, fraction) in zip(map(quote, texts), found, strict=True):
        if not (numbers and has_group):
            continue
        digits = f"regexp_replace(trim({col}, ' '), {grouped}, '', 'g')"
        if decimal == ",":
            digits = f"replace({digits}, ',', '.')"
        casts.append(f"CAST({digits} AS {'DOUBLE' if fraction else 'BIGINT'}) AS {col}")
    if casts:
        con.execute(
            f"CREATE OR REPLACE TABLE {table} AS SELECT * REPLACE ({', '.join(casts)}) "  # noqa: S608
            f"FROM {table}"
        )
