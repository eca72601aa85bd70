"""A site's tables in DuckDB: DataFrames, Parquet and CSV files, SQLite databases.

Nothing is downloaded: Parquet and CSV are read by DuckDB itself, SQLite
through Python's ``sqlite3``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from covey.analytics._sqltext import TABLE_NAME, fold

SQLITE_PREFIX = "sqlite:///"
MAX_NAME = 255


def counted(n: int, noun: str) -> str:
    """``n`` with ``noun``, plural but for one: ``1 row``, ``3 rows``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def quote(name: str) -> str:
    """A DuckDB identifier for any column name: in double quotes, a double quote doubled."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or "\x00" in name:
        raise ValueError(f"{name!r} is not a valid column name")
    return '"' + name.replace('"', '""') + '"'


def per_column(
    con: duckdb.DuckDBPyConnection,
    table: str,
    cols: Sequence[str],
    aggregates: Callable[[str], Sequence[str]],
) -> list[tuple[Any, ...]] | None:
    """In one scan of ``table``, each of ``cols``'s values of ``aggregates(quoted column)``.

    None if the scan returns no row.
    """
    parts = [aggregates(c) for c in map(quote, cols)]
    scan = ", ".join(a for part in parts for a in part)
    found = con.execute(f"SELECT {scan} FROM {table}").fetchone()  # noqa: S608
    if found is None:
        return None
    out, at = [], 0
    for part in parts:
        out.append(tuple(found[at : at + len(part)]))
        at += len(part)
    return out


def table_name(name: str) -> str:
    """A table's name, checked (letters, digits and underscores), as a DuckDB identifier."""
    if not isinstance(name, str) or not TABLE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid table name: give 1 to 63 ASCII letters, digits "
            "and underscores, not starting with a digit"
        )
    return '"' + name + '"'


def check_names(
    table: str, names: Any, source: str = "", positions: Sequence[int] | None = None
) -> None:
    """Refuse a table whose column names SQL cannot tell apart, or that SQL cannot name.

    DuckDB reads ``age`` and ``Age`` as one name, and loading such columns (or two
    columns of exactly one name) renames one of them (``Age_1``), which may already
    be another column's name: a query would read other data than it names. It
    renames a column of the empty name too (``C0``), which SQL cannot name
    (DuckDB refuses the identifier ``""``). ``source``, when given, says where the
    names are (a CSV file's header), and each refusal names the columns' positions
    (``positions``, counting from 0: where each of ``names`` is in the file).
    """
    seen: dict[str, tuple[int, str]] = {}
    where = f" ({source})" if source else ""
    for k, raw in enumerate(names):
        name, i = str(raw), k if positions is None else positions[k]
        if not name:
            raise ValueError(
                f"table {table!r}: column {i + 1} has the empty name '', which SQL cannot "
                f"name (DuckDB would load it renamed){where}; give it a name"
            )
        j, other = seen.get(fold(name), (-1, None))
        at = f" (columns {j + 1} and {i + 1} of {source})" if source else ""
        if other == name:
            raise ValueError(
                f"table {table!r} has two columns named {name!r}; rename one of them{at}"
            )
        if other is not None:
            raise ValueError(
                f"table {table!r} has the columns {other!r} and {name!r}, which SQL reads as "
                f"one name (names ignore the case of ASCII letters); rename one of them{at}"
            )
        seen[fold(name)] = (i, name)


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
        frame = pd.read_sql_query(f"SELECT * FROM {table_name(name)}", db)  # noqa: S608
    finally:
        db.close()
    _copy(con, name, frame)


