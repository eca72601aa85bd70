"""The SQLite layer of a run store: the schema, making and opening ``run.sqlite``.

SQLite runs in WAL mode with ``synchronous=FULL``, so a committed transaction
survives a power cut (but those made with ``transaction(sync=False)``, until the
next synced commit). A new database is built under a temporary name and
linked into place, so a crash while creating a run never leaves a half-made
``run.sqlite`` behind. :class:`RunDB` holds the one connection of an open
store behind a lock.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from covey.core._files import TMP_SUFFIX, fsync_dir
from covey.core._version import covey_version
from covey.server._dbdamage import damaged_store, empty_store_reason, not_a_run
from covey.server._readcopy import LOCK_NAME, cannot_write, is_held, open_read_only
from covey.server._runlock import hold_run

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "NewerFormatError",
    "RunDB",
    "empty_store_reason",
    "hold_run",
    "is_held",
    "open_read_only",
    "schema_refusal",
]

SCHEMA_VERSION: Final = 1
"""The version of the SQLite schema this module reads and writes."""

DB_NAME: Final = "run.sqlite"
_FORMAT: Final = "covey-run"
_SERVED_BY: Final = "served_by"
"""The meta key naming the covey version that served the run last."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS run ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " config TEXT NOT NULL,"
    " created_at REAL NOT NULL,"
    " covey_version TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),"
    " updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rounds ("
    " round INTEGER PRIMARY KEY CHECK (round >= 0),"
    " weights_file TEXT,"  # NULL once pruned (keep_last)
    " sha256 TEXT,"
    " record TEXT,"
    " server_state BLOB,"
    " completed_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS clients ("
    " name TEXT PRIMARY KEY,"
    " id INTEGER NOT NULL UNIQUE,"
    " first_seen REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " time REAL NOT NULL,"
    " client TEXT NOT NULL,"
    " event TEXT NOT NULL,"
    " detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_client ON events (client, seq)",
    # The rounds that keep a weights file (keep_last prunes the others after every
    # round): found without reading every round's row, however long the run.
    "CREATE INDEX IF NOT EXISTS rounds_kept ON rounds (round) WHERE weights_file IS NOT NULL",
)


class NewerFormatError(ValueError):
    """Part of a run folder is in a format a newer covey writes, which this one cannot read.

    Never taken for damage: a resume that skipped such a round would redo it and
    delete what the newer covey saved.
    """


