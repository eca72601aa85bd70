"""Read a run's database without writing to it or beside it, and tell whether a run is held.

A run killed while it ran (``kill -9``, a power cut) leaves ``run.sqlite``
with its newest commits still in ``run.sqlite-wal``. SQLite reads a WAL only
through its ``-shm`` index, which it makes beside the database even when it
opens it read-only, and marks on every read. So such a database is copied,
with its ``-wal``, into a temporary folder and read there; the copy is
deleted when the connection closes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import tempfile
import weakref
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, Final

__all__ = [
    "LOCK_NAME",
    "cannot_write",
    "is_held",
    "is_simulation",
    "open_copy",
    "open_read_only",
]

LOCK_NAME: Final = "run.lock"
"""Held (``flock``) by the one server process that runs the run."""


class _CopyConnection(sqlite3.Connection):
    """A connection to a private copy of a database; closing it deletes the copy."""

    _cleanup: weakref.finalize[Any, Any] | None = None

    def close(self) -> None:
        """Close the connection, then delete the folder of the copy."""
        super().close()
        if self._cleanup is not None:
            self._cleanup()


def open_copy(db: Path, *, timeout: float = 5.0, shared: bool = False) -> sqlite3.Connection:
    """Open a copy of ``db`` and its ``-wal`` taken into a temporary folder.

    Only for a database no process writes to (its run stopped): the two files
    are copied one after the other.

    Args:
        db: The ``run.sqlite`` file, with ``run.sqlite-wal`` beside it.
        timeout: Seconds to wait for a lock (none is held on the copy).
        shared: The connection is used from several threads (each holding a lock).

    Raises:
        sqlite3.Error: The copy cannot be opened.
        OSError: The files cannot be copied.
    """
    folder = Path(tempfile.mkdtemp(prefix="covey-read-"))
    try:
        copy = folder / db.name
        shutil.copyfile(db, copy)
        wal = db.with_name(db.name + "-wal")
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        conn = _CopyConnection(
            copy.resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=timeout,
            check_same_thread=not shared,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    conn._cleanup = weakref.finalize(conn, shutil.rmtree, folder, ignore_errors=True)
    return conn


def is_held(path: Path) -> bool | None:
    """Whether a server process holds the run in ``path`` now.

    (See :func:`~covey.server._rundb.hold_run`.)

    Only reads: the probe takes a shared lock for an instant, which
    :func:`~covey.server._rundb.hold_run` waits out.

    Returns:
        True or False; None when it cannot tell (no ``run.lock``: a run made by
        an older covey, or no ``flock`` on this system).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:  # non-blocking: a named pipe in its place would wait for a writer for ever
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # not the lock any covey holds
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # lets go of the probe's lock
    return False


def open_read_only(db: Path, *, timeout: float = 5.0, shared: bool = False) -> sqlite3.Connection:
    """Open a run's ``run.sqlite`` to read it, never writing to it or beside it.

    A database in WAL mode needs its ``-shm`` index, which SQLite makes next
    to it when it is first opened (and, read only, leaves there with an empty
    ``-wal``); in a folder the reader cannot write to (a read-only mount, a
    colleague's run) that fails. A database with no ``-wal`` file holds every
    commit (its run closed it cleanly), so it is read as immutable when no run
    holds the folder, or when the folder cannot be written to. One with a
    ``-wal`` that no run holds (its run was killed) is read through a private
    copy of both files (see :func:`open_copy`), so its
    last rounds are seen and no ``-shm`` is made or touched beside it.

    Args:
        db: The ``run.sqlite`` file.
        timeout: Seconds to wait for a writer's lock.
        shared: The connection is used from several threads (each holding a lock).

    Raises:
        sqlite3.Error: The database cannot be opened or read.
    """
    uri = db.resolve().as_uri() + "?mode=ro"  # as_uri escapes "#", "?" and "%"

    def connect(to: str) -> sqlite3.Connection:
        return sqlite3.connect(to, uri=True, timeout=timeout, check_same_thread=not shared)

    wal = db.with_name(db.name + "-wal")
    if is_held(db.parent) is False:  # no process writes to it: nothing changes under us
        if not wal.exists():
            return connect(uri + "&immutable=1")
        with suppress(OSError):  # e.g. no room for the copy: read it in place
            return open_copy(db, timeout=timeout, shared=shared)
    conn = connect(uri)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file now
    except sqlite3.OperationalError as exc:
        if (
            not cannot_write(exc)
            or os.access(db.parent, os.W_OK)
            or (wal.exists() and wal.stat().st_size > 0)
        ):
            return conn  # the caller's first query says what is wrong
        conn.close()
        return connect(uri + "&immutable=1")
    except sqlite3.DatabaseError:
        return conn  # not a database: the caller's first query says so
    return conn


def cannot_write(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed to open or write a file (or found no room), not on what it read."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(
        ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_FULL", "SQLITE_IOERR")
    )


def is_simulation(folder: Path) -> bool:
    """Whether the run in ``folder`` is a simulation's; False for a served run, or none.

    A simulation writes ``run.json``, but only once its ``run.sqlite`` is made: a
    simulation killed in between is told by the ``"kind": "simulated"`` its
    ``run.sqlite`` records, in the transaction that made it. A ``run.sqlite`` that
    cannot be read says nothing of its kind (its readers name what is wrong).
    """
    if (folder / "run.json").is_file():
        return True
    db = folder / "run.sqlite"
    if not db.is_file():
        return False
    with suppress(sqlite3.Error, OSError, ValueError, RecursionError):
        with closing(open_read_only(db)) as conn:
            row = conn.execute("SELECT config FROM run WHERE id = 1").fetchone()
        config = json.loads(str(row[0])) if row is not None else None
        return isinstance(config, dict) and config.get("kind") == "simulated"
    return False
