"""A ``history.json`` parsed again reusing the rounds whose text did not change.

A run's ``history.json`` is rewritten whole at each write (atomically: a new
file), though mostly its rounds stay as they were: a new round after them, the
newest one written again, a resumed run's redone rounds, a history cut short.
Parsing all of it again took seconds at 20,000 rounds. A :class:`Layout` keeps,
for a file parsed, where each round's text ends in its ``rounds`` array and a
hash of that text; the next file's array is compared with it, round by round,
and the rounds whose bytes (and all before them in the array) are the same are
taken as parsed, the rest parsed anew. JSON is read left to right: the same
bytes from the array's ``[`` give the same values, so the result is the one
``json.loads`` gives. A file this reader does not take apart exactly as
``json.loads`` does (not ASCII, not an object, two ``rounds`` keys, anything
unexpected) gets ``None``, and is parsed whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from dataclasses import dataclass
from typing import Any, Final

from covey.dashboard._runjson import tag_constant

__all__ = ["Layout", "parse_reusing"]

_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
"""What JSON takes as whitespace between values (as :mod:`json` skips it)."""

_DIGEST: Final = 16
_DECODER: Final = json.JSONDecoder(parse_constant=tag_constant)
"""What ``json.loads(text, parse_constant=tag_constant)`` parses with."""


class _NotWalked(Exception):
    """The text is not one this reader takes apart: it is parsed whole instead."""


@dataclass(frozen=True)
class Layout:
    """A parsed file's ``rounds`` array: its items, where each ends, and hashes of their text.

    Attributes:
        items: The array's items as parsed, in the file's order (shared: not to be changed).
        ends: Per item, the offset from the array's ``[`` just past its text.
        digests: Per item, the hash of the text from the previous item's end
            (or the ``[``) up to its own end, ``_DIGEST`` bytes each, one after another.
    """

    items: list[Any]
    ends: array[int]
    digests: bytes


def _digest(view: memoryview) -> bytes:
    return hashlib.blake2b(view, digest_size=_DIGEST).digest()


def _same_items(raw: bytes, start: int, old: Layout) -> int:
    """How many of ``old``'s first items ``raw`` holds (the same bytes) from its ``[`` at ``start``.

    Item ``i``'s text runs from the end of item ``i - 1`` (or the ``[``) to its own end.
    """
    view = memoryview(raw)
    before = 0
    for i, end in enumerate(old.ends):
        if start + end > len(raw):
            return i
        if (
            _digest(view[start + before : start + end])
            != old.digests[i * _DIGEST : (i + 1) * _DIGEST]
        ):
            return i
        before = end
    return len(old.ends)


def _skip(text: str, at: int) -> int:
    return _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]  # matches "" at worst


def _array(text: str, raw: bytes, start: int, old: Layout | None) -> tuple[Layout, int, int]:
    """The array whose ``[`` is at ``start``; the offset past its ``]``, and the items reused."""
    kept = 0 if old is None else _same_items(raw, start, old)
    items = [] if old is None else old.items[:kept]
    ends = array("q") if old is None else old.ends[:kept]
    digests = [b"" if old is None else old.digests[: kept * _DIGEST]]
    view = memoryview(raw)
    before = ends[-1] if kept else 0
    at = _skip(text, start + (before if kept else 1))
    if not kept and text[at : at + 1] == "]":
        return Layout(items, ends, b""), at + 1, 0
    if kept:  # after an item: the next one, or the array's end
        if text[at : at + 1] == "]":
            return Layout(items, ends, digests[0]), at + 1, kept
        if text[at : at + 1] != ",":
            raise _NotWalked
        at = _skip(text, at + 1)
    while True:
        value, end = _DECODER.raw_decode(text, at)
        items.append(value)
        ends.append(end - start)
        digests.append(_digest(view[start + before : end]))
        before = end - start
        at = _skip(text, end)
        if text[at : at + 1] == "]":
            return Layout(items, ends, b"".join(digests)), at + 1, kept
        if text[at : at + 1] != ",":
            raise _NotWalked
        at = _skip(text, at + 1)


def _object(text: str, raw: bytes, old: Layout | None) -> tuple[dict[str, Any], Layout, int]:
    """The top object of ``text``, its ``rounds`` array taken apart; the items reused."""
    at = _skip(text, 0)
    if text[at : at + 1] != "{":
        raise _NotWalked
    pairs: list[tuple[str, Any]] = []
    found: tuple[Layout, int] | None = None
    at = _skip(text, at + 1)
    while True:
        if text[at : at + 1] != '"':
            raise _NotWalked
        key, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text[at : at + 1] != ":":
            raise _NotWalked
        at = _skip(text, at + 1)
        if key == "rounds":
            if found is not None or text[at : at + 1] != "[":
                raise _NotWalked  # two of them, or no array: parsed whole
            layout, at, kept = _array(text, raw, at, old)
            found = (layout, kept)
            value: Any = layout.items
        else:
            value, at = _DECODER.raw_decode(text, at)
        pairs.append((key, value))
        at = _skip(text, at)
        if text[at : at + 1] == "}":
            break
        if text[at : at + 1] != ",":
            raise _NotWalked
        at = _skip(text, at + 1)
    if found is None or _skip(text, at + 1) != len(text):
        raise _NotWalked
    return dict(pairs), found[0], found[1]


def parse_reusing(raw: bytes, old: Layout | None) -> tuple[dict[str, Any], Layout, int] | None:
    """What ``json.loads(raw, parse_constant=tag_constant)`` gives, reusing ``old``'s items.

    Returns:
        The file's object (its ``rounds`` the layout's items), its layout, and how
        many of its first items are ``old``'s (the same objects); None if the file
        is not one this reader takes apart, or is not JSON: parse it whole.
    """
    if not raw.isascii() or json.detect_encoding(raw) != "utf-8":
        return None  # byte offsets are not those of the text, or another encoding
    text = raw.decode("ascii")
    try:
        return _object(text, raw, old)
    except (_NotWalked, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
