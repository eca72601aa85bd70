"""Reading a run's ``run.sqlite`` for the dashboard, read-only, its rounds checked.

The store is opened read-only (a ``mode=ro`` URI), so watching a live server
never takes a write lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from covey.core._runstep import step_of_settings
from covey.dashboard._runjson import (
    RunReadError,
    check_rounds,
    lacks_rounds,
    tag_constant,
    within,
)
from covey.server._rundb import empty_store_reason, open_read_only, schema_refusal

if TYPE_CHECKING:
    from covey.dashboard._runs import Run

STORE: Final = "run.sqlite"
MAX_EVENTS: Final = 100_000
"""The newest fleet events read from a deployed run's store (older ones are not shown)."""


@contextlib.contextmanager
def _read_only(db: Path) -> Iterator[sqlite3.Connection]:
    try:
        conn = open_read_only(db)
    except sqlite3.Error as exc:
        raise RunReadError(f"cannot open {db} read-only: {exc}") from exc
    try:
        yield conn
    except sqlite3.Error as exc:
        empty = empty_store_reason(db)  # SQLite reads it as a database without tables
        said = empty or f"{db} is not a readable covey run database: {exc}"
        raise RunReadError(said) from exc
    finally:
        conn.close()


def _rounds_lacked(
    conn: sqlite3.Connection, db: Path, have: Sequence[int]
) -> tuple[list[dict[str, Any]], list[int]]:
    """The round records a store holds that a history of the rounds ``have`` lacks, checked.

    Those after its last round: a long run of short rounds writes
    ``history.json`` less often than every round
    (:class:`~covey.core._historyfile.HistoryFile`), and killed, its store has the
    rounds the file missed. Those before it, whose numbers are returned too: a
    file that lost whole rounds (written over, or edited) yet is still JSON.
    Finding them reads the store's round numbers, not its records.
    """
    after = have[-1] if have else -1
    lost: list[int] = []
    if after > 0:
        present = set(have)
        held = conn.execute(
            "SELECT round FROM rounds WHERE record IS NOT NULL AND round < ?", (after,)
        )
        lost = [rnd for (rnd,) in held if rnd not in present]
    records = []
    if lost:
        records = conn.execute(
            "SELECT record FROM rounds WHERE round IN (SELECT value FROM json_each(?))"
            " ORDER BY round",
            (json.dumps(lost),),
        ).fetchall()
    records += conn.execute(
        "SELECT record FROM rounds WHERE record IS NOT NULL AND round > ? ORDER BY round",
        (after,),
    ).fetchall()
    if not records:
        return [], lost
    try:
        rows = [json.loads(text, parse_constant=tag_constant) for (text,) in records]
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise RunReadError(f"{db} holds a malformed run: {exc}") from exc
    except RecursionError:
        raise RunReadError(f"{db} holds a malformed run: JSON nested too deeply") from None
    return check_rounds(rows, str(db)), lost


def lacked_rounds(path: Path, have: Sequence[int]) -> tuple[list[dict[str, Any]], list[int]]:
    """The round records the store of the run in ``path`` holds that its history lacks.

    Args:
        path: The run folder.
        have: The rounds its ``history.json`` holds, in order.

    Returns:
        Those records, checked, in order (none without a store), and the numbers
        of those before the last of ``have`` (see :func:`_rounds_lacked`).

    Raises:
        RunReadError: if the store is there but cannot be read as a covey run's.
    """
    db = path / STORE
    if not db.is_file():
        return [], []
    with _read_only(db) as conn:
        newer = schema_refusal(conn, db)
        if newer is not None:
            raise RunReadError(newer)
        return _rounds_lacked(conn, db, have)


def foreign_history(path: Path, rounds: Mapping[int, Mapping[str, Any]]) -> str | None:
    """Why the ``history.json`` of the run in ``path`` is not its store's run, or None.

    A history copied in from another run (a partial copy, files mixed up by
    hand) would be shown as this run's, though a resume goes on from the
    store. Its earliest round after round 0 that the store holds, and not as
    its newest (whose record a last evaluation may still change), must have
    the clients and durations the store records for it.

    Args:
        path: The run folder.
        rounds: The records ``history.json`` holds, by round.

    Raises:
        RunReadError: if the store is there but cannot be read.
    """
    db = path / STORE
    first = min((r for r in rounds if r > 0), default=None)
    if first is None or not db.is_file():
        return None
    with _read_only(db) as conn:
        row = conn.execute(
            "SELECT record FROM rounds WHERE round = ? AND record IS NOT NULL"
            " AND round < (SELECT MAX(round) FROM rounds)",
            (first,),
        ).fetchone()
    try:
        stored = None if row is None else json.loads(row[0], parse_constant=tag_constant)
    except (TypeError, ValueError, RecursionError):
        return None  # the store's own damage: its readers name it
    if not isinstance(stored, dict):
        return None
    for key in ("fit_participants", "durations"):
        # a record saved without the key (a custom loop's) is read back with it empty
        if key in stored and (stored[key] or None) != (rounds[first].get(key) or None):
            return (
                f"{path / 'history.json'} is not the history of the run {db} holds: its round "
                f"{first} has other {key} (a file copied from another run, or edited)"
            )
    return None


def read_store(run: Run, db: Path) -> None:
    """Fill ``run`` from its store, with the rounds after those of its ``history.json``."""
    with _read_only(db) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        newer = schema_refusal(conn, db, meta)
        if newer is not None:  # its tables may be laid out otherwise: read none of them
            raise RunReadError(newer)
        row = conn.execute(
            "SELECT config, created_at, updated_at, status FROM run WHERE id = 1"
        ).fetchone()
        if meta.get("format") != "covey-run" or row is None:
            raise RunReadError(f"{db} is not a covey run database")
        lacked, lost = _rounds_lacked(conn, db, [r["round"] for r in run.rounds])
        clients = conn.execute("SELECT name, id FROM clients ORDER BY id").fetchall()
        events = conn.execute(
            "SELECT time, client, event, detail FROM events ORDER BY seq DESC LIMIT ?",
            (MAX_EVENTS,),
        ).fetchall()
    config_text, created, updated, status = row
    try:
        run.rounds = run.rounds + lacked
        if lost:  # a history.json that lost rounds: they go where they belong
            run.rounds.sort(key=lambda r: r["round"])
        config = json.loads(config_text, parse_constant=tag_constant)
        run.clients = {int(cid): str(name) for name, cid in clients}
        run.events = [(float(t), str(c), str(e), str(d)) for t, c, e, d in reversed(events)]
        run.meta.update(config if isinstance(config, dict) else {})
        run.meta.update(status=str(status), created_at=float(created), updated_at=float(updated))
        if lost and run.warning is None:
            history = db.with_name("history.json")
            run.warning = lacks_rounds(history, db, lost, step_of_settings(run.meta))
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise RunReadError(f"{db} holds a malformed run: {exc}") from exc
    except RecursionError:
        raise RunReadError(f"{db} holds a malformed run: JSON nested too deeply") from None


def read_store_within(run: Run, db: Path, top: Path | None, damaged: str | None) -> None:
    """Fill ``run`` from its store ``db``, refused if it (or its WAL) lies outside ``top``.

    Read for a ``damaged`` history, a store that cannot be read either names both.
    """
    try:
        for beside in ("-wal", "-shm"):  # SQLite reads them beside the database
            if db.with_name(STORE + beside).exists():
                within(db.with_name(STORE + beside), top)
        read_store(run, within(db, top))
    except RunReadError as exc:
        if damaged is None:
            raise
        raise RunReadError(f"{damaged}, and {exc}") from exc
