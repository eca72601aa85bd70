"""Text from clients and folders, made safe to print on a terminal or a log line.

A client's error message, its name, a run folder's name: any of them may hold
control characters. Printed as they are, an escape sequence clears an operator's
screen or sets its window title, and a line break forges a log line. Shown
here, each such character is written as its Python escape (a backslash, then
``x1b`` or ``n``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["clients", "clipped", "printable"]

_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
"""Control and format characters (bidirectional overrides), lone surrogates, line and
paragraph separators."""


def clients(count: int) -> str:
    """``"1 client"``, ``"3 clients"``: a count of clients as a message says it."""
    return f"{count} client" if count == 1 else f"{count} clients"


def printable(text: str) -> str:
    r"""``text`` with each control or format character written as its escape.

    Example:
        >>> print(printable("done" + chr(27) + "[2J"))
        done\x1b[2J
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(map(_shown, text))


def clipped(text: str, limit: int) -> str:
    r"""``text`` as :func:`printable` writes it, cut to at most ``limit`` characters and a note.

    A peer's text is escaped first, then cut: each character escaped takes up to 10, so
    text cut first could still fill a log line ten times over. What is kept is its
    start and its end (the end often says what went wrong), no escape cut in two;
    the note in between counts the characters of ``text`` left out.

    Example:
        >>> print(clipped("a" * 6 + chr(27) * 4 + "b" * 6, limit=8))
        aaaa [... 8 characters left out ...] bbbb
    """
    if len(text) <= limit and text.isascii() and text.isprintable():
        return text  # the common case: a covey peer's own words
    if len(text) <= limit:
        whole = printable(text)
        if len(whole) <= limit:
            return whole
    half = limit // 2
    head = _fitting(text, half)
    tail = _fitting(reversed(text[len(head) :]), limit - half)
    left_out = len(text) - len(head) - len(tail)
    start, end = "".join(head), "".join(reversed(tail))
    return f"{start} [... {left_out} characters left out ...] {end}" if left_out else start + end


def _shown(char: str) -> str:
    """``char`` as :func:`printable` writes it: itself, or its escape if it is unsafe."""
    if unicodedata.category(char) in _UNSAFE:
        return char.encode("unicode_escape").decode("ascii")
    return char


def _fitting(chars: Iterable[str], room: int) -> list[str]:
    """The escapes (see :func:`printable`) of the leading ``chars`` that fit in ``room`` characters.

    One escape a character: as many as there are characters taken.
    """
    pieces: list[str] = []
    used = 0
    for char in chars:
        piece = _shown(char)
        used += len(piece)
        if used > room:
            break
        pieces.append(piece)
    return pieces
