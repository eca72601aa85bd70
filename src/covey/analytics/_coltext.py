"""How a site reads a column's values as the text the federation agrees on.

A value is one text at every site, whichever type its column has there: a whole
number in a FLOAT column reads as the integer, a BOOLEAN as 1 or 0, a TIMESTAMP
at midnight as its day. Domains of ``GROUP BY`` are matched, and the values of
``APPROX_COUNT_DISTINCT`` and ``APPROX_TOP_K`` hashed and shown, by these texts.
"""

from __future__ import annotations

import datetime
from typing import Any

from covey.analytics._tables import quote

__all__ = ["DATETIME", "FRACTIONAL", "NUMERIC", "WHOLE", "instant", "key", "text_of"]

FRACTIONAL = ("FLOAT", "DOUBLE", "REAL", "DECIMAL")
WHOLE = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
NUMERIC = (*WHOLE, *("U" + t for t in WHOLE), *FRACTIONAL, "BOOLEAN")
DATETIME = (
    "DATE",
    "TIMESTAMP",
    "TIMESTAMP_S",
    "TIMESTAMP_MS",
    "TIMESTAMP_NS",
    "DATETIME",
    "TIMESTAMP WITH TIME ZONE",
    "TIMESTAMPTZ",
)
"""Types of instants; a TIMESTAMP WITH TIME ZONE is read as its time in UTC (the sites' zone)."""


def key(value: Any, kind: str = "") -> str:
    """A domain value as the text :func:`text_of` gives the column's values at this site.

    A boolean reads as 1 or 0 in a BOOLEAN or numeric column (a flag stored as
    INTEGER, as SQLite stores every boolean, is the same flag) and as 'true' or
    'false' in any other (text). In a BOOLEAN column the texts 'true' and 'false'
    read as 1 and 0 too, as DuckDB prints the column's values.
    """
    if isinstance(value, str) and kind.upper() == "BOOLEAN":
        value = {"true": True, "false": False}.get(value.lower(), value)
    if isinstance(value, bool):
        if kind.upper().startswith(NUMERIC):
            return "1" if value else "0"
        return "true" if value else "false"
    return str(value)


def instant(value: Any) -> datetime.datetime | None:
    """A DATE or TIMESTAMP column's domain value as the instant it names (None: none).

    ``'2024-01-31'`` is that day's midnight, whether a site stores it as DATE or as
    TIMESTAMP (pandas' datetime64), whose texts differ (``2024-01-31 00:00:00``).
    A value with a UTC offset (``'2024-01-31T08:00:00+01:00'``) names its time in
    UTC, as a TIMESTAMP WITH TIME ZONE column is read (a pandas ``datetime64`` of a
    time zone); one without names that time in UTC in such a column.
    """
    try:
        got = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if got.tzinfo is None:
        return got
    return got.astimezone(datetime.UTC).replace(tzinfo=None)


def text_of(col: str, kind: str, *, numbers: bool = False) -> str:
    """A DuckDB expression of a group column's value as the text of its domain's values.

    A whole number in a FLOAT, DOUBLE or DECIMAL column (an integer column with a
    NULL comes from pandas as float64) reads as the integer it is ('1', not '1.0'
    nor '1.00'), as an integer in the domain does. With ``numbers`` (the values
    counted by ``APPROX_COUNT_DISTINCT`` and ``APPROX_TOP_K``) another number
    reads as its DOUBLE does ('1.5', not '1.50'), so that one value is one text at
    every site, whichever numeric type its column has there. A BOOLEAN reads as
    the number it stands for, '1' or '0', as an INTEGER column of flags does. A
    TIMESTAMP at midnight reads as the day it is ('2024-01-31', not '2024-01-31
    00:00:00'), as that day in a DATE column does: pandas keeps dates as TIMESTAMPs.
    """
    if kind.upper() == "BOOLEAN":
        return f"CAST(CAST({quote(col)} AS INTEGER) AS VARCHAR)"
    if kind.upper() in DATETIME and kind.upper() != "DATE":
        stamp = f"CAST({quote(col)} AS TIMESTAMP)"  # with a time zone: its time in UTC
        day = f"CAST({stamp} AS DATE)"
        midnight = f"{stamp} = CAST({day} AS TIMESTAMP)"
        return f"CASE WHEN {midnight} THEN CAST({day} AS VARCHAR) ELSE CAST({stamp} AS VARCHAR) END"
    text = f"CAST({quote(col)} AS VARCHAR)"
    if not kind.upper().startswith(FRACTIONAL):
        return text
    value = f"CAST({quote(col)} AS DOUBLE)"
    if numbers:
        text = f"CAST({value} AS VARCHAR)"
    whole = f"isfinite({value}) AND {value} = trunc({value}) AND abs({value}) < 1e30"
    return f"CASE WHEN {whole} THEN CAST(CAST({value} AS HUGEINT) AS VARCHAR) ELSE {text} END"
