"""Where ``covey server`` and ``covey client`` log: standard error, a line a record.

A record logged with its exception (``logger.exception``) stays on its one
line, ending in the exception's type and message; ``-v`` adds the traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from covey.deploy._shown import BriefHighlighter

__all__ = ["setup_logging"]


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


def setup_logging(console: Console, verbose: bool) -> None:
    """Log to standard error: rich's layout in a terminal, one plain line a record elsewhere.

    Without ``verbose``, a record's traceback is left out (see :class:`_OneLine`).
    """
    handler: logging.Handler
    kind = logging.Formatter if verbose else _OneLine
    if console.is_terminal:
        # a record naming a client's text (its error) may be long: not coloured then
        handler = RichHandler(console=console, show_path=False, highlighter=BriefHighlighter())
        handler.setFormatter(kind("%(message)s"))
    else:
        handler = _Stderr()
        handler.setFormatter(kind("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
    )
    logging.getLogger("covey").setLevel(logging.INFO if verbose else logging.WARNING)
