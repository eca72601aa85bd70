"""A standard output the ``covey`` command cannot write to ends it with an error.

``covey runs list > /dev/full`` (a full disk) or ``covey runs list >&-`` (standard
output closed) used to print nothing and exit 0, or end in a generic one-line
error: a script reading the output could not tell it got none. As other commands
do, covey now ends with ``error: cannot write to standard output: No space left
on device`` (or ``Bad file descriptor``) on standard error, and exit code 1.

A broken pipe (``covey runs list | head -1``) is not such an error, and is left
to end the command as it did.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from typing import Any

__all__ = ["StdoutError", "checked_stdout", "stop_writing"]


class StdoutError(OSError):
    """Standard output could not be written (its ``errno`` and ``strerror`` say why)."""


class _Closed(io.TextIOBase):
    """The standard output of a process started with it closed (Python's ``sys.stdout`` None)."""

    encoding = "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


class _Checked:
    """``stream``, whose failed writes and flushes raise :class:`StdoutError`."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(exc.errno, exc.strerror) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(exc.errno, exc.strerror) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def checked_stdout() -> None:
    """Make a failed write to standard output raise :class:`StdoutError` (see the module)."""
    stream = sys.stdout if sys.stdout is not None else _Closed()
    if not isinstance(stream, _Checked):
        sys.stdout = _Checked(stream)


def stop_writing() -> None:
    """Send what standard output still holds nowhere, so exiting does not fail on it again.

    Python flushes standard output as it exits; output a full disk refused is still
    in its buffer and would fail again, after the error was said. Its file
    descriptor is pointed at the null device (as Python's documentation does for a
    broken pipe); a closed one is left closed.
    """
    stream = sys.stdout
    inner = stream._stream if isinstance(stream, _Checked) else stream
    sys.stdout = inner
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, inner.fileno())
        finally:
            os.close(null)
