"""What is wrong with a ``run.sqlite`` that SQLite cannot read as a covey run's."""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from pathlib import Path

__all__ = ["DamagedStoreError", "damaged_store", "empty_store_reason", "not_a_run"]


class DamagedStoreError(ValueError):
    """SQLite found a run's ``run.sqlite`` damaged (a corrupt page) as it read or wrote it.

    Not the damage of one round: a resume never skips a round for it (it would
    discard the rounds after), but stops, naming the file.
    """


def damaged_store(db_path: Path, exc: sqlite3.DatabaseError) -> DamagedStoreError:
    """The error of a ``run.sqlite`` SQLite reads as damaged (``exc``), naming the file."""
    return DamagedStoreError(
        f"{db_path} is damaged ({exc}): its run cannot be read or resumed; restore it from "
        f"a copy (SQLite's `sqlite3 {db_path.name} .recover` may save what it still holds)"
    )


def not_a_run(db_path: Path, exc: sqlite3.Error) -> str:
    """Why ``db_path`` is no run: an empty file (a run cut off as it began, say) is said so."""
    return empty_store_reason(db_path) or f"{db_path} is not a covey run database: {exc}"


def empty_store_reason(db_path: Path) -> str | None:
    """Why ``db_path`` is no run if it is an empty file (0 bytes), else None.

    SQLite reads an empty file as a database without tables, so its error (no
    such table) would not say what is wrong; the dashboard and ``covey runs``
    say this instead, as resuming the run does.
    """
    with suppress(OSError):
        if db_path.stat().st_size == 0:
            return (
                f"{db_path} is empty (0 bytes), not a covey run database: remove it to "
                "start a new run in its folder, or restore it from a copy"
            )
    return None
