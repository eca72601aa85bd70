"""Hold a run for one process: its ``run.lock``, refused clearly where it cannot be written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from covey.core._files import hold_lock
from covey.server._readcopy import LOCK_NAME

__all__ = ["RunRefusedError", "hold_run", "make_run_folder"]

_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""What opening the lock file to write fails with where this user cannot write there."""

_DATABASE_FILES = ("run.sqlite", "run.sqlite-wal", "run.sqlite-shm")
"""The run's database and the files SQLite keeps beside it, which a run writes."""


class RunRefusedError(OSError):
    """A run folder refused to this process: another one holds it, or it cannot be written.

    Also a new run's folder that cannot be made (a read-only or full disk).

    Refused before a server listens, as a setting is (``covey server`` exits 2):
    restarting the same command does not mend it, stopping the other server or
    giving write permission (or another folder) does.
    """


def hold_run(path: Path) -> int | None:
    """Hold ``path/run.lock`` for this process (released when the returned fd closes).

    The lock is an advisory ``flock``: the kernel drops it when its holder
    exits, even by ``kill -9``, so a crashed server never leaves a stale lock.

    Returns:
        The lock file's descriptor, or None where there is no ``flock`` (Windows).

    Raises:
        RunRefusedError: Another process holds the run (its pid is named), the
            run's folder, lock file or database files cannot be written (a read-only
            folder, share or ``run.sqlite``), or ``run.lock`` is not a regular file.
        OSError: The pid cannot be written in ``run.lock`` (a full disk).
    """
    lock = path / LOCK_NAME
    try:
        fd = hold_lock(
            lock,
            lambda pid: (
                f"the run in {path} is in use by another covey server (pid {pid}); "
                "stop that server first, or give another run folder"
            ),
            patient=True,  # an is_held probe holds it for an instant only
        )
    except OSError as exc:
        if exc.errno is None:  # hold_lock's own refusals: held, or no regular file
            raise RunRefusedError(str(exc)) from None
        if exc.errno not in _NOT_WRITABLE:
            raise
        raise RunRefusedError(
            f"cannot open the run in {path} to serve or resume it: the run folder cannot be "
            f"written ({exc.strerror}: {lock}). A server holds {LOCK_NAME} in the folder, so "
            "that no other process serves the same run meanwhile, and writes every round "
            "there; give this user write permission on the folder and its files, or copy "
            "the folder somewhere writable (opening the run to read it, not exclusively, "
            "writes nothing)"
        ) from None
    try:
        _refuse_read_only_database(path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return fd


def _refuse_read_only_database(path: Path) -> None:
    """Refuse a run whose database files cannot be written, though its folder can.

    SQLite opens such a file read-only without a word, and fails at the first write
    (``attempt to write a readonly database``, a round or more into the run). The
    files are not opened: closing a descriptor of a database would let go of the
    locks any connection of this process holds on it.

    Raises:
        RunRefusedError: naming the file, the system's reason and what to do.
    """
    effective = os.access in os.supports_effective_ids
    for name in _DATABASE_FILES:
        file = path / name
        if not file.is_file() or os.access(file, os.W_OK, effective_ids=effective):
            continue  # none there (SQLite makes it), or writable
        try:
            mounted_read_only = bool(os.statvfs(file).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):  # no statvfs (Windows)
            mounted_read_only = False
        code = errno.EROFS if mounted_read_only else errno.EACCES
        fix = (
            "it is on a read-only mount: copy the run folder somewhere writable"
            if mounted_read_only
            else f"give this user write permission on it (as its owner, `chmod u+w "
            f"{file}`), or copy the run folder somewhere writable"
        )
        raise RunRefusedError(
            f"cannot open the run in {path} to serve or resume it: its database file "
            f"{file} cannot be written ({os.strerror(code)}), though the folder can; a run "
            f"writes every round there, so {fix} (opening the run to read it, not "
            "exclusively, writes nothing)"
        )


def make_run_folder(path: Path) -> None:
    """Make ``path`` (and its parents) for a new run, or refuse naming it and the cause.

    Raises:
        RunRefusedError: The folder cannot be made (a read-only or full disk, a parent that
            is a file, no permission), naming the folder, the system's reason and the
            path it gave; ``mkdir``'s own error named the path alone.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise  # a file of that name: refused as holding a run, by the caller
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        if exc.errno in _NOT_WRITABLE:
            fix = "give a run folder where this user can write, or give it write permission there"
        elif exc.errno == errno.ENOTDIR:
            fix = "a parent of it is a file, not a folder: give another run folder"
        elif exc.errno == errno.ENOSPC:
            fix = "free room on its disk, or give a run folder on another one"
        else:
            fix = "give another run folder"
        refused = RunRefusedError(
            f"cannot make the run folder {path}: {exc.strerror}{where}; {fix}"
        )
        refused.errno = exc.errno  # as mkdir's: a caller may tell a full disk by it
        raise refused from None
