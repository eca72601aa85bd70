"""Read a stopped run's database through a private copy, writing nothing beside it.

A run killed while it ran (``kill -9``, a power cut) leaves ``run.sqlite``
with its newest commits still in ``run.sqlite-wal``. SQLite reads a WAL only
through its ``-shm`` index, which it makes beside the database even when it
opens it read-only, and marks on every read. So such a database is copied,
with its ``-wal``, into a temporary folder and read there; the copy is
deleted when the connection closes.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import weakref
from pathlib import Path
from typing import Any

__all__ = ["open_copy"]


class _CopyConnection(sqlite3.Connection):
    """A connection to a private copy of a database; closing it deletes the copy."""

    _cleanup: weakref.finalize[Any, Any] | None = None

    def close(self) -> None:
        """Close the connection, then delete the folder of the copy."""
        super().close()
        if self._cleanup is not None:
            self._cleanup()


def open_copy(db: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """Open a copy of ``db`` and its ``-wal`` taken into a temporary folder.

    Only for a database no process writes to (its run stopped): the two files
    are copied one after the other.

    Args:
        db: The ``run.sqlite`` file, with ``run.sqlite-wal`` beside it.
        timeout: Seconds to wait for a lock (none is held on the copy).

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
        conn = _CopyConnection(copy.resolve().as_uri() + "?mode=ro", uri=True, timeout=timeout)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    conn._cleanup = weakref.finalize(conn, shutil.rmtree, folder, ignore_errors=True)
    return conn