class RunDB:
    """The SQLite database of one run, one connection shared by every thread under a lock.

    Make the file with :meth:`create`, open it with :meth:`open`.

    Args:
        run_dir: The run directory (for error messages).
        connection: The open connection (usable from any thread; autocommit mode
            if ``writable``).
        writable: The connection may write; if not, it is opened again to write
            at the first write (:meth:`transaction`, :meth:`for_writing`).
    """

    def __init__(
        self, run_dir: Path, connection: sqlite3.Connection, *, writable: bool = True
    ) -> None:
        """Use :meth:`open`."""
        self._run_dir = run_dir
        self._conn: sqlite3.Connection | None = connection
        self._writable = writable
        self._lock = threading.Lock()  # guards the connection
        self._file = _identity(run_dir / DB_NAME) if writable else None  # the file written

    @staticmethod
    def create(path: Path, config_text: str, version: str) -> None:
        """Make ``path/run.sqlite`` for a new run with status ``"running"``.

        Args:
            path: The run directory (it exists).
            config_text: The run's settings, as JSON text.
            version: The covey version that creates the run.

        Raises:
            FileExistsError: ``path`` already holds a run (perhaps made meanwhile
                by another process).
            OSError: The file cannot be written (a full disk), naming it.
        """
        db_path = path / DB_NAME
        fd, tmp_name = tempfile.mkstemp(dir=path, prefix=f".{DB_NAME}.", suffix=TMP_SUFFIX)
        os.close(fd)
        tmp = Path(tmp_name)
        if len(os.fsencode(tmp.absolute())) + len("-journal") >= _SQLITE_MAX_PATH:
            tmp.unlink()  # SQLite said only "unable to open database file"
            raise OSError(
                f"cannot create {db_path}: SQLite opens no file whose full path is "
                f"{_SQLITE_MAX_PATH} bytes or more, and this run folder's path of "
                f"{len(os.fsencode(path.absolute()))} bytes leaves its files too little: "
                "choose a shorter one"
            )
        try:
            try:
                _fill_new(tmp, config_text, version)
            except sqlite3.OperationalError as exc:  # "database or disk is full", ...
                raise OSError(f"cannot create {db_path}: {exc}") from exc
            _fsync_file(tmp)
            try:
                os.link(tmp, db_path)  # fails if another process created a run meanwhile
            except FileExistsError:
                raise FileExistsError(
                    f"a covey run already exists in {path}; resume it with RunStore.open "
                    "or choose another directory"
                ) from None
            except OSError:  # no hard links on this file system
                if db_path.exists():
                    raise FileExistsError(f"a covey run already exists in {path}") from None
                os.replace(tmp, db_path)
            fsync_dir(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def open(cls, path: Path, *, serve: bool = False) -> tuple[RunDB, str]:
        """Open ``path/run.sqlite`` (which must exist); return it and the run's config text.

        A run this user cannot write to (a read-only folder or file, such as a
        finished run copied from another machine) is opened to read, writing
        nothing to it or beside it (:func:`open_read_only`): everything that reads
        works, and the first write raises an ``OSError`` naming the folder.

        Args:
            path: The run directory.
            serve: This covey is to serve the run: refuse it if a newer covey
                release served it last, else record this one as its last server.

        Raises:
            ValueError: The file is not a covey run database, or its schema
                version is unknown.
            NewerFormatError: ``serve`` and a newer covey release served the run last.
            OSError: ``serve`` and the file cannot be opened to write (a read-only folder).
        """
        db_path = path / DB_NAME
        if serve or _writable(path):
            try:
                conn, config_text = _open_to_write(path, serve=serve)
            except OSError:
                if serve:
                    raise
            else:
                return cls(path, conn), config_text
        try:
            conn = open_read_only(db_path, shared=True)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open {db_path} to read the run: {exc}") from exc
        try:
            config_text = _check_run_db(conn, db_path, to="read")
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, writable=False), config_text

    def close(self) -> None:
        """Close the connection. Closing twice is harmless."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the connection for reading.

        Raises:
            DamagedStoreError: SQLite found the file damaged, naming it.
        """
        with self._lock:
            try:
                yield self._db()
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as exc:  # a corrupt page, not a lock or the disk
                raise damaged_store(self._run_dir / DB_NAME, exc) from exc

    def for_writing(self) -> None:
        """Make sure the run can be written, before a write that starts beside the database.

        Raises:
            OSError: The run was opened to read and cannot be written (see :meth:`open`).
        """
        with self._lock:
            self._writer()

    @contextmanager
    def transaction(self, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the connection in one write transaction, committed unless the block raises.

        Args:
            sync: Sync the write-ahead log at the commit (``synchronous=FULL``). False
                leaves that to the next commit that syncs (``NORMAL``): the write then
                survives a crash of the process, not yet a power cut, and costs no
                ``fsync``. The log is appended in order, so a synced commit makes every
                earlier one durable with it. For fleet events and client ids, which a
                fleet of hundreds writes in bursts (a join each, a leave each).

        Raises:
            OSError: SQLite could not write (``database or disk is full``, a
                read-only folder, the database locked too long), naming the file.
        """
        with self._lock:
            conn = self._writer()
            self._check_in_place()
            try:
                if not sync:
                    conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            with suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        raise
                finally:
                    if not sync:
                        conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.OperationalError as exc:
                raise OSError(f"cannot write {self._run_dir / DB_NAME}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise damaged_store(self._run_dir / DB_NAME, exc) from exc

    def _db(self) -> sqlite3.Connection:
        """The open connection."""
        if self._conn is None:
            raise ValueError(f"the RunStore of {self._run_dir} is closed")
        return self._conn

    def _writer(self) -> sqlite3.Connection:
        """The open connection, opened again to write if it was opened to read (lock held)."""
        conn = self._db()
        if self._writable:
            return conn
        try:
            writer, _ = _open_to_write(self._run_dir)
        except OSError as exc:
            raise OSError(
                f"cannot write to the run in {self._run_dir}: {exc.__cause__ or exc}; it was "
                "opened to read only (give this user write permission on the folder and its "
                "files, or copy the folder somewhere writable)"
            ) from exc
        self._conn, self._writable = writer, True
        self._file = _identity(self._run_dir / DB_NAME)
        conn.close()
        return writer

    def _check_in_place(self) -> None:
        """Refuse to write once ``run.sqlite`` is no longer the file this store opened.

        SQLite goes on writing a file deleted (or replaced) under it, with no
        error: every round committed after would be lost when the process ends.

        Raises:
            OSError: naming the file, and that it was deleted or replaced.
        """
        if self._file is None or _identity(self._run_dir / DB_NAME) == self._file:
            return
        db_path = self._run_dir / DB_NAME
        raise OSError(
            f"cannot write {db_path}: it was deleted or replaced while this run had it open, "
            "so what the run writes would be lost; the run stops here (a run folder's files "
            "are the run's own: move or delete them only once it has stopped)"
        )


def _identity(path: Path) -> tuple[int, int] | None:
    """The device and inode of the file at ``path``, or None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def schema_refusal(
    conn: sqlite3.Connection, db_path: Path, meta: dict[str, str] | None = None
) -> str | None:
    """Why this covey cannot read the run database ``conn`` (another schema), or None.

    Args:
        conn: The open database.
        db_path: Its path, for the message.
        meta: Its ``meta`` table, if read already.

    Returns:
        A message naming the schema, the covey that wrote it and this covey's version.
    """
    if meta is None:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error:
            return None
    if meta.get("format") != _FORMAT or meta.get("schema_version") == str(SCHEMA_VERSION):
        return None
    writer = meta.get(_SERVED_BY)
    if writer is None:
        with suppress(sqlite3.Error):  # a newer schema may keep it elsewhere
            row = conn.execute("SELECT covey_version FROM run WHERE id = 1").fetchone()
            writer = None if row is None else str(row[0])
    return (
        f"{db_path} has schema version {meta.get('schema_version')}"
        f"{'' if writer is None else f' (written by covey {writer})'}, but this is covey "
        f"{covey_version()}, which reads only schema version {SCHEMA_VERSION}: use the covey "
        "version that wrote the run"
    )


def _writable(path: Path) -> bool:
    """Whether this user may write the run in ``path``: its folder and its database."""
    return os.access(path, os.W_OK) and os.access(path / DB_NAME, os.W_OK)


def _open_to_write(path: Path, *, serve: bool = False) -> tuple[sqlite3.Connection, str]:
    """A connection to ``path/run.sqlite`` that writes (see :meth:`RunDB.open`), and its config.

    Raises:
        OSError: The file cannot be opened to write, naming it (and why, as SQLite said).
    """
    db_path = path / DB_NAME
    # mode=rw: never create a database here.
    uri = db_path.resolve().as_uri() + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        config_text = _check_run_db(conn, db_path)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                conn.execute(statement)
            if serve:
                _claim(conn, path)
        except sqlite3.OperationalError as exc:  # no room for the WAL files, ...
            raise OSError(f"cannot open {db_path} to write the run: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn, config_text


def _check_run_db(conn: sqlite3.Connection, db_path: Path, *, to: str = "write") -> str:
    """Check that ``conn`` is a covey run database this version can read; return its config.

    ``to``: what ``conn`` was opened to do (``"write"`` or ``"read"``), for the message.
    """
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        other_schema = schema_refusal(conn, db_path, meta)
        if other_schema is not None:  # its tables may be laid out otherwise: read none
            raise ValueError(other_schema)
        row = conn.execute("SELECT config FROM run WHERE id = 1").fetchone()
    except sqlite3.OperationalError as exc:
        if not cannot_write(exc):
            raise ValueError(not_a_run(db_path, exc)) from exc
        folder = db_path.parent  # it cannot be opened: not that it is no run's
        why = "" if os.access(folder, os.W_OK) else f" (this user cannot write to {folder})"
        raise OSError(f"cannot open {db_path} to {to} the run: {exc}{why}") from exc
    except sqlite3.DatabaseError as exc:
        raise ValueError(not_a_run(db_path, exc)) from exc
    if meta.get("format") != _FORMAT or row is None:
        raise ValueError(f"{db_path} is not a covey run database")
    config_text: str = row[0]
    try:
        settings = json.loads(config_text)
    except (TypeError, ValueError, RecursionError) as exc:  # nested too deeply: damaged too
        settings = exc
    if not isinstance(settings, dict):
        raise ValueError(f"{db_path}: the run's settings are damaged ({settings})")
    return config_text


def _release(version: str) -> tuple[int, int] | None:
    """The major and minor number of a covey version; None if unknown (a bare source tree).

    Example:
        >>> _release("0.2.1.dev3"), _release("0.0.0"), _release("unknown")
        ((0, 2), None, None)
    """
    parts = version.split(".")[:2]
    digits = ["".join(itertools.takewhile(str.isdigit, p)) for p in parts]
    if len(digits) < 2 or not all(digits) or version == "0.0.0":
        return None
    return int(digits[0]), int(digits[1])


def _claim(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse to serve a run a newer covey release served last; else record this one.

    A newer release may keep what an older one cannot read in the same schema
    (a new format of the aggregation state, new fields of a round's record);
    the older one would write its rounds over them.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SERVED_BY,)).fetchone()
    if row is None:  # a run no server claimed yet: the one that created it
        row = conn.execute("SELECT covey_version FROM run WHERE id = 1").fetchone()
    last, this = str(row[0]) if row else "", covey_version()
    theirs, ours = _release(last), _release(this)
    if theirs is not None and ours is not None and theirs > ours:
        raise NewerFormatError(
            f"the run in {path} was last served by covey {last}; this is covey {this}, an "
            "older release, which may not read everything it saved and would write over "
            f"it: resume it with covey {theirs[0]}.{theirs[1]} or newer"
        )
    if ours is not None and last != this:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_SERVED_BY, this))


_SQLITE_MAX_PATH = 512  # the longest full path (in bytes, with its end) SQLite opens on Unix


def _fill_new(tmp: Path, config_text: str, version: str) -> None:
    """Write the schema and the run's row into the new database file ``tmp``."""
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("format", _FORMAT), ("schema_version", str(SCHEMA_VERSION))],
        )
        conn.execute(
            "INSERT INTO run (id, config, created_at, covey_version, status, updated_at)"
            " VALUES (1, ?, ?, ?, 'running', ?)",
            (config_text, now, version, now),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _fsync_file(path: Path) -> None:
    """Flush a file's contents to disk."""
    with open(path, "r+b") as f:
        os.fsync(f.fileno())
