"""The one way covey writes a file: atomically, durably, with its mode set from creation.

And the way it reads a small file others may have put in a run folder
(:func:`read_regular`): a named pipe or a device there is refused, never waited on.

A reader (or a process that restarts after a crash) sees either the old file or
the complete new one, never a torn write: the data goes to a temporary file in
the same folder, is flushed to disk, and is renamed over the target; the folder
is then synced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

Writer = Callable[[Path], None]
"""Writes a file's whole content at the path it is given (e.g. ``safetensors`` ``save_file``)."""

TMP_SUFFIX = ".tmp"
"""Temporary files end with this; a sweep after a crash may delete any such leftovers."""


def a_folder(value: object, what: str = "run_dir") -> Path:
    """``value`` as a folder's :class:`~pathlib.Path`, if it is a path at all.

    Raises:
        TypeError: ``value`` is no ``str`` or ``os.PathLike`` (an int, say), named as ``what``.
        ValueError: ``value`` is empty text, which a ``Path`` reads as the current folder
            (a run's files would go beside whatever it holds).
    """
    if isinstance(value, bytes) or not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"{what} must be a folder's path (a str or a pathlib.Path), got {type(value).__name__}"
        )
    if os.fspath(value) == "":  # Path("") is Path("."): the current folder
        raise ValueError(f'{what} is empty (""); give a folder, or leave it out')
    return Path(value)


def atomic_write(path: str | Path, data: bytes | str | Writer, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: The file to write; its folder must exist.
        data: The bytes, the text (written as UTF-8), or a function that writes the
            content to the temporary path it is given.
        mode: The permission bits of the new file, set before any data is in it
            (``0o600`` for secrets; the umask does not apply).

    Raises:
        OSError: if the file cannot be written (a full disk, a read-only folder),
            naming ``path``; the old file, if any, is untouched and no temporary
            file is left behind.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
        >>> atomic_write(target, "hello")
        >>> target.read_text()
        'hello'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except OSError as exc:  # a read-only folder: the file is named, not its temporary
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "r+b") as handle:  # writable and readable: Windows fsync needs it
            if hasattr(os, "fchmod"):
                # The umask may have removed bits; set the exact mode while the file is empty.
                os.fchmod(handle.fileno(), mode)
            if callable(data):
                data(tmp)
                _settle(tmp, mode)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
                handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
            exc.filename = str(path)  # a failed write or fsync names no file on its own
        raise
    fsync_dir(path.parent)


def write_output(path: str | Path, data: bytes | str) -> None:
    """Write a file the user named: atomically (:func:`atomic_write`) unless it is a device.

    A device or a pipe (``/dev/null``, ``/dev/stdout``, a named pipe; links to
    one followed) is written into as it is: a rename over it would put a file
    in its place, and ``--port-file /dev/null`` run as root left ``/dev/null`` a
    regular file for every other program on the machine.

    Raises:
        OSError: naming ``path``, if it cannot be written; a pipe no process
            reads is refused at once, not waited on.
    """
    try:
        facts = os.stat(path)
    except FileNotFoundError:
        facts = None
    if facts is None or stat.S_ISREG(facts.st_mode):
        atomic_write(path, data)
        return
    if stat.S_ISDIR(facts.st_mode):
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # what a pipe without a reader says
            raise OSError(exc.errno, "a named pipe that no process reads", str(path)) from None
        raise
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def _settle(path: Path, mode: int) -> None:
    """Set the mode of and sync the file a writer left at ``path``.

    A writer may replace the file it is given rather than write into it:
    ``safetensors`` writes a temporary file of its own (mode 0600, never
    synced) and renames it over. Syncing the handle opened before would then
    sync a file no longer in the folder.
    """
    with open(path, "r+b") as written:  # writable: Windows fsync needs it
        if hasattr(os, "fchmod"):
            os.fchmod(written.fileno(), mode)
        os.fsync(written.fileno())


