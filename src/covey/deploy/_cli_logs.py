"""Where ``covey server`` and ``covey client`` log: standard error, a line a record.

A record logged with its exception (``logger.exception``) stays on its one
line, ending in the exception's type and message; ``-v`` adds the traceback.

A reader of that output that goes away (``covey server ... | tee log`` whose ``tee``
ended, a log shipper restarted) ends no run: the output goes to ``os.devnull`` from
then on, and the server or client goes on, its run folder recording what it does.
A line that cannot be written (the log's disk is full) is lost, not the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from covey.core._log import ON_CONSOLE_KEY
from covey.deploy._shown import DATED, BriefHighlighter

__all__ = ["LOG_LEVELS", "LogConsole", "log_level", "setup_logging"]

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
LOG_LEVELS |= {"warning": logging.WARNING, "error": logging.ERROR}
"""The levels ``--log-level`` takes, by name."""

LOG_LEVEL_HELP = (
    "Log covey's records at this level and above: debug, info, warning or error "
    "(default warning; -v: info). The console's own lines are written at any level."
)


def log_level(value: Any, flag: str) -> int | None:
    """The level ``--log-level`` (or where ``flag`` says it came from) names; None if not given."""
    if value is None:
        return None
    level = LOG_LEVELS.get(value.lower()) if isinstance(value, str) else None
    if level is None:
        from covey.deploy._cli_errors import fail

        fail(f"{flag} {value!r}: give one of {', '.join(LOG_LEVELS)}")
    return level


def _to_devnull(stream: Any) -> None:
    """Point the file descriptor under ``stream`` at ``os.devnull``: its reader went away."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no descriptor: nothing
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


class LogConsole(Console):
    """Rich's console, for a command that runs for days: its output failing does not end it.

    Rich ends the process (``SystemExit(1)``) when a write finds that the stream's
    reader went away, and raises any other error of the write (a full disk): raised
    inside a server's round loop, either stopped the run as failed, and a client that
    finished its run exited with status 1. This console points a stream whose reader
    went away at ``os.devnull``, drops a line it cannot write, and goes on.
    """

    def on_broken_pipe(self) -> None:
        """Write no more to the stream, whose reader has gone; do not exit."""
        self.quiet = True
        _to_devnull(self.file)

    def _check_buffer(self) -> None:
        """Write what was printed; a write that fails (a full disk) loses the line, not the run.

        Rich raises any error but a broken pipe from the write, into the round loop that
        printed, and keeps the line to write again before the next one.
        """
        try:
            super()._check_buffer()
        except OSError:
            del self._buffer[:]


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to the ``sys.stderr`` of the moment it is logged.

    Not to the one the command started with: run in-process (a notebook, a test's
    CLI runner), that stream may be closed once the command returns, and every
    later record would print a "Logging error" traceback instead.
    """

    @property
    def stream(self) -> Any:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """Ignored: the handler follows ``sys.stderr``."""

    def handleError(self, record: logging.LogRecord) -> None:
        """A reader gone: standard error goes to ``os.devnull`` (see :class:`LogConsole`)."""
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            _to_devnull(sys.stderr)
            return
        super().handleError(record)


class _OneLine(logging.Formatter):
    """Formats a record with an exception as one line: ``message: Type: what it says``.

    The record itself is left as it was, for any other handler (and its traceback).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, its exception's first line after it (no traceback)."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return super().format(record)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        said = (str(exc).strip().splitlines() or [""])[0]
        return f"{line}: {type(exc).__name__}{': ' + said if said else ''}"


def _not_on_console(record: logging.LogRecord) -> bool:
    """False for a record of what the server's console writes a line of already."""
    return not getattr(record, ON_CONSOLE_KEY, False)


def setup_logging(
    console: Console, verbose: bool, *, server: bool = False, level: int | None = None
) -> None:
    """Log to standard error: rich's layout in a terminal, one plain line a record elsewhere.

    ``level``: covey's records at it and above are logged (``--log-level``); None:
    INFO with ``verbose``, else WARNING. Other libraries' records below INFO are left
    out at any level. Without ``verbose`` or DEBUG, a record's traceback is left out
    (see :class:`_OneLine`).
    ``server``: the command writes the server's console (``covey server``), which says
    itself that it listens and who joined and left: the records of those (marked with
    :data:`~covey.core._log.ON_CONSOLE`) are left out, not written twice.
    """
    handler: logging.Handler
    chosen = level if level is not None else logging.INFO if verbose else logging.WARNING
    kind = logging.Formatter if verbose or chosen <= logging.DEBUG else _OneLine
    if console.is_terminal:
        # a record naming a client's text (its error) may be long: not coloured then
        handler = RichHandler(console=console, show_path=False, highlighter=BriefHighlighter())
        handler.setFormatter(kind("%(message)s"))
    else:
        handler = _Stderr()
        # a file or journald may hold days of it: each record is dated as the console's lines
        handler.setFormatter(kind("%(asctime)s %(levelname)s %(message)s", DATED))
    if server:
        handler.addFilter(_not_on_console)
    logging.basicConfig(level=max(chosen, logging.INFO), handlers=[handler], force=True)
    logging.getLogger("covey").setLevel(chosen)
