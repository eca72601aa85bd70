"""A run's ``history.json`` parsed once for as long as it stays the same file.

A deployed run of thousands of short rounds rewrites its ``history.json`` only
now and then (:class:`~covey.core._historyfile.HistoryFile`), while its store
(``run.sqlite``) gets every round: the dashboard reads the run again at each
round, and without this would parse the whole file again each time.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

from covey.dashboard._runjson import RunReadError, check_rounds, read_json

__all__ = ["HistoryCache", "parse_history"]

_Key = tuple[int, int, int, int]

KEPT: Final = 256
"""The most files a :class:`HistoryCache` keeps parsed (the least recently read go first)."""


def parse_history(history: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The object ``history`` holds, and its rounds checked, in round order.

    Raises:
        RunReadError: if the file cannot be read, is not JSON, or not a covey run's history.
    """
    data = read_json(history)
    if not isinstance(data, dict):
        raise RunReadError(f"{history} must hold a JSON object")
    return data, check_rounds(data.get("rounds"), str(history))


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
        self._parsed: OrderedDict[Path, tuple[_Key, dict[str, Any], list[dict[str, Any]]]] = (
            OrderedDict()
        )

    def read(self, history: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """:func:`parse_history` of ``history``, parsed again only if the file changed."""
        before = _key(history)
        with self._lock:
            hit = self._parsed.get(history)
            if hit is not None and before is not None and hit[0] == before:
                self._parsed.move_to_end(history)
                return hit[1], hit[2]
        data, rounds = parse_history(history)
        if before is not None and _key(history) == before:  # not changed while it was read
            with self._lock:
                self._parsed[history] = (before, data, rounds)
                self._parsed.move_to_end(history)
                while len(self._parsed) > self.kept:
                    self._parsed.popitem(last=False)
        return data, rounds