def _copy(con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> None:
    """Copy a DataFrame into a DuckDB table (columnar storage, no pandas scan per query).

    A table with no rows has no values to tell a text column's type by: DuckDB
    before 2.0 makes its object columns INTEGER (then ``ward LIKE 'n%'`` fails
    to bind), so they are given as text.
    """
    check_names(name, frame.columns)
    if len(frame.columns) == 0:
        raise ValueError(f"table {name!r} has no columns; give a DataFrame with at least one")
    for col, kind in frame.dtypes.items():
        if kind.kind == "c" or isinstance(kind, _UNLOADED):
            raise ValueError(_unloaded(name, col, kind))
    if frame.empty:
        text = [c for c in frame.columns if frame[c].dtype == object]
        frame = frame.astype(dict.fromkeys(text, "string"))
    source = table_name("__src_" + name)
    try:
        con.register(f"__src_{name}", frame)
        try:
            con.execute(f"CREATE TABLE {table_name(name)} AS SELECT * FROM {source}")  # noqa: S608
        finally:
            con.unregister(f"__src_{name}")
    except duckdb.Error as exc:
        col = _failing_column(con, frame)
        if col is None:
            raise ValueError(f"table {name!r} cannot be loaded: {exc}") from None
        raise ValueError(_unloaded(name, col, frame[col].dtype, exc)) from None


_UNLOADED = (pd.PeriodDtype, pd.IntervalDtype, pd.SparseDtype)


def _unloaded(table: str, col: Any, kind: Any, exc: Exception | None = None) -> str:
    """Why a column of a DataFrame (or SQLite table) cannot be a column of a site's table."""
    why = f" ({str(exc).splitlines()[0]})" if exc is not None else ""
    return (
        f"table {table!r}: column {str(col)!r} of type {kind} cannot be loaded{why}; "
        "give numbers, text, booleans or dates, one type per column (not numbers and "
        "blobs in one SQLite column), or leave the column out"
    )


def _failing_column(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> Any:
    """The first column of ``frame`` DuckDB fails to load on its own (None: none does)."""
    for col in frame.columns:
        try:
            con.register("__probe", frame[[col]])
            try:
                con.execute("CREATE TEMP TABLE __probe_t AS SELECT * FROM __probe")
                con.execute("DROP TABLE __probe_t")
            finally:
                con.unregister("__probe")
        except duckdb.Error:
            return col
    return None


def _parquet(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> None:
    import pyarrow.parquet as pq

    check_names(name, pq.read_schema(path).names)
    reader = f"read_parquet({_string(str(path))})"
    con.execute(f"CREATE TABLE {table_name(name)} AS SELECT * FROM {reader}")  # noqa: S608


def _nan_to_null(con: duckdb.DuckDBPyConnection, name: str, kinds: Mapping[str, str]) -> None:
    """Read NaN as NULL in a table's floating-point columns, as pandas does.

    A DataFrame's NaN reaches DuckDB as NULL, but Parquet and CSV keep it a value,
    which DuckDB orders above every number: it would be clipped to the top of the
    bounds and summed, so the same data would answer otherwise from another source.
    One statement for all the columns (``kinds``, the table's ``{column: type}``),
    so the table is scanned once; a row without a NaN is left as it is.
    """
    floats = [quote(c) for c, kind in kinds.items() if kind.upper() in ("FLOAT", "DOUBLE", "REAL")]
    if not floats:
        return
    sets = ", ".join(f"{c} = CASE WHEN isnan({c}) THEN NULL ELSE {c} END" for c in floats)
    anywhere = " OR ".join(f"isnan({c})" for c in floats)
    con.execute(f"UPDATE {table_name(name)} SET {sets} WHERE {anywhere}")  # noqa: S608


def load_tables(tables: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding ``tables`` (name -> source).

    Args:
        tables: Each name maps to a pandas DataFrame, a path to a ``.parquet`` or
            ``.csv`` file, or ``"sqlite:///path/to.db"`` (reads the table of the
            same name from that database).

    Returns:
        The connection; each table is queryable by its name.
    """
    return open_tables(tables)[0]


def open_tables(
    tables: Mapping[str, Any],
    bounded: Collection[str] = (),
    named: Collection[str] = (),
    ranked: Collection[str] = (),
) -> tuple[duckdb.DuckDBPyConnection, dict[str, dict[str, str]]]:
    """:func:`load_tables`, and each table's ``{column: DuckDB type}`` (see :func:`columns`).

    Each table is described once, as loaded: no statement run on the connection
    afterwards can change a table (external access and the configuration are
    locked, and a site runs only the SELECTs it writes itself). ``bounded``: the
    columns a site's policy bounds, which must hold numbers in a CSV file's table
    (see :func:`check_bounded`). ``named``: every column the policy names, which a
    CSV file's guessed header must not leave on the row below it (see ``load_csv``).
    ``ranked``: the columns whose MIN and MAX the policy reveals; a bounded or
    ranked column that holds no value is a column of numbers (see ``_empty_as_numbers``).
    """
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError("a site needs at least one table: tables={name: source}")
    folded: dict[str, str] = {}
    for name in tables:
        table_name(name)
        other = folded.setdefault(fold(name), name)
        if other != name:
            raise ValueError(
                f"tables {other!r} and {name!r} are one name to SQL (names ignore the case "
                "of ASCII letters); rename one of them"
            )
    from covey.analytics._csv import CSV, load_csv  # it imports this module

    con = duckdb.connect(":memory:")
    texts: list[str] = []  # the CSV files' tables, whose columns DuckDB's reader typed
    for name, source in tables.items():
        if isinstance(source, pd.DataFrame):
            _copy(con, name, source)
        elif isinstance(source, str) and source.startswith(SQLITE_PREFIX):
            _sqlite(con, name, source)
        elif isinstance(source, str | Path | CSV):
            if _file(con, name, source, CSV, partial(load_csv, named=named)):
                texts.append(name)
        else:
            raise TypeError(
                f"table {name!r}: expected a DataFrame, a .parquet/.csv path or "
                f"'sqlite:///path', got {type(source).__name__}"
            )
    schemas = {name: columns(con, name) for name in tables}
    for name in tables:
        _nan_to_null(con, name, schemas[name])
    for name in texts:
        check_bounded(con, name, schemas[name], bounded)
    for name in tables:
        _empty_as_numbers(con, name, schemas[name], [*bounded, *ranked])
    # a TIMESTAMP WITH TIME ZONE is read in UTC at every site, whatever the machine's
    # time zone: else WHERE d < '2024-01-02' and each value's day differ by site
    con.execute("SET GLOBAL TimeZone = 'UTC'")  # the cursors' too
    # the tables are in memory now: whatever a query says, DuckDB reads no file
    # (read_csv('/etc/passwd'), ATTACH, COPY) and no setting can turn that back on
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, schemas


def _empty_as_numbers(
    con: duckdb.DuckDBPyConnection, name: str, kinds: dict[str, str], numbers: Collection[str]
) -> None:
    """Make a column of ``numbers`` that holds no value at all a column of DOUBLE.

    A column of missing values alone has no type to tell: DuckDB types a CSV's
    empty column VARCHAR and a DataFrame's column of ``None`` ``"NULL"``. Where
    the policy bounds it or reveals its MIN and MAX (``numbers``), it is a column
    of numbers with every value missing, as a DataFrame's column of NaN is: the
    site counts its rows and sums none of its values, rather than refusing every
    query that sums the column. ``kinds`` is updated in place.
    """
    names = {fold(c) for c in numbers}
    for col, kind in list(kinds.items()):
        if fold(col) not in names or kind not in ("VARCHAR", '"NULL"'):
            continue
        c, table = quote(col), table_name(name)
        held = con.execute(f"SELECT COUNT({c}) FROM {table}").fetchone()  # noqa: S608
        if held is None or held[0]:
            continue
        con.execute(f"ALTER TABLE {table} ALTER COLUMN {c} SET DATA TYPE DOUBLE")
        kinds[col] = "DOUBLE"


def _file(con: duckdb.DuckDBPyConnection, name: str, source: Any, csv: Any, load: Any) -> bool:
    """Load a Parquet or CSV file (``source``: a path, or a ``csv``); whether it was a CSV."""
    path = Path(source.path if isinstance(source, csv) else source)
    if not path.is_file():
        raise FileNotFoundError(f"table {name!r}: no file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet" and not isinstance(source, csv):
        _parquet(con, name, path)
        return False
    if suffix == ".csv" or isinstance(source, csv):
        load(con, name, source if isinstance(source, csv) else path)
        return True
    raise ValueError(
        f"table {name!r}: {path} is neither .parquet nor .csv "
        "(use sqlite:///path for a SQLite database)"
    )


def columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """``{column: DuckDB type}`` of ``table``."""
    rows = con.execute(f"DESCRIBE {table_name(table)}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


#: A number written with a decimal comma (``40,5``), as DuckDB's and Python's regexes read it.
_DECIMAL_COMMA = r"[-+]?\d*,\d+"
#: A number of one group of three digits after a comma: ``1,234`` (1234) or a decimal comma
_ONE_GROUP = r"[-+]?[1-9]\d{0,2},\d{3}"
#: A number whose digits are grouped in thousands by a comma or a point
_GROUPED = r"[-+]?\d{1,3}([.,]\d{3})+([.,]\d+)?"


def _decimal_hint(name: str, which: str) -> str:
    return (
        f"read the file with covey site --csv-decimal {name}={which} or "
        f"covey.analytics.CSV(path, decimal={which!r}) in Python"
    )


def _only_decimal_comma(con: duckdb.DuckDBPyConnection, name: str, c: str) -> str | None:
    """The first value of column ``c`` only a decimal comma writes (``56,78``), or None."""
    found = con.execute(
        f"SELECT {c} FROM {table_name(name)} WHERE regexp_full_match(trim({c}), "  # noqa: S608
        f"'{_DECIMAL_COMMA}') AND NOT regexp_full_match(trim({c}), '{_ONE_GROUP}') "
        "ORDER BY rowid LIMIT 1"
    ).fetchone()
    return None if found is None else str(found[0]).strip()


def _why_text(con: duckdb.DuckDBPyConnection, name: str, c: str, value: str) -> str:
    """What makes ``value``, the first value of column ``c`` that is no number, text."""
    value = value.strip()
    if re.fullmatch(_ONE_GROUP, value):
        decimal = _only_decimal_comma(con, name, c)
        if decimal is not None:  # '56,78' beside '1,234': the file writes a decimal comma
            return (
                f" (its comma may group thousands, {value.replace(',', '')}, or be a decimal "
                f"comma, {value.replace(',', '.')}; {decimal!r} in the same column can only "
                f"be written with a decimal comma: {_decimal_hint(name, ',')}, and write "
                f"{value!r} without its comma if it stands for {value.replace(',', '')})"
            )
        return (
            f" (its comma may group thousands, {value.replace(',', '')}, or be a decimal "
            f"comma, {value.replace(',', '.')}: say which, covey site --csv-decimal {name}=. "
            f"if it groups thousands or {name}=, if it is a decimal comma, or "
            "covey.analytics.CSV(path, decimal='.' or ',') in Python)"
        )
    if re.fullmatch(_DECIMAL_COMMA, value):
        return f" (a decimal comma: {_decimal_hint(name, ',')})"
    if re.fullmatch(r"[-+]?\d{1,3}( \d{3})+([.,]\d+)?", value):
        return (
            " (digits grouped by a plain space, which may be two values run together: "
            "write the number without it, or group by a no-break space, U+00A0)"
        )
    if not re.fullmatch(_GROUPED, value):
        return ""
    plain = con.execute(
        f"SELECT {c} FROM {table_name(name)} WHERE regexp_full_match(trim({c}), "  # noqa: S608
        f"'[-+]?\\d{{4,}}([.,]\\d+)?') ORDER BY rowid LIMIT 1"
    ).fetchone()
    beside = f", such as {str(plain[0]).strip()!r}," if plain else ""
    return (
        f" (digits grouped in thousands, which are read so only where every number of the "
        f"column is grouped or has three digits at most before the decimal separator; "
        f"numbers written without groups{beside} make the column text: write them all one way)"
    )


def _read_otherwise(con: duckdb.DuckDBPyConnection, name: str, c: str) -> str:
    """Why a column whose values each read as a number is text: a decimal point, read as a comma."""
    row = con.execute(
        f"SELECT {c} FROM {table_name(name)} WHERE regexp_full_match(trim({c}), "  # noqa: S608
        "'[-+]?\\d*\\.\\d+') ORDER BY rowid LIMIT 1"
    ).fetchone()
    if row is None:
        return ""
    return (
        f": its values such as {str(row[0]).strip()!r} are written with a decimal point, but "
        f"the file is read with a decimal comma ({_decimal_hint(name, '.')})"
    )


def check_bounded(
    con: duckdb.DuckDBPyConnection, name: str, kinds: Mapping[str, str], bounded: Collection[str]
) -> None:
    """Refuse a CSV's column of text that the policy bounds, naming its first value no number.

    Bounds are for numbers: in a CSV, a value no number (``unknown``, or a
    missing value marked otherwise than the file is read with) makes a whole
    column text, which a site would refuse to sum at every query while the
    other sites sum theirs. Said when the site starts, where the data's owner
    can mend it. (A DataFrame's column of text is the owner's own choice, and so
    is a CSV's column that holds no number at all, such as another table's
    ``age`` of ranges (``40-49``) where the policy's bounds name a column by its
    name in every table: the site refuses the queries that sum it.)
    """
    names = {fold(c) for c in bounded}
    for col, kind in kinds.items():
        if fold(col) not in names or kind != "VARCHAR":
            continue
        c = quote(col)
        numbers = con.execute(  # none: a column of text by design (another table's 'age')
            f"SELECT COUNT(*) FROM {table_name(name)} WHERE TRY_CAST({c} AS DOUBLE) IS NOT "  # noqa: S608
            f"NULL OR regexp_full_match({c}, '{_DECIMAL_COMMA}')"
        ).fetchone()
        if not numbers or not numbers[0]:
            continue
        row = con.execute(
            f"SELECT {c}, n FROM (SELECT {c}, rowid, COUNT(*) OVER () AS n FROM "  # noqa: S608
            f"{table_name(name)} WHERE {c} IS NOT NULL AND TRY_CAST({c} AS DOUBLE) IS NULL) "
            "ORDER BY rowid LIMIT 1"
        ).fetchone()
        first = (
            f": {counted(row[1], 'row')} {'holds' if row[1] == 1 else 'hold'} a value that is "
            f"no number, the first {row[0]!r}{_why_text(con, name, c, str(row[0]))}"
            if row
            else _read_otherwise(con, name, c)
        )
        raise ValueError(
            f"table {name!r}: the policy bounds column {col!r}, but it holds text{first}; "
            "give numbers in it, and leave missing values empty (a CSV file's NA, N/A, NULL "
            f"and . are missing values too, unless its CSV(path, na=...) or covey site "
            f"--csv-na {name}=... says otherwise)"
        )
