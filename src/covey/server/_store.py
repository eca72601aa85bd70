"""The resumable state of a federation server, kept in a run directory.

A run directory holds::

    RUN_DIR/run.sqlite                          settings, rounds, clients, fleet events
    RUN_DIR/weights/round-00000.safetensors     global weights after each completed round

SQLite runs in WAL mode with ``synchronous=FULL``, so a committed transaction
survives a power cut. A round is saved in a fixed order: the weights go to a
temporary file in ``weights/``, which is flushed to disk and renamed to its final
name; only then is the round's row committed. A crash (even ``kill -9``) at any
point therefore leaves either the previous state or the new one: a round is
part of the run exactly when its row is, and its row names a complete file
whose SHA-256 it records. Files of a crashed save are removed by the next save.

Example:
    >>> import numpy as np, tempfile, os
    >>> run_dir = os.path.join(tempfile.mkdtemp(), "run")
    >>> with RunStore.create(run_dir, config={"rounds": 3}) as store:
    ...     store.save_round(0, {"w": np.zeros(2)}, None)
    ...     store.last_round()
    0
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import numpy as np
import safetensors.numpy

from covey.core._files import TMP_SUFFIX, atomic_write, fsync_dir
from covey.core._history import History, RoundRecord, _jsonable
from covey.core._weights import Array, Weights, WeightsSpec

logger = logging.getLogger("covey")

Status = Literal["running", "finished", "failed"]
"""The state of a run: still going, done, or stopped by an error."""

SCHEMA_VERSION: Final = 1
"""The version of the SQLite schema this module reads and writes."""

DB_NAME: Final = "run.sqlite"
WEIGHTS_DIR: Final = "weights"
_FORMAT: Final = "covey-run"
_STATUSES: Final = ("running", "finished", "failed")
_ROUND_FILE = re.compile(r"round-(\d+)\.safetensors")
_CHUNK: Final = 1 << 20

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
)


def weights_file_name(round: int) -> str:
    """The file name of a round's weights inside ``RUN_DIR/weights``."""
    return f"round-{round:05d}.safetensors"


