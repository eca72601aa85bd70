"""Room on a run folder's disk for the next round's file: after a save found none, and at a resume.

A round's weights file is written whole before the oldest kept one is deleted
(``keep_last``), so that a crash at any moment leaves a round to resume from:
the disk needs room for one round's file more than the run keeps. A save that
found no room says so, with the sizes; a resume that could not write its first
round's file is refused before any client trains it.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from covey.server._roundfiles import WEIGHTS_DIR, round_of_file, weights_file_name
from covey.server._runlock import RunRefusedError

if TYPE_CHECKING:
    from covey.server._store import RunStore

__all__ = ["check_room", "no_room", "room_note", "with_room_note"]

_NO_ROOM = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_NO_ROOM_SAID = ("No space left on device", "os error 28", "disk is full", "Disk quota exceeded")
_SLACK = 64
"""Bytes a new round's file may be smaller than the last one's (its header's padding)."""


def no_room(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) had no room left."""
    return getattr(exc, "errno", None) in _NO_ROOM or any(s in str(exc) for s in _NO_ROOM_SAID)


def _mb(size: float) -> str:
    """``size`` bytes as people read them: ``9.6 MB``, ``12.5 kB``, ``200 bytes``."""
    if size >= 1e6:
        return f"{size / 1e6:,.1f} MB"
    return f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size:.0f} bytes"


def _files(weights_dir: Path) -> list[int]:
    """The sizes of the round files in ``weights_dir``, newest last (none if unreadable)."""
    try:
        found = {round_of_file(p.name): p for p in weights_dir.iterdir()}
        return [found[r].stat().st_size for r in sorted(r for r in found if r is not None)]
    except OSError:
        return []


def room_note(weights_dir: Path, keep_last: int | None, step: str = "round") -> str:
    """What to do about a save of a run whose disk had no room (appended to its error).

    Args:
        weights_dir: The run's ``weights/`` folder.
        keep_last: The newest rounds whose files the run keeps, or None (every round's).
        step: What a round is called: ``"round"``, or an asynchronous run's ``"update"``.
    """
    sizes = _files(weights_dir)
    if not sizes:
        return f"; free room on that disk, then resume the run (it goes on from its last {step})"
    size = _mb(sizes[-1])
    if keep_last is None:
        return (
            f"; every {step} adds a file of {size} (keep_last keeps the newest only): free "
            f"room on that disk, then resume the run (it goes on from its last saved {step})"
        )
    kept = f"{step}'s file" if keep_last == 1 else f"{keep_last} {step}s' files"
    try:  # the failed file is gone: what is free now is what the save found
        short = sizes[-1] - shutil.disk_usage(weights_dir).free
    except OSError:
        short = sizes[-1]
    free = f"free at least {_mb(short)} more" if short > 0 else "free room"
    return (
        f"; the run keeps the newest {kept} (keep_last={keep_last}) and "
        f"writes each new one, {size}, before it deletes the oldest, so that a crash always "
        f"leaves one to resume from: the disk needs room for {keep_last + 1} such files at "
        f"once; {free} there, then resume the run"
    )


def with_room_note(
    error: OSError, exc: BaseException, weights_dir: Path, keep_last: int | None, step: str
) -> OSError:
    """``error``, a failed save's, ending with :func:`room_note` if ``exc`` found no room."""
    if no_room(exc):
        error.args = (f"{error}{room_note(weights_dir, keep_last, step)}",)
    return error


def check_room(store: RunStore, last: int) -> None:
    """Refuse to resume ``store``'s run from ``last`` if its disk cannot hold one more file.

    The first round the resumed run saves writes a file the size of round
    ``last``'s beside it; the room counted is the disk's free room and what the
    first save sweeps (files of a crashed save). Only a shortfall that is sure to
    fail the save is refused; any other is said by the save itself.

    Raises:
        RunRefusedError: naming the run folder, the room free and the room needed.
    """
    weights_dir, step = store.run_dir / WEIGHTS_DIR, store.step
    named = set(store.kept_rounds())
    try:
        size = (weights_dir / weights_file_name(last)).stat().st_size
        free = shutil.disk_usage(weights_dir).free
        swept = sum(  # what the first save sweeps: see RunStore._sweep
            p.stat().st_size
            for p in weights_dir.iterdir()
            if p.is_file()
            and (p.name.startswith(".") or round_of_file(p.name) not in (None, *named))
        )
    except OSError:
        return  # the save says what is wrong
    if free + swept + _SLACK >= size:
        return
    refused = RunRefusedError(
        f"cannot resume the run in {store.run_dir}: its disk has {_mb(free + swept)} free, "
        f"less than the {_mb(size)} of one {step}'s file, which the resumed run writes "
        f"beside the {step}s' files it keeps (it deletes the oldest only once the new one "
        f"is written, so that a crash always leaves one to resume from); free at least "
        f"{_mb(size - free - swept)} there (or copy the run folder to a disk with room), then "
        "resume it"
    )
    refused.errno = errno.ENOSPC
    raise refused
