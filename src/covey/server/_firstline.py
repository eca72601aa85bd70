"""The one line that says what went wrong in a client's error text (a traceback, say)."""

from __future__ import annotations

__all__ = ["first_line"]

_TRACEBACK = "Traceback (most recent call last):"
_GROUP = "  + Exception Group Traceback (most recent call last):"


def first_line(text: str) -> str:
    """One line saying what went wrong in a reply's error text.

    That is covey's hint when the text ends with one (``covey: ...``), else the
    ``Type: message`` line of the last traceback in it (the first line of a
    message that spans several; an exception group's own line), else the
    text's last line.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return text
    starts = [i for i, line in enumerate(lines) if line.startswith((_TRACEBACK, _GROUP))]
    if lines[-1].startswith("covey: ") or not starts:
        return lines[-1].strip()
    i = starts[-1] + 1
    margin = "  | " if lines[starts[-1]] == _GROUP else ""
    while i < len(lines) and lines[i].startswith(margin + "  "):  # frames, code and carets
        i += 1
    if i < len(lines) and lines[i].startswith(margin):
        return lines[i][len(margin) :].strip()
    return lines[-1].strip()
