"""Text for rich markup, as the ``covey`` commands print it."""

from __future__ import annotations

import datetime as _dt

from rich.console import Console
from rich.highlighter import ReprHighlighter
from rich.markup import escape as markup_escape
from rich.text import Text

from covey.core._text import printable

__all__ = ["DATED", "HIGHLIGHTED", "BriefHighlighter", "escape", "stamp", "stamped"]

HIGHLIGHTED = 200
"""The longest line (in characters) the ``covey`` commands colour; longer ones are plain."""

TIME_OF_DAY = "%H:%M:%S"
"""How a line on a terminal is timed: the time of day."""

DATED = "%Y-%m-%d %H:%M:%S%z"
"""How a line elsewhere (a file, journald, a pipe) is timed: its date, its time, its zone."""


def escape(text: str) -> str:
    """``text`` for rich markup: its markup escaped, its control characters as escapes.

    What ``covey runs`` prints comes from clients (their errors, their names) and from
    the folders it reads: an escape sequence there would act on the terminal.
    """
    return markup_escape(printable(text))


def stamp(dated: bool) -> str:
    """The time a line begins with: ``15:43:07``, or ``2026-12-07 15:43:07+0000`` if ``dated``.

    Outside a terminal (a file, journald, a pipe) a log may span midnight or days:
    each line then carries its date too, and its offset from UTC so that logs of hosts
    in several time zones line up.
    """
    return f"{_dt.datetime.now().astimezone():{DATED if dated else TIME_OF_DAY}}"


def stamped(text: str, console: Console) -> str:
    """``text`` (markup) after the time, as every line of a served run begins.

    The server's progress, the lines saying how a server or client ended (``done:``,
    ``error:``, ``interrupted (SIGTERM):``...) and, outside a terminal, its log records:
    a log collected from standard error dates each of them alike. ``console``, where the
    line goes, decides the time's form (see :func:`stamp`).
    """
    return f"[dim]{stamp(not console.is_terminal)}[/] {text}"


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
