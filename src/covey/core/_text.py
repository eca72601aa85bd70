"""Text from clients and folders, made safe to print on a terminal or a log line.

A client's error message, its name, a run folder's name: any of them may hold
control characters. Printed as they are, an escape sequence clears an operator's
screen or sets its window title, and a line break forges a log line. Shown
here, each such character is written as its Python escape (a backslash, then
``x1b`` or ``n``).
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
"""Control and format characters (bidirectional overrides), lone surrogates, line and
paragraph separators."""


def printable(text: str) -> str:
    r"""``text`` with each control or format character written as its escape.

    Example:
        >>> print(printable("done" + chr(27) + "[2J"))
        done\x1b[2J
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _UNSAFE else c
        for c in text
    )
