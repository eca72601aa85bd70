"""A site's tables in DuckDB: DataFrames, Parquet and CSV files, SQLite databases.

Nothing is downloaded: Parquet and CSV are read by DuckDB itself, SQLite
through Python's ``sqlite3``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
SQLITE_PREFIX = "sqlite:///"


def quote(name: str) -> str:
    """A DuckDB identifier for a checked name."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid table or column name")
    return '"' + name + '"'


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sqlite(con: duckdb.DuckDBPyConnection, name: str, source: str) -> None:
    path = Path(source[len(SQLITE_PREFIX) :])
    if not path.is_file():
        raise FileNotFoundError(f"table {name!r}: no SQLite database at {path}")
    # as_uri() escapes "#", "?" and "%", which a file: URI would take for its own syntax
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        found = db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (name,)
        ).fetchone()
        if found is None:
            raise ValueError(f"the SQLite database {path} has no table {name!r}")
        frame = pd.read_sql_query(f"SELECT * FROM {quote(name)}", db)  # noqa: S608
    finally:
        db.close()
    _copy(con, name, frame)


def _copy(con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> None:
    """Copy a DataFrame into a DuckDB table (columnar storage, no pandas scan per query).

    A table with no rows has no values to tell a text column's type by: DuckDB
    before 2.0 makes its object columns INTEGER (then ``ward LIKE 'n%'`` fails
    to bind), so they are given as text.
    """
    if frame.empty:
        text = [c for c in frame.columns if frame[c].dtype == object]
        frame = frame.astype(dict.fromkeys(text, "string"))
    con.register(f"__src_{name}", frame)
    try:
        con.execute(f"CREATE TABLE {quote(name)} AS SELECT * FROM {quote('__src_' + name)}")  # noqa: S608
    finally:
        con.unregister(f"__src_{name}")


def _nan_to_null(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Read NaN as NULL in a table's floating-point columns, as pandas does.

    A DataFrame's NaN reaches DuckDB as NULL, but Parquet and CSV keep it a value,
    which DuckDB orders above every number: it would be clipped to the top of the
    bounds and summed, so the same data would answer otherwise from another source.
    """
    for col, kind in columns(con, name).items():
        if kind.upper() in ("FLOAT", "DOUBLE", "REAL"):
            column = '"' + col.replace('"', '""') + '"'  # any name the file gave it
            con.execute(f"UPDATE {quote(name)} SET {column} = NULL WHERE isnan({column})")  # noqa: S608


def load_tables(tables: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding ``tables`` (name -> source).

    Args:
        tables: Each name maps to a pandas DataFrame, a path to a ``.parquet`` or
            ``.csv`` file, or ``"sqlite:///path/to.db"`` (reads the table of the
            same name from that database).

    Returns:
        The connection; each table is queryable by its name.
    """
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError("a site needs at least one table: tables={name: source}")
    con = duckdb.connect(":memory:")
    for name, source in tables.items():
        quote(name)
        if isinstance(source, pd.DataFrame):
            _copy(con, name, source)
        elif isinstance(source, str) and source.startswith(SQLITE_PREFIX):
            _sqlite(con, name, source)
        elif isinstance(source, str | Path):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"table {name!r}: no file at {path}")
            suffix = path.suffix.lower()
            if suffix == ".parquet":
                reader = f"read_parquet({_string(str(path))})"
            elif suffix == ".csv":
                reader = f"read_csv({_string(str(path))}, header = true)"
            else:
                raise ValueError(
                    f"table {name!r}: {path} is neither .parquet nor .csv "
                    "(use sqlite:///path for a SQLite database)"
                )
            con.execute(f"CREATE TABLE {quote(name)} AS SELECT * FROM {reader}")  # noqa: S608
        else:
            raise TypeError(
                f"table {name!r}: expected a DataFrame, a .parquet/.csv path or "
                f"'sqlite:///path', got {type(source).__name__}"
            )
    for name in tables:
        _nan_to_null(con, name)
    # the tables are in memory now: whatever a query says, DuckDB reads no file
    # (read_csv('/etc/passwd'), ATTACH, COPY) and no setting can turn that back on
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """``{column: DuckDB type}`` of ``table``."""
    rows = con.execute(f"DESCRIBE {quote(table)}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}
