"""The records of a run beside its rounds: its status, its clients and their fleet events.

These live in the ``run``, ``clients`` and ``events`` tables of ``run.sqlite``;
:class:`~covey.server.RunStore` inherits them from :class:`RunRecords`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

from covey.core._runstep import step_of_settings
from covey.server._roundfiles import record_json
from covey.server._rundb import RunDB

__all__ = [
    "PENDING_KEY",
    "UNCOUNTED_KEY",
    "Rewrite",
    "RunRecords",
    "Status",
    "rewrite_of",
    "settle_saved",
]

Status = Literal["running", "finished", "failed"]
"""The state of a run: still going, done, or stopped by an error."""

_STATUSES: Final = ("running", "finished", "failed")

UNCOUNTED_KEY: Final = "uncounted_releases"
"""The meta key counting the servers that died (or failed after changing the model) since
the run's last saved round.

Each may have sent a round's model it had not saved (a release the saved privacy
ledger does not count); saving a round clears it, its ledger having charged them."""

PENDING_KEY: Final = "on_round_pending"
"""The meta key naming the saved round whose ``on_round`` callbacks may not all have returned.

Written in the transaction that saves the round (a run with callbacks), replaced by the
next round's save and removed as the run ends once they returned: a run stopped by a
callback that raised, or killed before they returned, leaves it, and its resume calls
them with that round's saved record before going on."""

Rewrite = tuple[int, str]
"""A saved round and its record's JSON text, as its ``on_round`` callbacks left it."""


def rewrite_of(record: Mapping[str, Any] | None) -> Rewrite | None:
    """The round and JSON text of ``record``, a saved round's after its callbacks; or None.

    Raises:
        ValueError: it is not a round record (see :func:`record_json`).
    """
    if record is None:
        return None
    rnd = record.get("round")
    if not isinstance(rnd, int):
        raise ValueError(f"a round record's round must be an integer, got {rnd!r}")
    return rnd, record_json(rnd, record)


def _rewrite(conn: sqlite3.Connection, returned: Rewrite | None) -> bool:
    """Write ``returned`` over its saved round's record; whether that round is saved."""
    if returned is None:
        return True
    rnd, text = returned
    return conn.execute("UPDATE rounds SET record = ? WHERE round = ?", (text, rnd)).rowcount > 0


def settle_saved(
    conn: sqlite3.Connection, round: int, pending_callbacks: bool, returned: Rewrite | None = None
) -> None:
    """In the transaction saving ``round``: clear the meta values a saved round settles.

    The uncounted releases (its record's ledger has charged what dead servers may
    have released) and the previous round's pending callbacks (they returned before
    this round ran); ``pending_callbacks`` marks this round's, yet to be called.
    ``returned``: an earlier round's record as its callbacks left it (what they
    wrote into it), written over the one saved before they ran.
    """
    conn.execute("DELETE FROM meta WHERE key = ?", (UNCOUNTED_KEY,))
    _rewrite(conn, returned)
    if pending_callbacks:
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (PENDING_KEY, str(round))
        )
    else:
        conn.execute("DELETE FROM meta WHERE key = ?", (PENDING_KEY,))