def fsync_dir(directory: str | Path) -> None:
    """Make renames in ``directory`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


MAX_SETTINGS_BYTES = 16 * 2**20
"""The most bytes of a run's settings file (``run.json``, ``project.json``) or privacy
ledger read: far above what covey writes, and a substituted huge file is refused unread."""


class TooLargeError(ValueError):
    """A file larger than its reader takes: refused before any of it is read.

    Attributes:
        size: The file's size in bytes.
        limit: The most bytes the reader takes.
    """

    def __init__(self, path: str | Path, size: int, limit: int) -> None:
        """``path`` is ``size`` bytes, more than ``limit``."""
        super().__init__(f"{path} is {size:,} bytes, more than the {limit:,} read")
        self.size, self.limit = size, limit


def read_regular(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file (of at most ``limit`` bytes).

    A named pipe put where a run keeps a file would make a plain ``read`` wait
    for a writer for ever; it is opened without waiting and refused, as is a
    device.

    Args:
        path: The file to read.
        limit: The most bytes to read; None reads the whole file.

    Raises:
        OSError: naming ``path``, if it cannot be opened or is no regular file.
        TooLargeError: naming ``path``, its size and ``limit``, if it is larger
            (nothing is read).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    opened = regular_reader(fd)
    if opened is None:
        raise OSError(f"{path} is not a regular file (a folder, a named pipe, a device): remove it")
    handle, size = opened
    with handle:
        if limit is None:
            return handle.read()
        if size > limit:
            raise TooLargeError(path, size, limit)
        # As big as fstat said, and a byte more: a read of limit + 1 bytes would take
        # that much memory for a moment whatever the file's size (16 MiB for a run.json).
        data = handle.read(size + 1)
        if len(data) > size:  # it grew since fstat: read on, to the limit, to catch it
            data += handle.read(limit + 1 - len(data))
        if len(data) > limit:
            raise TooLargeError(path, max(size, len(data)), limit)
        return data


def read_given(path: str | Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a file the user named, never waiting on a pipe no one writes.

    A regular file, a pipe a process writes (``--config <(...)``, ``/dev/stdin`` from
    a pipe) and a device such as ``/dev/zero`` are read; the caller refuses more
    than ``limit`` bytes. A named pipe would make a plain ``open`` wait for a
    writer for ever: it is opened without waiting and refused when no process
    writes it. A terminal (``/dev/stdin`` at a prompt) is refused as well.

    Raises:
        OSError: its ``strerror`` says what is wrong (a folder is an
            ``IsADirectoryError``), its ``filename`` is ``path``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb", buffering=0, closefd=True) as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if os.isatty(fd):
            raise OSError(errno.ENOTTY, "a terminal, not a file: give the file itself", str(path))
        first = b""
        if stat.S_ISFIFO(mode):
            try:
                first = os.read(fd, limit + 1)
            except BlockingIOError:  # a writer, nothing written yet: wait for it
                pass
            else:
                if not first:
                    raise OSError(
                        errno.ENXIO,
                        "a named pipe that no process writes, not a file: give the file itself",
                        str(path),
                    )
        os.set_blocking(fd, True)
        data = bytearray(first)
        while len(data) <= limit:
            chunk = handle.read(limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)


def regular_reader(fd: int) -> tuple[BinaryIO, int] | None:
    """A binary reader of the open file ``fd`` and its size; None if it is no regular file.

    ``fd`` is closed when None is returned (a folder, a named pipe, a device) or
    this raises, and by the reader otherwise. A folder opens for reading as a
    file does, and ``os.fdopen`` then refuses it with an error that names the
    descriptor's number rather than the file: the caller names the file instead.

    Raises:
        OSError: the system could not read the file's status.
    """
    try:
        facts = os.fstat(fd)
        if stat.S_ISREG(facts.st_mode):
            return os.fdopen(fd, "rb"), facts.st_size
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def read_json_object(path: str | Path, limit: int) -> dict[str, Any] | None:
    """The JSON object in the regular file ``path`` (at most ``limit`` bytes), else None.

    None when the file is missing, not a regular file (a named pipe would wait for
    ever), larger than ``limit``, unreadable, not JSON or not an object.
    """
    if not Path(path).is_file():
        return None
    try:
        value = json.loads(read_regular(path, limit))
    except (OSError, ValueError, RecursionError):  # nested too deeply: damaged too
        return None
    return value if isinstance(value, dict) else None


def hold_lock(lock: Path, in_use: Callable[[str], str], *, patient: bool = False) -> int | None:
    """Hold the advisory lock ``lock`` for this process, its pid written in it.

    The lock is a ``flock``: the kernel drops it when its holder exits, even by
    ``kill -9``, so a crashed process never leaves a stale lock; it is released
    when the returned descriptor closes.

    Args:
        lock: The lock file (made if missing).
        in_use: The error's message, given the pid written by the holder.
        patient: Try a few times over 0.35 s (another process's probe may hold
            it for an instant).

    Returns:
        The lock file's descriptor, or None where there is no ``flock`` (Windows).

    Raises:
        OSError: Another process holds it (``in_use``), it is not a regular file
            (a folder, a pipe, a symbolic link: never followed), or the pid cannot
            be written (a full disk, naming the file).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    # Opened without blocking: a named pipe would wait for ever. A link is not
    # followed: the pid written below would truncate the file it points to.
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock, flags, 0o644)  # a pid: no secret
    except IsADirectoryError:
        raise OSError(
            f"{lock} is a folder, not the lock file covey keeps there: remove it"
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP or not os.path.islink(lock):
            raise
        raise OSError(
            f"{lock} is a symbolic link, not the lock file covey keeps there (the pid "
            "covey writes in it would be written over the file it points to): remove it"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{lock} is not a regular file (a pipe, a device): remove it")
        tries = 4 if patient else 1
        for attempt in range(tries):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OSError(in_use(holder)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError as exc:  # a full disk: say which file
        os.close(fd)
        raise OSError(exc.errno, exc.strerror, str(lock)) from None
    return fd
