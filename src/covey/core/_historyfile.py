"""A run's ``history.json``, rewritten after every round at a cost that stays flat."""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Final

from covey.core._files import atomic_write
from covey.core._history import History, RoundRecord, _head
from covey.core._jsonvalues import jsonable

__all__ = ["HistoryFile"]

SMALL_FILE: Final = 1 << 20
"""Up to this size (about a thousand rounds) the file is written after every round."""

SHARE: Final = 0.05
"""Beyond :data:`SMALL_FILE`, the most of a run's time that rewriting the file may take."""


class HistoryFile:
    """A run's ``history.json``, written again after every round at a cost that stays flat.

    :meth:`History.save` turns every record into JSON each time, so a run that
    saves its history after every round spends time growing with the round
    number (quadratic over the run). This writer keeps the JSON text of each
    record it wrote and turns a record into JSON again only while it is new:
    the newest record at every write, and once more when the next round
    follows it (a round callback may still add to it). The file holds the same
    text :meth:`History.save` writes; a full :meth:`History.save` at the end of
    the run writes whatever changed in older records since.

    Writing the whole file still takes time growing with its size, and atomic
    writes cannot append. Up to :data:`SMALL_FILE` the file is written after
    every round; a larger one (a long run of short rounds) is written when the
    time since its last write is at least ``1 / share`` times what that write
    took, so that rewriting it takes at most ``share`` of the run's time (5000
    rounds of a tiny model took 18 ms a round at their end, not 3); a change of
    the run's settings or of why it stopped is written at once. The run's
    store (``run.sqlite``) keeps every round as it completes: readers of a
    killed run's folder take the rounds its ``history.json`` missed from there.

    Args:
        path: The ``history.json`` to write.
        share: The most of the run's time that writing a large file may take.
    """

    def __init__(self, path: str | Path, *, share: float = SHARE) -> None:
        """A writer of ``path``; nothing is written yet."""
        self.path = Path(path)
        self.share = share
        self._records: list[RoundRecord] = []
        self._texts: list[bytes] = []
        self._settled = 0  # how many cached texts are final (all but the newest)
        self._size = 0  # bytes of the cached texts
        self._due = 0.0  # time.monotonic() from which a large file is written again
        self._said = ""  # the file's settings and stop reason, as last written

    def write(self, history: History) -> bool:
        """Write ``history`` to the file atomically, unless it is large and was just written.

        The end of a run writes it whole (:meth:`History.save`), whatever its size.

        Returns:
            Whether the file was written.

        Raises:
            OSError: The file could not be written (a full disk, a read-only folder),
                naming the run's newest round and the file; the old file is kept.
        """
        self._cache(history.rounds)
        start = time.monotonic()
        # The run's settings (a resume's new round count) and why it stopped are written
        # as they change; clients' names (many, in a fleet) with the next round's write.
        said = json.dumps([jsonable(history.config), history.stopped_reason])
        if self._size > SMALL_FILE and start < self._due and said == self._said:
            return False
        self._said = said
        head = json.dumps({**_head(history), "rounds": []}, indent=2).encode("utf-8")
        if self._texts:
            body = b",\n".join(self._texts)
            head = head.removesuffix(b"[]\n}") + b"[\n" + body + b"\n  ]\n}"
        try:
            atomic_write(self.path, head)
        except OSError as exc:  # a full disk, a folder turned read-only: the round is named
            raise _unwritten(self.path, history, exc) from exc
        self._due = start + (time.monotonic() - start) / self.share
        return True

    def _cache(self, rounds: list[RoundRecord]) -> None:
        """Keep the JSON text of each record that is settled; make the newest ones again."""
        keep = min(self._settled, len(self._records), max(len(rounds) - 1, 0))
        if keep and not (
            rounds[0] is self._records[0] and rounds[keep - 1] is self._records[keep - 1]
        ):
            keep = 0  # other records (a history read again): every text is made anew
        for old in self._texts[keep:]:
            self._size -= len(old) + 2
        del self._records[keep:], self._texts[keep:]
        for record in rounds[keep:]:
            self._records.append(record)
            text = json.dumps(jsonable(asdict(record)), indent=2)
            self._texts.append(textwrap.indent(text, "    ").encode("utf-8"))
            self._size += len(self._texts[-1]) + 2
        self._settled = max(len(rounds) - 1, 0)


def _unwritten(path: Path, history: History, exc: OSError) -> OSError:
    """The error of a ``history.json`` that could not be written, naming the round and the file.

    The ``errno`` is kept; the run's newest round is the one whose end wrote it.
    """
    why = exc.strerror or str(exc)
    said = f"cannot write {path}: {why}"
    if history.rounds:
        said = f"round {history.rounds[-1].round}: {said}"
    error = OSError(said)
    error.errno = exc.errno
    return error