class RunRecords:
    """A run's status and info, its clients' stable ids, and the fleet event log.

    Every method is safe to call from several threads at once.

    Args:
        db: The run's open database.
        config_text: The run's settings as stored, JSON.
    """

    def __init__(self, db: RunDB, config_text: str) -> None:
        """Records kept in ``db``."""
        self._db = db
        self._config_text = config_text
        self._client_ids: dict[str, int] = {}

    # -- the run -------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The settings given to :meth:`create` (a fresh copy on every access)."""
        value: dict[str, Any] = json.loads(self._config_text)
        return value

    @property
    def step(self) -> str:
        """What the run's round numbers count in messages: ``"update"`` if it is asynchronous.

        An asynchronous strategy (FedBuff) records its ``buffer_size`` in the run's settings.
        """
        return step_of_settings(self.config)

    def set_rounds(self, rounds: int) -> None:
        """Record ``rounds`` as the run's round count: a resumed run may be asked for more.

        The ``rounds`` of :attr:`config` then says it, as the run's ``history.json`` does.
        """
        self.update_config({"rounds": rounds})

    def update_config(self, changes: dict[str, Any]) -> None:
        """Record ``changes`` in the run's settings (:attr:`config`), keeping the others.

        A resumed run may be given other values of some settings (a round count, a
        simulation's ``keep_last``); nothing is written if none differs.
        """
        config = self.config
        if all(key in config and config[key] == value for key, value in changes.items()):
            return
        config.update(changes)
        text = json.dumps(config, allow_nan=False)
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE run SET config = ?, updated_at = ? WHERE id = 1", (text, time.time())
            )
        self._config_text = text

    @property
    def status(self) -> Status:
        """``"running"``, ``"finished"`` or ``"failed"``."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT status FROM run WHERE id = 1").fetchone()
        status: Status = row[0]
        return status

    def set_status(self, status: Status) -> None:
        """Record the run as ``"running"``, ``"finished"`` or ``"failed"``."""
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}; got {status!r}")
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE run SET status = ?, updated_at = ? WHERE id = 1", (status, time.time())
            )

    @property
    def uncounted_releases(self) -> int:
        """Servers that died since the last saved round, as :meth:`take_over` recorded them."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (UNCOUNTED_KEY,)).fetchone()
        try:
            return max(int(row[0]), 0) if row is not None else 0
        except ValueError:
            raise ValueError(
                f"run.sqlite is damaged: its meta value {UNCOUNTED_KEY} is {row[0]!r}"
            ) from None

    def take_over(self, uncounted: int) -> None:
        """Mark a resumed run running again, keeping what its ledger has yet to charge.

        Until a round is saved, ``uncounted`` (the servers that died since the last
        saved round) stays recorded, so a resume that stops before saving a round
        (interrupted, refused, short of clients) leaves it to the next one; and a
        server killed now leaves the status ``"running"`` that marks it as died.
        """
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE run SET status = 'running', updated_at = ? WHERE id = 1", (time.time(),)
            )
            if uncounted > 0:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (UNCOUNTED_KEY, str(int(uncounted))),
                )
            else:
                conn.execute("DELETE FROM meta WHERE key = ?", (UNCOUNTED_KEY,))

    def owe_release(self) -> None:
        """Count one more round that may have left the server unsaved (see :meth:`take_over`).

        A server that stops with an error after a round changed the model and before
        that round was saved may have sent it (the next tasks, federated evaluation):
        a resume redoes it, a second release its saved ledger does not count.
        """
        with self._db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (UNCOUNTED_KEY,)).fetchone()
            owed = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (UNCOUNTED_KEY, str(owed + 1)),
            )

    @property
    def pending_callbacks(self) -> int | None:
        """The saved round whose ``on_round`` callbacks may not all have returned, or None.

        See :data:`PENDING_KEY`.
        """
        with self._db.reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (PENDING_KEY,)).fetchone()
        if row is None:
            return None
        if not str(row[0]).isdigit():
            raise ValueError(f"run.sqlite is damaged: its meta value {PENDING_KEY} is {row[0]!r}")
        return int(row[0])

    def callbacks_returned(self, round: int, record: Mapping[str, Any] | None = None) -> None:
        """Record that the ``on_round`` callbacks of ``round`` and every round before returned.

        Writes only when a round up to ``round`` is marked pending (:data:`PENDING_KEY`).
        ``record``: a saved round's record as its callbacks left it, written over the
        saved one in the same transaction; if that round is not saved, the mark stays
        (a resume calls the pending round's callbacks again, as they were).
        """
        returned = rewrite_of(record)
        with self._db.reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (PENDING_KEY,)).fetchone()
        if row is None or (str(row[0]).isdigit() and int(row[0]) > round):
            return
        with self._db.transaction() as conn:
            if _rewrite(conn, returned):
                conn.execute("DELETE FROM meta WHERE key = ?", (PENDING_KEY,))

    def info(self) -> dict[str, Any]:
        """``created_at``, ``updated_at`` (Unix time), ``covey_version`` and ``status``."""
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT created_at, updated_at, covey_version, status FROM run WHERE id = 1"
            ).fetchone()
        return dict(zip(("created_at", "updated_at", "covey_version", "status"), row, strict=True))

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
        with self._db.transaction(sync=False) as conn:  # synced with the next round
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
        with self._db.reading() as conn:
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
        with self._db.transaction(sync=False) as conn:  # synced with the next round
            conn.execute(
                "INSERT INTO events (time, client, event, detail) VALUES (?, ?, ?, ?)",
                (time.time(), str(client), event, str(detail)),
            )

    def events(self, client: str | None = None) -> list[tuple[float, str, str, str]]:
        """Logged events as ``(unix_time, client, event, detail)``, oldest first.

        Args:
            client: Only this client's events; all events if None.
        """
        with self._db.reading() as conn:
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
