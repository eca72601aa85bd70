"""The status of a run folder, as ``covey runs list`` and ``covey runs show`` print it, and why.

What is shown is derived from what the run's files record (a simulation's
``run.json``, a deployed run's ``run.sqlite``, its ``history.json``): nothing is
written, so runs of every covey version read alike.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covey.cli._rounds import last_finished, step_of
from covey.core._interrupt import shown_status
from covey.dashboard._runjson import RunReadError, read_run_json
from covey.server._readcopy import is_simulation
from covey.server._rundb import empty_store_reason, is_held, open_read_only, schema_refusal
from covey.server._served import how_to_continue, killed_server_reason
from covey.sim._rundir import how_to_resume, resumed_from, stopped_simulation_reason

if TYPE_CHECKING:  # imported where used: NumPy is slow to load for `covey --help`
    from covey.core._history import History

__all__ = [
    "continue_command",
    "damaged_run_json",
    "run_status",
    "unopenable_run_json",
    "unreadable_store",
    "why_stopped",
]


def why_stopped(folder: Path, status: str, history: History) -> str | None:
    """Why a run is ``failed``, ``interrupted``, ``stopped`` (gone) or ``unreadable``; or None."""
    step = step_of(history)  # "update" in an asynchronous run
    last = last_finished(history)
    if status == "unreadable":
        return f"unreadable: {damaged_run_json(folder) or unreadable_store(folder / 'run.sqlite')}"
    if status in ("failed", "interrupted"):
        reason = _stopped_reason(folder, history)
        if reason:  # "interrupted (SIGINT)" names itself
            said = reason if status == "interrupted" else f"failed: {reason}"
            return f"{said}{_resumable(folder, step, last)}"
    if status == "stopped" and is_simulation(folder):
        return f"stopped: {stopped_simulation_reason(folder, step, last)}"
    if status == "stopped" and (folder / "run.sqlite").is_file():
        return f"stopped: {killed_server_reason(folder)}"
    return None


def _stopped_reason(folder: Path, history: History) -> str | None:
    """Why a run stopped: a simulation's ``run.json`` says it, a served run's history.

    A server stopped before it wrote ``history.json`` logged it in its store only.
    """
    reason = _run_json(folder).get("stopped_reason") or history.stopped_reason
    if not reason and not is_simulation(folder):
        reason = _logged_stop(folder / "run.sqlite")
    return reason if isinstance(reason, str) and reason else None


def _logged_stop(db: Path) -> str | None:
    """The first line of why the server of the store ``db`` stopped, as it logged it; or None."""
    if not db.is_file():
        return None
    with contextlib.suppress(sqlite3.Error), contextlib.closing(open_read_only(db)) as conn:
        row = conn.execute(
            "SELECT detail FROM events WHERE client = 'server' AND event = 'stopped' "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        lines = str(row[0]).strip().splitlines() if row is not None else []
        return lines[0] if lines else None
    return None


def _resumable(folder: Path, step: str, last: int | None) -> str:
    """How to continue the failed or interrupted run in ``folder`` from its checkpoint, if any.

    ``last``: its last finished ``step`` (None: none), which the resume goes on after.
    """
    how = continue_command(folder)
    return "" if how is None else f"; continue it {resumed_from(step, last)} with {how}"


def continue_command(folder: Path) -> str | None:
    """The command that continues the run in ``folder`` from its checkpoint, quoted; or None.

    A simulation (its ``run.json``, or the kind its ``run.sqlite`` records) goes on
    with ``covey run --resume``, a served run with its project's ``covey run
    --federation`` or ``covey server --resume``; each with the tracker flags of its
    latest start. None: no checkpoint (``run.sqlite``).
    """
    if not (folder / "run.sqlite").is_file():
        return None
    return how_to_resume(folder) if is_simulation(folder) else how_to_continue(folder)


def unreadable_store(db: Path) -> str:
    """Why ``db`` cannot be read: empty, another schema (naming the versions), or SQLite's error."""
    empty = empty_store_reason(db)  # SQLite would say "no such table", which says nothing
    if empty is not None:
        return empty
    try:
        with contextlib.closing(open_read_only(db)) as conn:
            newer = schema_refusal(conn, db)
            if newer is not None:
                return newer
            conn.execute("SELECT status FROM run WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        return f"{db} cannot be read: {exc}"
    return f"{db} cannot be read"


def _simulation_status(folder: Path) -> str | None:
    """``failed``, ``running`` or ``stopped`` (killed), as a simulation's ``run.json`` says."""
    status = _run_json(folder).get("status")
    if status == "failed":
        return "failed"
    if status == "running":
        return "stopped" if is_held(folder) is False else "running"
    return None


def damaged_run_json(folder: Path) -> str | None:
    """Why a simulation's ``run.json`` cannot be read, if it is there and damaged; else None.

    The dashboard and ``covey runs report`` refuse such a run: listed, it is
    ``unreadable`` too, naming the file, whatever its history says.
    """
    try:
        read_run_json(folder)
    except RunReadError as exc:  # as the dashboard says it
        return str(exc)
    return None


def unopenable_run_json(folder: Path) -> str | None:
    """Why a simulation's ``run.json`` cannot even be opened to read, if it is there; else None.

    A named pipe, a folder, a device or a broken link is no file to read (a named
    pipe is not waited on), nor is a file its reader may not open: the run's
    rounds are not shown as if nothing were wrong. A file that opens but does
    not hold a JSON object is :func:`damaged_run_json`'s to name.
    """
    path = folder / "run.json"
    if not os.path.lexists(path):
        return None
    if not path.is_file():
        return damaged_run_json(folder) or f"{path} is not a regular file: remove it"
    try:
        with path.open("rb"):  # a regular file: opening it never waits
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _run_json(folder: Path) -> dict[str, Any]:
    """A simulation's ``run.json`` as an object; empty if there is none, or it is damaged.

    Anyone who can write the folder may have put anything there: a named pipe is
    not waited on, and JSON nested too deeply is damaged like any other.
    """
    try:
        return read_run_json(folder) or {}
    except RunReadError:  # damaged: the run is unreadable (see damaged_run_json)
        return {}


def run_status(folder: Path, history: History) -> str:
    """``running``/``finished``/``failed`` for a deployed run; for a simulated one, how far.

    A run whose store (or a simulation's ``run.json``) says running but that no
    process holds (it was killed) is ``stopped``; one whose ``run.sqlite`` cannot be read is
    ``unreadable`` (it cannot be resumed, whatever its history says). A run recorded as
    failed because Ctrl-C or SIGTERM stopped it is ``interrupted`` (:func:`shown_status`).
    """
    status = _recorded_status(folder, history)
    return shown_status(status, _stopped_reason(folder, history) if status == "failed" else None)


def _recorded_status(folder: Path, history: History) -> str:
    """:func:`run_status` as the run's files record it: an interrupted run is ``failed``."""
    if damaged_run_json(folder) is not None:
        return "unreadable"
    db = folder / "run.sqlite"
    if db.is_file():
        try:
            with contextlib.closing(open_read_only(db)) as conn:
                if schema_refusal(conn, db) is not None:
                    return "unreadable"
                row = conn.execute("SELECT status FROM run WHERE id = 1").fetchone()
        except sqlite3.Error:
            return "unreadable"
        if row is not None:
            running = str(row[0]) == "running"
            return "stopped" if running and is_held(folder) is False else str(row[0])
    status = _simulation_status(folder)
    if status == "failed":  # a failed run also records why it stopped: it failed
        return status
    if history.stopped_reason:
        return "stopped"
    if status is not None:
        return status
    planned = history.config.get("rounds")
    last = history.rounds[-1].round if history.rounds else -1
    return "finished" if isinstance(planned, int) and last >= planned else "partial"
