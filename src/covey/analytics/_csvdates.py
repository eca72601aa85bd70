"""A CSV file's dates that read as day/month and as month/day alike, refused.

DuckDB's reader guesses a date column's format from its values; where no value
has a day above 12 (``01/02/2026``, ``03/04/2026``) it takes them as day/month,
and a file written month/day loads under other dates, nobody seeing it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from covey.analytics._tables import quote, table_name


def ambiguous(fmt: str) -> bool:
    """Whether a date format puts a day and a month first, which a value may not tell apart."""
    return "%d" in fmt and "%m" in fmt and fmt.startswith(("%d", "%m")) and "." not in fmt


def check_dates(
    con: duckdb.DuckDBPyConnection,
    name: str,
    path: Path,
    formats: dict[str, str],
    columns: dict[str, str],
) -> None:
    """Refuse a DATE or TIMESTAMP column read by its format where no row tells day from month.

    ``formats``: the reader's format of each kind (``{"DATE": "%d/%m/%Y", "TIMESTAMP": ...}``).
    A value with a day above 12 in any column whose format's date is the same tells them
    (it reads only one way, and the reader reads every such column by the one format), and
    a column whose days all equal their months reads alike either way; otherwise the
    column is refused, naming a value and what to do.
    """
    dates = {kind: fmt.split(" ")[0] for kind, fmt in formats.items() if fmt}  # a time's '.'
    picked = [(col, kind) for col, kind in columns.items() if kind in dates]
    if not any(ambiguous(dates[kind]) for _, kind in picked):
        return
    checks = ", ".join(
        f"bool_or(day({c}) > 12), min(CASE WHEN day({c}) <> month({c}) THEN {c} END)"
        for c in (quote(col) for col, _ in picked)
    )
    found = con.execute(f"SELECT {checks} FROM {table_name(name)}").fetchone()  # noqa: S608
    if found is None:
        return
    told = {dates[kind] for (_, kind), day in zip(picked, found[0::2], strict=True) if day}
    for (col, kind), example in zip(picked, found[1::2], strict=True):
        if example is None or not ambiguous(dates[kind]) or dates[kind] in told:
            continue
        fmt = formats[kind]
        first, other = ("day", "month") if fmt.startswith("%d") else ("month", "day")
        raise ValueError(
            f"table {name!r}: column {col!r} of {path} holds dates such as "
            f"{example.strftime(fmt)!r} that read as day/month and as month/day alike (no day "
            f"above 12 in any row), and DuckDB's reader would take them as {first}/{other} "
            f"({fmt!r}: {example.strftime(fmt)!r} for {example.isoformat()}): write them as "
            f"YYYY-MM-DD{' HH:MM:SS' if kind == 'TIMESTAMP' else ''}, which reads one way"
        )