class RunStore:
    """The durable state of one federated run: settings, rounds, clients, events.

    Make one with :meth:`create` (a new run) or :meth:`open` (resume an existing
    one), and close it with :meth:`close` or a ``with`` block. Every method is
    safe to call from several threads at once.

    To resume, take the newest round that verifies::

        with RunStore.open(run_dir) as store:
            if store.last_round() is None:
                ...  # crashed before round 0: start afresh
            round, weights, record, state = store.load_latest_valid()
            store.discard_after(round)  # drop newer rounds whose files were bad
            ...  # continue with round + 1
    """

    def __init__(self, run_dir: Path, connection: sqlite3.Connection, config_text: str) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._run_dir = run_dir
        self._weights_dir = run_dir / WEIGHTS_DIR
        self._conn: sqlite3.Connection | None = connection
        self._config_text = config_text
        self._lock = threading.Lock()  # guards the connection
        self._save_lock = threading.Lock()  # one save_round / discard_after at a time
        self._swept = False
        self._client_ids: dict[str, int] = {}

    # -- opening and closing -------------------------------------------------------

    @classmethod
    def create(cls, run_dir: str | os.PathLike[str], *, config: dict[str, Any]) -> RunStore:
        """Start a new run in ``run_dir`` (made if missing) with status ``"running"``.

        Args:
            run_dir: The run directory. It may exist, but must not hold a run.
            config: JSON-serializable settings of the run (strategy, rounds,
                seed, layout of the weights, ...); read back with :attr:`config`.

        Raises:
            FileExistsError: ``run_dir`` already holds a run (or is a file).
            TypeError: ``config`` is not a JSON-serializable dict.
        """
        from covey import __version__

        path = Path(run_dir)
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        try:
            config_text = json.dumps(config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"config must be JSON-serializable: {exc}") from exc
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"cannot create a run in {path}: it exists and is a file")
        db_path = path / DB_NAME
        if db_path.exists():
            raise FileExistsError(
                f"a covey run already exists in {path}; resume it with RunStore.open "
                "or choose another directory"
            )
        weights_dir = path / WEIGHTS_DIR
        if weights_dir.is_dir() and any(weights_dir.glob("*.safetensors")):
            raise FileExistsError(
                f"cannot create a run in {path}: {weights_dir} already holds weights files"
            )
        weights_dir.mkdir(parents=True, exist_ok=True)

        # Build the database under a temporary name and link it into place, so a
        # crash during create never leaves a half-made run.sqlite behind.
        fd, tmp_name = tempfile.mkstemp(dir=path, prefix=f".{DB_NAME}.", suffix=TMP_SUFFIX)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
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
                    (config_text, now, __version__, now),
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
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
        return cls.open(path)

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str]) -> RunStore:
        """Open the run in ``run_dir``, e.g. to resume it.

        Raises:
            FileNotFoundError: ``run_dir`` or its ``run.sqlite`` does not exist.
            ValueError: ``run_dir`` is not a covey run directory, or was written
                by a covey with an unknown schema version.
        """
        path = Path(run_dir)
        if not path.exists():
            raise FileNotFoundError(f"no covey run at {path}: the directory does not exist")
        if not path.is_dir():
            raise ValueError(f"{path} is not a covey run directory: it is a file")
        db_path = path / DB_NAME
        if not db_path.is_file():
            raise FileNotFoundError(f"no covey run in {path}: it has no {DB_NAME}")
        # mode=rw: never create a database here.
        uri = db_path.resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            config_text = _check_run_db(conn, db_path)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, config_text)

    def close(self) -> None:
        """Close the database. Closing twice is harmless."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<RunStore {str(self._run_dir)!r} ({state})>"

    # -- the run -------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self._run_dir

    @property
    def config(self) -> dict[str, Any]:
        """The settings given to :meth:`create` (a fresh copy on every access)."""
        value: dict[str, Any] = json.loads(self._config_text)
        return value

    @property
    def status(self) -> Status:
        """``"running"``, ``"finished"`` or ``"failed"``."""
        with self._reading() as conn:
            row = conn.execute("SELECT status FROM run WHERE id = 1").fetchone()
        status: Status = row[0]
        return status

    def set_status(self, status: Status) -> None:
        """Record the run as ``"running"``, ``"finished"`` or ``"failed"``."""
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}; got {status!r}")
        with self._transaction() as conn:
            conn.execute(
                "UPDATE run SET status = ?, updated_at = ? WHERE id = 1", (status, time.time())
            )

    def info(self) -> dict[str, Any]:
        """``created_at``, ``updated_at`` (Unix time), ``covey_version`` and ``status``."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT created_at, updated_at, covey_version, status FROM run WHERE id = 1"
            ).fetchone()
        return dict(zip(("created_at", "updated_at", "covey_version", "status"), row, strict=True))

    # -- rounds --------------------------------------------------------------------

    def save_round(
        self,
        round: int,
        weights: Weights,
        record: Mapping[str, Any] | RoundRecord | None,
        server_state: bytes | None = None,
        *,
        keep_last: int | None = None,
    ) -> None:
        """Save a completed round atomically: its global weights, record and server state.

        Either the whole round is saved or, if this raises or the process dies,
        none of it is.

        Args:
            round: The round number; 0 for the initial weights. Each saved round
                must be newer than every round saved before.
            weights: The global weights after the round.
            record: What happened in the round: a :class:`RoundRecord` or its
                dict (as in :meth:`History.to_dict`), or None.
            server_state: Opaque bytes to resume the server (e.g. the pickled
                aggregator state), or None.
            keep_last: If given, delete the weights files of all but the newest
                ``keep_last`` rounds (their rows, records and states remain).

        Raises:
            ValueError: ``round`` is not newer than the last saved round, the
                weights are invalid, or the record is not a round record.
        """
        if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round!r}")
        round = int(round)
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise ValueError(f"keep_last must be a positive integer or None, got {keep_last!r}")
        spec = WeightsSpec.of(weights)
        record_text = None if record is None else _record_json(round, record)
        if server_state is not None:
            if not isinstance(server_state, bytes | bytearray | memoryview):
                raise TypeError(
                    f"server_state must be bytes or None, got {type(server_state).__name__}"
                )
            server_state = bytes(server_state)

        with self._save_lock:
            last = self.last_round()
            if last is not None and round <= last:
                raise ValueError(
                    f"cannot save round {round}: round {last} is already saved and rounds "
                    "must be saved in increasing order (use discard_after to roll back)"
                )
            self._sweep()
            name = weights_file_name(round)
            final = self._weights_dir / name
            committed = False
            try:
                digest = self._write_weights(round, weights, spec, final)
                with self._transaction() as conn:
                    conn.execute(
                        "INSERT INTO rounds"
                        " (round, weights_file, sha256, record, server_state, completed_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (round, name, digest, record_text, server_state, time.time()),
                    )
                committed = True
            finally:
                if not committed:
                    final.unlink(missing_ok=True)
            if keep_last is not None:
                self._prune(keep_last)

    def last_round(self) -> int | None:
        """The newest saved round, or None if no round was saved."""
        with self._reading() as conn:
            row = conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return None if row[0] is None else int(row[0])

    def rounds(self) -> list[int]:
        """Every saved round, oldest first (including rounds whose weights were pruned)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT round FROM rounds ORDER BY round").fetchall()
        return [int(r[0]) for r in rows]

    def load_round(
        self, round: int
    ) -> tuple[dict[str, Array], dict[str, Any] | None, bytes | None]:
        """The weights, record and server state of a saved round.

        The weights file is checked against the SHA-256 recorded when it was saved.

        Returns:
            ``(weights, record, server_state)``; the arrays are writable and the
            names are in the order they were saved in.

        Raises:
            KeyError: ``round`` was never saved.
            ValueError: the round's weights file is missing, corrupt, or was pruned.
        """
        with self._reading() as conn:
            row = conn.execute(
                "SELECT weights_file, sha256, record, server_state FROM rounds WHERE round = ?",
                (int(round),),
            ).fetchone()
        if row is None:
            raise KeyError(f"round {round} was never saved in the run at {self._run_dir}")
        name, digest, record_text, state = row
        if name is None:
            raise ValueError(f"the weights of round {round} were pruned (keep_last)")
        weights = self._read_weights(round, self._weights_dir / name, digest)
        record: dict[str, Any] | None = None if record_text is None else json.loads(record_text)
        return weights, record, None if state is None else bytes(state)

    def load_latest_valid(
        self,
    ) -> tuple[int, dict[str, Array], dict[str, Any] | None, bytes | None]:
        """The newest round whose weights file verifies, to resume from.

        Rounds whose file is missing, corrupt or pruned are skipped with a
        logged warning. A resuming server should then call
        :meth:`discard_after` with the returned round before saving new rounds.

        Returns:
            ``(round, weights, record, server_state)``.

        Raises:
            ValueError: no saved round has a valid weights file (or none was saved).
        """
        rounds = self.rounds()
        if not rounds:
            raise ValueError(f"the run at {self._run_dir} has no saved round")
        for round in reversed(rounds):
            try:
                weights, record, state = self.load_round(round)
            except ValueError as exc:
                logger.warning("skipping round %d of %s: %s", round, self._run_dir, exc)
                continue
            return round, weights, record, state
        raise ValueError(f"no saved round of the run at {self._run_dir} has valid weights")

    def discard_after(self, round: int | None) -> list[int]:
        """Forget every round newer than ``round`` (all of them if None), files included.

        Use it to resume from an older round than :meth:`last_round`, e.g. the one
        :meth:`load_latest_valid` returned.

        Returns:
            The rounds discarded.
        """
        floor = -1 if round is None else int(round)
        with self._save_lock:
            with self._transaction() as conn:
                rows = conn.execute(
                    "SELECT round, weights_file FROM rounds WHERE round > ? ORDER BY round",
                    (floor,),
                ).fetchall()
                conn.execute("DELETE FROM rounds WHERE round > ?", (floor,))
            for _, name in rows:
                if name is not None:
                    (self._weights_dir / name).unlink(missing_ok=True)
        return [int(r) for r, _ in rows]

    def history(self) -> History:
        """The run's :class:`History`, rebuilt from the saved round records."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT record FROM rounds WHERE record IS NOT NULL ORDER BY round"
            ).fetchall()
        return History.from_dict({"rounds": [json.loads(text) for (text,) in rows]})

    # -- clients and fleet events --------------------------------------------------

    def client_id(self, name: str) -> int:
        """The stable integer id of client ``name``: 0, 1, 2, ... in order of first sight.

        The id is stored, so it stays the same across server restarts.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"client name must be a non-empty string, got {name!r}")
        known = self._client_ids.get(name)
        if known is not None:
            return known
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM clients WHERE name = ?", (name,)).fetchone()
            if row is None:
                row = conn.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM clients").fetchone()
                conn.execute(
                    "INSERT INTO clients (name, id, first_seen) VALUES (?, ?, ?)",
                    (name, row[0], time.time()),
                )
        cid = int(row[0])
        self._client_ids[name] = cid
        return cid

    def clients(self) -> dict[str, int]:
        """Every known client name and its id, in id order."""
        with self._reading() as conn:
            rows = conn.execute("SELECT name, id FROM clients ORDER BY id").fetchall()
        return {str(name): int(cid) for name, cid in rows}

    def log_event(self, client: str, event: str, detail: str = "") -> None:
        """Record a fleet event, e.g. ``"join"``, ``"leave"``, ``"timeout"``, ``"refused"``.

        Args:
            client: The client's name.
            event: What happened.
            detail: Free text, e.g. the peer address or the error.
        """
        if not isinstance(event, str) or not event:
            raise ValueError(f"event must be a non-empty string, got {event!r}")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO events (time, client, event, detail) VALUES (?, ?, ?, ?)",
                (time.time(), str(client), event, str(detail)),
            )

    def events(self, client: str | None = None) -> list[tuple[float, str, str, str]]:
        """Logged events as ``(unix_time, client, event, detail)``, oldest first.

        Args:
            client: Only this client's events; all events if None.
        """
        with self._reading() as conn:
            if client is None:
                rows = conn.execute(
                    "SELECT time, client, event, detail FROM events ORDER BY seq"
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT time, client, event, detail FROM events WHERE client = ? ORDER BY seq",
                    (client,),
                ).fetchall()
        return [(float(t), str(c), str(e), str(d)) for t, c, e, d in rows]

    # -- internals -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"the RunStore of {self._run_dir} is closed")
        return self._conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _write_weights(self, round: int, weights: Weights, spec: WeightsSpec, final: Path) -> str:
        """Write ``final`` via a synced temporary file; return the file's SHA-256."""
        # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
        arrays = {name: np.require(weights[name], requirements="C") for name in spec.names}
        metadata = {"covey_round": str(round), "covey_names": json.dumps(list(spec.names))}
        sha = hashlib.sha256()

        def write(tmp: Path) -> None:
            safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
            with open(tmp, "rb") as f:
                while chunk := f.read(_CHUNK):
                    sha.update(chunk)

        atomic_write(final, write)
        return sha.hexdigest()

    def _read_weights(self, round: int, path: Path, digest: str) -> dict[str, Array]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"weights file {path} of round {round} is missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ValueError(
                f"weights file {path} of round {round} is corrupt: its SHA-256 is "
                f"{actual}, expected {digest}"
            )
        try:
            metadata = _safetensors_metadata(data)
            arrays = safetensors.numpy.load(data)
            names: list[str] = json.loads(metadata["covey_names"])
            stored_round = int(metadata["covey_round"])
        except Exception as exc:
            raise ValueError(f"weights file {path} of round {round} is unreadable: {exc}") from exc
        if stored_round != round or sorted(names) != sorted(arrays):
            raise ValueError(f"weights file {path} does not hold the weights of round {round}")
        return {name: arrays[name] for name in names}

    def _prune(self, keep_last: int) -> None:
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT round, weights_file FROM rounds WHERE weights_file IS NOT NULL"
                " ORDER BY round DESC LIMIT -1 OFFSET ?",
                (keep_last,),
            ).fetchall()
            conn.executemany(
                "UPDATE rounds SET weights_file = NULL, sha256 = NULL WHERE round = ?",
                [(r,) for r, _ in rows],
            )
        # Rows first, files second: a crash in between only leaves unreferenced files.
        for _, name in rows:
            (self._weights_dir / name).unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Once per store, before its first save: delete what crashed saves left behind.

        That is temporary files, and weights files no round row names (renamed
        into place, but the process died before the row was committed; or
        pruned or discarded, but the process died before the file was deleted).
        Only a writer sweeps, so opening a live run just to read it is safe.
        """
        if self._swept:
            return
        self._weights_dir.mkdir(exist_ok=True)
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT weights_file FROM rounds WHERE weights_file IS NOT NULL"
            ).fetchall()
        referenced = {name for (name,) in rows}
        for path in self._weights_dir.iterdir():
            stale_tmp = path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
            orphan = _ROUND_FILE.fullmatch(path.name) and path.name not in referenced
            if stale_tmp or orphan:
                path.unlink(missing_ok=True)
        self._swept = True


def _record_json(round: int, record: Mapping[str, Any] | RoundRecord) -> str:
    """The JSON text of a round record, checked to rebuild into a :class:`RoundRecord`."""
    if isinstance(record, RoundRecord):
        raw: dict[str, Any] = asdict(record)
    elif isinstance(record, Mapping):
        raw = dict(record)
    else:
        raise TypeError(
            f"record must be a RoundRecord, a dict or None, got {type(record).__name__}"
        )
    raw.setdefault("round", round)
    if raw["round"] != round:
        raise ValueError(f"record of round {raw['round']} saved as round {round}")
    data = _jsonable(raw)
    try:
        History.from_dict({"rounds": [data]})
    except (TypeError, KeyError) as exc:
        raise ValueError(f"record of round {round} is not a RoundRecord dict: {exc}") from exc
    try:
        return json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record of round {round} is not JSON-serializable: {exc}") from exc


def _check_run_db(conn: sqlite3.Connection, db_path: Path) -> str:
    """Check that ``conn`` is a covey run database this version can read; return its config."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        row = conn.execute("SELECT config FROM run WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{db_path} is not a covey run database: {exc}") from exc
    if meta.get("format") != _FORMAT or row is None:
        raise ValueError(f"{db_path} is not a covey run database")
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise ValueError(
            f"{db_path} has schema version {version}, but this covey reads only version "
            f"{SCHEMA_VERSION}; use the covey version that wrote the run"
        )
    config_text: str = row[0]
    return config_text


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header
    length, then the JSON header."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata: dict[str, str] = header.get("__metadata__") or {}
    return metadata


def _fsync_file(path: Path) -> None:
    with open(path, "r+b") as f:
        os.fsync(f.fileno())
