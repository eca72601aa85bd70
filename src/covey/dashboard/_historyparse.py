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
``json.loads`` does (not UTF-8, not an object, two ``rounds`` keys, anything
unexpected) gets ``None``, and is parsed whole. A file that is not ASCII (a
client's or a metric's name in another script) is taken apart by characters
and compared by bytes: each item's byte length is counted as it is parsed.
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


class _Text:
    """A file's text and its bytes, and the byte offset of a character offset in it.

    In an ASCII file the two are the same; in another, the bytes of the text
    between two offsets are counted by encoding it again (UTF-8 gives back the
    bytes it was decoded from, the surrogates JSON decoding lets through too).
    """

    def __init__(self, raw: bytes, text: str) -> None:
        self.raw, self.text, self.view = raw, text, memoryview(raw)
        self.ascii = len(raw) == len(text)

    def encoded(self, start: int, end: int) -> int:
        """How many bytes the characters ``start`` to ``end`` take in the file."""
        if self.ascii:
            return end - start
        return len(self.text[start:end].encode("utf-8", "surrogatepass"))

    def decoded(self, start: int, size: int) -> int:
        """How many characters the ``size`` bytes from byte ``start`` are."""
        if self.ascii:
            return size
        return len(self.raw[start : start + size].decode("utf-8", "surrogatepass"))

    def digest(self, byte: int, size: int) -> bytes:
        """The hash of the ``size`` bytes from byte ``byte``."""
        return _digest(self.view[byte : byte + size])


def _array(file: _Text, start: int, old: Layout | None) -> tuple[Layout, int, int]:
    """The array whose ``[`` is at ``start``; the offset past its ``]``, and the items reused.

    Offsets in the text are of characters, those a layout keeps of bytes (the same
    in an ASCII file): a file is compared with the last one by its bytes.
    """
    text = file.text
    first = file.encoded(0, start)  # the byte of the "["
    kept = 0 if old is None else _same_items(file.raw, first, old)
    items = [] if old is None else old.items[:kept]
    ends = array("q") if old is None else old.ends[:kept]
    digests = [b"" if old is None else old.digests[: kept * _DIGEST]]
    before = ends[-1] if kept else 0  # bytes from the "[" past the items so far
    chars = file.decoded(first, before) if kept else 0  # the same, in characters
    at = _skip(text, start + (chars if kept else 1))
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
        size = file.encoded(start + chars, end)
        digests.append(file.digest(first + before, size))
        before += size
        chars = end - start
        ends.append(before)
        at = _skip(text, end)
        if text[at : at + 1] == "]":
            return Layout(items, ends, b"".join(digests)), at + 1, kept
        if text[at : at + 1] != ",":
            raise _NotWalked
        at = _skip(text, at + 1)


def _object(file: _Text, old: Layout | None) -> tuple[dict[str, Any], Layout, int]:
    """The top object of the file, its ``rounds`` array taken apart; the items reused."""
    text = file.text
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
            layout, at, kept = _array(file, at, old)
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
    if json.detect_encoding(raw) != "utf-8":
        return None  # another encoding (a UTF-8 BOM, UTF-16): parsed whole
    try:
        text = raw.decode("utf-8", "surrogatepass")  # as json.loads decodes bytes
        return _object(_Text(raw, text), old)
    except (_NotWalked, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None  # UnicodeDecodeError too: not UTF-8
