"""Hold a run for one process: its ``run.lock``, refused clearly where it cannot be written."""

from __future__ import annotations

import errno
from pathlib import Path

from covey.core._files import hold_lock
from covey.server._readcopy import LOCK_NAME

__all__ = ["hold_run"]

_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""What opening the lock file to write fails with where this user cannot write there."""


def hold_run(path: Path) -> int | None:
    """Hold ``path/run.lock`` for this process (released when the returned fd closes).

    The lock is an advisory ``flock``: the kernel drops it when its holder
    exits, even by ``kill -9``, so a crashed server never leaves a stale lock.

    Returns:
        The lock file's descriptor, or None where there is no ``flock`` (Windows).

    Raises:
        OSError: Another process holds the run (its pid is named), the run's
            folder or lock file cannot be written (a read-only folder or share),
            or ``run.lock`` is not a regular file.
    """
    lock = path / LOCK_NAME
    try:
        return hold_lock(
            lock,
            lambda pid: (
                f"the run in {path} is in use by another covey server (pid {pid}); "
                "stop that server first, or give another run folder"
            ),
            patient=True,  # an is_held probe holds it for an instant only
        )
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        raise OSError(
            f"cannot open the run in {path} to serve or resume it: the run folder cannot be "
            f"written ({exc.strerror}: {lock}). A server holds {LOCK_NAME} in the folder, so "
            "that no other process serves the same run meanwhile, and writes every round "
            "there; give this user write permission on the folder and its files, or copy "
            "the folder somewhere writable (opening the run to read it, not exclusively, "
            "writes nothing)"
        ) from None
