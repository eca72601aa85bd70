"""Text for rich markup, as the ``covey`` commands print it."""

from __future__ import annotations

import datetime as _dt

from rich.highlighter import ReprHighlighter
from rich.markup import escape as markup_escape
from rich.text import Text

from covey.core._text import printable

__all__ = ["HIGHLIGHTED", "BriefHighlighter", "escape", "stamped"]

HIGHLIGHTED = 200
"""The longest line (in characters) the ``covey`` commands colour; longer ones are plain."""


def escape(text: str) -> str:
    """``text`` for rich markup: its markup escaped, its control characters as escapes.

    What ``covey runs`` prints comes from clients (their errors, their names) and from
    the folders it reads: an escape sequence there would act on the terminal.
    """
    return markup_escape(printable(text))


def stamped(text: str) -> str:
    """``text`` (markup) after the time of day, as every line of a served run begins.

    The server's progress, the lines saying how a server or client ended (``done:``,
    ``error:``, ``interrupted (SIGTERM):``...) and, outside a terminal, its log records:
    a log collected from standard error dates each of them alike.
    """
    return f"[dim]{_dt.datetime.now():%H:%M:%S}[/] {text}"


class BriefHighlighter(ReprHighlighter):
    """Rich's colouring of numbers, strings and paths, for lines of :data:`HIGHLIGHTED` at most.

    Rich takes time growing with the square of a line's length to colour it: 16 Ki
    digits in a client's error took 24 s, holding the server's round loop (and its
    heartbeats) meanwhile. A longer line, which carries a client's text, is shown
    plain, in time linear in its length.
    """

    def highlight(self, text: Text) -> None:
        """Colour ``text`` if it is short; leave it plain otherwise."""
        if len(text) <= HIGHLIGHTED:
            super().highlight(text)
