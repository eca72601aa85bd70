"""A run's ``history.json`` parsed once for as long as it stays the same file.

A deployed run of thousands of short rounds rewrites its ``history.json`` only
now and then (:class:`~covey.core._historyfile.HistoryFile`), while its store
(``run.sqlite``) gets every round: the dashboard reads the run again at each
round, and without this would parse the whole file again each time. A file
that did change (written again with a new round, or a resumed run's redone
rounds) is parsed reusing the rounds whose text stayed the same
(:func:`~covey.dashboard._historyparse.parse_reusing`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

from covey.dashboard._historyparse import Layout, parse_reusing
from covey.dashboard._runjson import RunReadError, check_rounds, parse_json, read_bytes

__all__ = ["HistoryCache", "parse_history"]

_Key = tuple[int, int, int, int]
_Parsed = tuple[_Key, dict[str, Any], list[dict[str, Any]], Layout | None]

KEPT: Final = 256
"""The most files a :class:`HistoryCache` keeps parsed (the least recently read go first)."""


def parse_history(history: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The object ``history`` holds, and its rounds checked, in round order.

    Raises:
        RunReadError: if the file cannot be read, is not JSON, or not a covey run's history.
    """
    return _parse_whole(history, read_bytes(history))


def _parse_whole(history: Path, raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = parse_json(history, raw)
    if not isinstance(data, dict):
        raise RunReadError(f"{history} must hold a JSON object")
    return data, check_rounds(data.get("rounds"), str(history))


def _parse(
    history: Path, raw: bytes, old: Layout | None, walk: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]], Layout | None]:
    """:func:`parse_history` of the bytes ``raw``, reusing the rounds of ``old`` they hold.

    ``walk``: take the file apart round by round, for a layout the next version of
    the file is compared with; else it is parsed whole, as fast as ``json.loads``
    parses it. The layout returned is None if the file was parsed whole.
    """
    walked = parse_reusing(raw, old) if walk else None
    if walked is not None:
        data, layout, kept = walked
        try:  # the rounds reused were checked when first read
            return data, check_rounds(layout.items, str(history), kept), layout
        except RunReadError:
            pass  # said as a whole parse says it, below
    data, rounds = _parse_whole(history, raw)
    return data, rounds, None


def _key(path: Path) -> _Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class HistoryCache:
    """Parsed ``history.json`` files, each parsed again only once its size, time or inode changed.

    What it returns is shared between reads: callers must not change it.
    """

    def __init__(self, kept: int = KEPT) -> None:
        """An empty cache keeping at most ``kept`` files parsed."""
        self.kept = kept
        self._lock = threading.Lock()
        self._parsed: OrderedDict[Path, _Parsed] = OrderedDict()

    def read(self, history: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """:func:`parse_history` of ``history``, parsed again only if the file changed.

        A file that changed is parsed reusing the rounds of its last read whose text
        it still holds, the same bytes at the same place in its ``rounds``; the first
        read of a file is a whole parse, which a later version reuses nothing of.
        """
        before = _key(history)
        with self._lock:
            hit = self._parsed.get(history)
            if hit is not None and before is not None and hit[0] == before:
                self._parsed.move_to_end(history)
                return hit[1], hit[2]
        # A file read for the first time is parsed whole: most are never written again
        # (a finished run's), and taking one apart costs more than json.loads. One that
        # changed since is being written: it is taken apart, for the next version to reuse.
        raw = read_bytes(history)
        old = None if hit is None else hit[3]
        data, rounds, layout = _parse(history, raw, old, walk=hit is not None)
        if before is not None and _key(history) == before:  # not changed while it was read
            with self._lock:
                self._parsed[history] = (before, data, rounds, layout)
                self._parsed.move_to_end(history)
                while len(self._parsed) > self.kept:
                    self._parsed.popitem(last=False)
        return data, rounds
