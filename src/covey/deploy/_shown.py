"""Text for rich markup, as the ``covey`` commands print it."""

from __future__ import annotations

from rich.markup import escape as markup_escape

from covey.core._text import printable

__all__ = ["escape"]


def escape(text: str) -> str:
    """``text`` for rich markup: its markup escaped, its control characters as escapes.

    What ``covey runs`` prints comes from clients (their errors, their names) and from
    the folders it reads: an escape sequence there would act on the terminal.
    """
    return markup_escape(printable(text))
