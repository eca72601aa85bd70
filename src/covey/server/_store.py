"""The resumable state of a federation server, kept in a run directory.

A run directory holds::

    RUN_DIR/run.sqlite                          settings, rounds, clients, fleet events
    RUN_DIR/weights/round-00000.safetensors     global weights after each completed round

SQLite runs in WAL mode with ``synchronous=FULL``, so a committed round
survives a power cut; fleet events and new client ids are committed without a
sync of their own (a crash of the process keeps them, a power cut may lose the
last ones) and reach the disk with the next round. A round is saved in a fixed
order: the weights go to a temporary file in ``weights/``, which is flushed to
disk and renamed to its final name; only then is the round's row committed. A
crash (even ``kill -9``) at any point therefore leaves either the previous state
or the new one: a round is part of the run exactly when its row is, and its row
names a complete file whose SHA-256 it records. Files of a crashed save are
removed by the next save.

Example:
    >>> import numpy as np, tempfile, os
    >>> run_dir = os.path.join(tempfile.mkdtemp(), "run")
    >>> with RunStore.create(run_dir, config={"rounds": 3}) as store:
    ...     store.save_round(0, {"w": np.zeros(2)}, None)
    ...     store.last_round()
    0
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from safetensors import SafetensorError

from covey.core._history import RoundRecord
from covey.core._version import covey_version
from covey.core._weights import Weights, WeightsSpec
from covey.server._kept import check_keep_last, prune
from covey.server._newrun import NewRunFolder
from covey.server._room import with_room_note
from covey.server._roundfiles import (
    WEIGHTS_DIR,
    record_json,
    remove,
    save_error,
    sweep,
    weights_file_name,
    write_weights,
)
from covey.server._rundb import DB_NAME, RunDB, hold_run
from covey.server._runlock import make_run_folder
from covey.server._runrecords import Status, rewrite_of, settle_saved
from covey.server._storedrounds import StoredRounds

__all__ = ["RunStore", "Status"]


class RunStore(StoredRounds):
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

    Args:
        run_dir: The run directory.
        db: The run's open database.
        config_text: The run's settings as stored, JSON.
        lock_fd: The descriptor of the run's ``run.lock`` this store holds until
            :meth:`close`, or None.
    """

    def __init__(
        self, run_dir: Path, db: RunDB, config_text: str, lock_fd: int | None = None
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._run_dir = run_dir
        self._lock_fd = lock_fd
        self._weights_dir = run_dir / WEIGHTS_DIR
        super().__init__(db, config_text)
        self._save_lock = threading.Lock()  # one save_round / discard_after at a time
        self._swept = False

    # -- opening and closing -------------------------------------------------------

    @classmethod
    def create(
        cls, run_dir: str | os.PathLike[str], *, config: dict[str, Any], exclusive: bool = False
    ) -> RunStore:
        """Start a new run in ``run_dir`` (made if missing) with status ``"running"``.

        Args:
            run_dir: The run directory. It may exist, but must not hold a run.
            config: JSON-serializable settings of the run (strategy, rounds,
                seed, layout of the weights, ...); read back with :attr:`config`.
            exclusive: Hold the run for this process until :meth:`close` (see :meth:`open`).

        Raises:
            FileExistsError: ``run_dir`` already holds a run (or is a file).
            TypeError: ``config`` is not a JSON-serializable dict.
            OSError: The run cannot be written there (a full disk, a path too deep
                for SQLite); what was made for it is removed, and nothing else.
        """
        path = Path(run_dir)
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        try:
            config_text = json.dumps(config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"config must be JSON-serializable: {exc}") from exc
        before, lock_fd, held = NewRunFolder(path), None, False  # refused if it holds a run
        weights_dir = path / WEIGHTS_DIR
        try:
            make_run_folder(path)
            # Held before anything is written: a folder another process writes a run
            # in (a simulation holds it too) is refused untouched.
            lock_fd, held = (hold_run(path) if exclusive else None), True
            weights_dir.mkdir(exist_ok=True)
            RunDB.create(path, config_text, covey_version())  # never left half made
            db, config_text = RunDB.open(path)
        except BaseException:
            if not (path / DB_NAME).exists():  # none made: take back the folder's set-up
                before.take_back(lock=held and exclusive, weights=held)
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(path, db, config_text, lock_fd)

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str], *, exclusive: bool = False) -> RunStore:
        """Open the run in ``run_dir``, e.g. to resume it.

        A run this user cannot write to (a read-only folder, a finished run
        copied from another machine with its files read-only) is opened to read
        it, writing nothing to it or beside it: every method that only reads
        works, and those that write (:meth:`save_round`, :meth:`set_status`, ...)
        raise an ``OSError`` naming the folder.

        Args:
            run_dir: The run directory.
            exclusive: Hold the run's ``run.lock`` until :meth:`close`, so that no
                other process opens it exclusively meanwhile (a server does).

        Raises:
            FileNotFoundError: ``run_dir`` or its ``run.sqlite`` does not exist.
            ValueError: ``run_dir`` is not a covey run directory, or was written
                by a covey with an unknown schema version, or (``exclusive``) a
                newer covey release served it last.
            OSError: ``exclusive`` and another process holds the run, or the
                run cannot be written (a read-only folder); or the run cannot be read.
        """
        path = Path(run_dir)
        if not path.exists():
            raise FileNotFoundError(f"no covey run at {path}: the directory does not exist")
        if not path.is_dir():
            raise ValueError(f"{path} is not a covey run directory: it is a file")
        db_path = path / DB_NAME
        if not db_path.is_file():
            simulated = ""
            if (path / "run.json").is_file():
                simulated = (
                    "; it is a simulated run that kept no checkpoint (one compressed with "
                    "top-k, or an asynchronous strategy's; a simulated `covey run` keeps its "
                    "final model in model.safetensors)"
                )
            raise FileNotFoundError(f"no covey run in {path}: it has no {DB_NAME}{simulated}")
        lock_fd = hold_run(path) if exclusive else None
        try:
            db, config_text = RunDB.open(path, serve=exclusive)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(path, db, config_text, lock_fd)

    def close(self) -> None:
        """Close the database (and let go of the run). Closing twice is harmless."""
        self._db.close()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._db.closed

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

    # -- rounds --------------------------------------------------------------------

    def save_round(
        self,
        round: int,
        weights: Weights,
        record: Mapping[str, Any] | RoundRecord | None,
        server_state: bytes | None = None,
        *,
        keep_last: int | None = None,
        pending_callbacks: bool = False,
        returned: Mapping[str, Any] | None = None,
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
            server_state: Opaque bytes to resume the server (e.g. the aggregator
                state, as :func:`~covey.server._state.dump_state` stores it), or None.
            keep_last: If given, delete the weights files of all but the newest
                ``keep_last`` rounds, and their aggregation states (their rows and
                records remain).
            pending_callbacks: Mark the round's ``on_round`` callbacks as yet to return
                (:attr:`pending_callbacks`), in the same transaction.
            returned: An earlier round's record dict as its callbacks left it, written
                over that round's saved record in the same transaction.

        Raises:
            ValueError: ``round`` is not newer than the last saved round, the
                weights are invalid, or the record is not a round record.
            OSError: the round could not be written (a full disk, a read-only
                folder), naming the round and the run folder; the rounds saved
                before are untouched.
        """
        if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round!r}")
        round = int(round)
        check_keep_last(keep_last)
        spec = WeightsSpec.of(weights)
        record_text = None if record is None else record_json(round, record)
        again = rewrite_of(returned)
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
            self._db.for_writing()  # a run opened to read: refused naming the folder
            self._sweep()
            name = weights_file_name(round)
            final = self._weights_dir / name
            committed = False
            try:
                digest = write_weights(final, round, weights, spec)
                with self._db.transaction() as conn:
                    conn.execute(
                        "INSERT INTO rounds"
                        " (round, weights_file, sha256, record, server_state, completed_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (round, name, digest, record_text, server_state, time.time()),
                    )
                    settle_saved(conn, round, pending_callbacks, again)
                committed = True
            except (OSError, SafetensorError) as exc:
                final.unlink(missing_ok=True)  # written whole, then SQLite found no room: gone
                error = save_error(round, final, exc, self.step)  # with what room it needs:
                raise with_room_note(error, exc, self._weights_dir, keep_last, self.step) from exc
            finally:
                if not committed:
                    final.unlink(missing_ok=True)
            if keep_last is not None:
                prune(self._db, self._weights_dir, keep_last)

    def discard_after(self, round: int | None) -> list[int]:
        """Forget every round newer than ``round`` (all of them if None), files included.

        Use it to resume from an older round than :meth:`last_round`, e.g. the one
        :meth:`load_latest_valid` returned. Safe to die at any point: the rounds'
        weights are unnamed first (no resume loads them, nor takes their files for
        rounds the database lost), then their files and rows go; a resume after a
        crash goes on from ``round`` again and discards them again.

        Args:
            round: The newest round to keep; None keeps none.

        Returns:
            The rounds discarded.
        """
        floor = -1 if round is None else int(round)
        with self._save_lock:
            with self._db.transaction() as conn:
                rows = conn.execute("SELECT round FROM rounds WHERE round > ?", (floor,)).fetchall()
                conn.execute(
                    "UPDATE rounds SET weights_file = NULL, sha256 = NULL WHERE round > ?",
                    (floor,),
                )
            for (r,) in rows:  # the round's own file, whatever its row named
                remove(self._weights_dir / weights_file_name(r))
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM rounds WHERE round > ?", (floor,))
        return sorted(int(r) for (r,) in rows)

    # -- internals -----------------------------------------------------------------

    def _sweep(self) -> None:
        """Once per store, before its first save: delete what crashed saves left behind.

        That is temporary files, and weights files no round row names (renamed
        into place, but the process died before the row was committed; or
        pruned or discarded, but the process died before the file was deleted).
        Only a writer sweeps, so opening a live run just to read it is safe.
        """
        if self._swept:
            return
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT weights_file FROM rounds WHERE weights_file IS NOT NULL"
            ).fetchall()
        sweep(self._weights_dir, {name for (name,) in rows})
        self._swept = True
