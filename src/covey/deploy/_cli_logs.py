"""Where ``covey server`` and ``covey client`` log: standard error, a line a record."""

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


def setup_logging(console: Console, verbose: bool) -> None:
    """Log to standard error: rich's layout in a terminal, one plain line a record elsewhere."""
    handler: logging.Handler
    if console.is_terminal:
        # a record naming a client's text (its error) may be long: not coloured then
        handler = RichHandler(console=console, show_path=False, highlighter=BriefHighlighter())
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
    )
    logging.getLogger("covey").setLevel(logging.INFO if verbose else logging.WARNING)
