"""A site's tables in DuckDB: DataFrames, Parquet and CSV files, SQLite databases.

Nothing is downloaded: Parquet and CSV are read by DuckDB itself, SQLite
through Python's ``sqlite3``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from covey.analytics._sqltext import TABLE_NAME, fold
from covey.core._text import clipped

logger = logging.getLogger("covey")

SQLITE_PREFIX = "sqlite:///"
MAX_NAME = 255


def quote(name: str) -> str:
    """A DuckDB identifier for any column name: in double quotes, a double quote doubled."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or "\x00" in name:
        raise ValueError(f"{name!r} is not a valid column name")
    return '"' + name.replace('"', '""') + '"'


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
    tables: Mapping[str, Any], site: str = ""
) -> tuple[duckdb.DuckDBPyConnection, dict[str, dict[str, str]]]:
    """:func:`load_tables`, and each table's ``{column: DuckDB type}`` (see :func:`columns`).

    Each table is described once, as loaded: no statement run on the connection
    afterwards can change a table (external access and the configuration are
    locked, and a site runs only the SELECTs it writes itself). ``site``: the
    site's name, for the warnings loading a table may give.
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
    con = duckdb.connect(":memory:")
    for name, source in tables.items():
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
                _parquet(con, name, path)
            elif suffix == ".csv":
                load_csv(con, name, path, site)
            else:
                raise ValueError(
                    f"table {name!r}: {path} is neither .parquet nor .csv "
                    "(use sqlite:///path for a SQLite database)"
                )
        else:
            raise TypeError(
                f"table {name!r}: expected a DataFrame, a .parquet/.csv path or "
                f"'sqlite:///path', got {type(source).__name__}"
            )
    schemas = {name: columns(con, name) for name in tables}
    for name in tables:
        _nan_to_null(con, name, schemas[name])
    # a TIMESTAMP WITH TIME ZONE is read in UTC at every site, whatever the machine's
    # time zone: else WHERE d < '2024-01-02' and each value's day differ by site
    con.execute("SET GLOBAL TimeZone = 'UTC'")  # the cursors' too
    # the tables are in memory now: whatever a query says, DuckDB reads no file
    # (read_csv('/etc/passwd'), ATTACH, COPY) and no setting can turn that back on
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, schemas


def columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """``{column: DuckDB type}`` of ``table``."""
    rows = con.execute(f"DESCRIBE {table_name(table)}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _header_cells(
    con: duckdb.DuckDBPyConnection, label: str, path: Path, text: str
) -> list[str | None]:
    """A CSV file's header row, each cell as written (None: empty), split as DuckDB splits it.

    The row is read as data in the dialect DuckDB's sniffer finds for the file with
    a header (delimiter, quotes, escapes, comment, the lines it skips above it).
    Lines it skips that hold its delimiter are warned of: a row with more fields
    than the header makes the sniffer take it for the header, skipping the file's
    own header and the rows above (``a,b`` then ``1,2`` then ``3,4,5`` loads as the
    columns ``3``, ``4`` and ``5``).
    """
    sniff = f"sniff_csv({text}, header = true)"
    d, q, e, c, skip = con.execute(
        f"SELECT Delimiter, Quote, Escape, Comment, SkipRows FROM {sniff}"  # noqa: S608
    ).fetchone() or (",", '"', '"', "", 0)
    dialect = ", ".join(
        f"{k} = {_string('' if v == '(empty)' else str(v))}"
        for k, v in (("delim", d), ("quote", q), ("escape", e), ("comment", c))
    )
    _check_skipped(label, path, int(skip), str(d))
    reader = f"read_csv({text}, header = false, all_varchar = true, skip = {int(skip)}, {dialect})"
    row = con.execute(f"SELECT * FROM {reader} LIMIT 1").fetchone()  # noqa: S608
    return list(row or ())


def _check_skipped(label: str, path: Path, skip: int, delim: str) -> None:
    """Warn that DuckDB skips lines of fields above what it takes for a CSV's header (see above).

    A title above the header (``Report, 2024``) is skipped so too, so it is not
    refused; the warning says which line DuckDB takes for the header.
    """
    if not skip or not delim or delim == "(empty)":
        return
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        lines = [f.readline() for _ in range(skip + 1)]
    fields = [number for number, line in enumerate(lines[:skip], start=1) if delim in line]
    if fields:
        logger.warning(
            "%s: DuckDB's reader skips %s of %s (line %d: %s) and takes line %d for "
            "the header (%s); if the lines skipped are the header and rows, a row has more "
            "fields than the header: give every row as many fields as the header",
            label,
            f"line {skip}" if skip == 1 else f"lines 1 to {skip}",
            path,
            fields[0],
            _shown(lines[fields[0] - 1]),
            skip + 1,
            _shown(lines[skip]),
        )


def _shown(line: str) -> str:
    return repr(clipped(line.rstrip("\r\n"), 100))


def load_csv(con: duckdb.DuckDBPyConnection, name: str, path: Path, site: str = "") -> None:
    """Load a CSV file as table ``name``, under the names its header gives, or refuse it.

    DuckDB's reader names a column whose header cell is empty or white space
    ``column<i>`` (or ``C<i>``), and one whose name an earlier column has (in any
    case of its ASCII letters) ``<name>_1``: names the data's owner never gave, and
    the second may be another column's. Such a header is refused, naming the file
    and the column's position, unless an unnamed column holds no value in any row
    (a trailing comma on every line makes one): that one is left out. The spaces
    DuckDB trims around a name (``age, city`` names ``city``) are trimmed.
    """
    if _blank(path):
        raise ValueError(f"table {name!r}: {path} is empty; give at least its header row")
    text = _string(str(path))
    try:
        label = f"site {site!r}: table {name!r}" if site else f"table {name!r}"
        cells = _header_cells(con, label, path, text)
        reader = f"read_csv({text}, header = true)"
        con.execute(f"CREATE TABLE {table_name(name)} AS SELECT * FROM {reader}")  # noqa: S608
    except duckdb.Error as exc:
        why = str(exc).strip().splitlines()[0]
        raise ValueError(f"table {name!r}: {path} cannot be read as CSV: {why}") from None
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
        if n:
            cell = "an empty cell" if cells[i] is None else f"only white space, {cells[i]!r}"
            raise ValueError(
                f"table {name!r}: column {i + 1} of {where} has no name ({cell}) but holds "
                f"values in {n} row(s), which DuckDB would load as a column {loaded[i]!r} "
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
    """Whether a file holds nothing but white space (DuckDB reads it as a column ``column0``)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _value_counts(con: duckdb.DuckDBPyConnection, name: str, cols: Sequence[str]) -> list[int]:
    """How many rows of table ``name`` hold a value in each of ``cols``."""
    if not cols:
        return []
    counts = ", ".join(f"COUNT({quote(c)})" for c in cols)
    row = con.execute(f"SELECT {counts} FROM {table_name(name)}").fetchone()  # noqa: S608
    return [int(n) for n in row or ()]
