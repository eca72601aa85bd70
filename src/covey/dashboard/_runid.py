"""A run's id: its folder's path as text any page can put in a URL, and back again."""

from __future__ import annotations

import os
import re
from typing import Final

__all__ = ["run_id", "run_name"]


def run_id(name: str) -> str:
    r"""A folder's name as a run id: text, its bytes that are not UTF-8 written as ``\xNN``.

    Such bytes come out of :func:`os.listdir` as lone surrogates, which no browser
    can put in a URL (``encodeURIComponent`` throws), so the page could list no run.
    A backslash in the name is written twice, so no two folders get the same id
    (one named with the byte 0xE9 and one named with the four characters ``\xe9``).

    Example:
        >>> run_id(os.fsdecode(b"caf\xe9 run"))
        'caf\\xe9 run'
        >>> run_id("caf\\xe9 run")
        'caf\\\\xe9 run'
    """
    return os.fsencode(name).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPED: Final = re.compile(rb"\\\\|\\x([0-9a-f]{2})")


def run_name(run_id: str) -> str:
    r"""The folder name :func:`run_id` wrote as ``run_id``: ``\xNN`` back to its byte.

    ``covey runs list`` shows such ids, so ``covey runs show`` takes them back.

    Example:
        >>> run_name(run_id(os.fsdecode(b"caf\xe9 run"))) == os.fsdecode(b"caf\xe9 run")
        True
        >>> run_name(run_id("caf\\xe9 run"))
        'caf\\xe9 run'
    """

    def byte(match: re.Match[bytes]) -> bytes:
        hex_digits = match.group(1)
        return b"\\" if hex_digits is None else bytes([int(hex_digits, 16)])

    return os.fsdecode(_ESCAPED.sub(byte, os.fsencode(run_id)))
