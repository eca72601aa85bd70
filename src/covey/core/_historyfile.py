"""A run's ``history.json``, rewritten after every round at a cost that stays flat."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import BinaryIO, Final

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
    number (quadratic over the run). This writer turns a record into JSON only
    while it is new: the newest record at every write, and once more at the
    next write (a round callback may still add to it). The older records' text
    is copied from the file it wrote last, not kept in memory, so what the
    writer holds does not grow with the run. The file holds the same text
    :meth:`History.save` writes. The end of a run writes it with ``final=True``:
    the records' text as it is, whatever the file's size, so that ending a long
    run costs no more than one of its rounds (:meth:`History.save` would turn
    every record into JSON again: seconds for 10,000 rounds). A record's text is
    final once the round after it was written, as the run's store keeps it. A
    file that is no longer the one it wrote (replaced or changed by another
    program) is written from the records again. The first write of a resumed
    run takes up the file its earlier servers left: the text of each of its
    first records that holds the values of the run's record is copied, not made
    again (a damaged or changed file's records are made anew).

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
        self._written: _Written | None = None  # the file as last written
        self._due = 0.0  # time.monotonic() from which a large file is written again
        self._said = ""  # the file's settings and stop reason, as last written
        self._taken_up = False  # whether the first write looked for a file an earlier run left

    def write(self, history: History, *, final: bool = False) -> bool:
        """Write ``history`` to the file atomically, unless it is large and was just written.

        ``final``: write it whatever its size and its last write's time (the end of a run).

        Returns:
            Whether the file was written.

        Raises:
            OSError: The file could not be written (a full disk, a read-only folder),
                naming the run's newest round and the file; the old file is kept.
        """
        start = time.monotonic()
        # The run's settings (a resume's new round count) and why it stopped are written
        # as they change; clients' names (many, in a fleet) with the next round's write.
        said = json.dumps([jsonable(history.config), history.stopped_reason])
        size = 0 if self._written is None else self._written.size
        if size > SMALL_FILE and start < self._due and said == self._said and not final:
            return False
        self._said = said
        head = json.dumps({**_head(history), "rounds": []}, indent=2).encode("utf-8")
        rounds = history.rounds
        before = self._written
        if before is None and not self._taken_up:  # a resumed run: the file it left
            self._taken_up = True
            before = _left(rounds, self.path)
        kept = 0 if before is None else before.reusable(rounds, self.path)
        written = _Written(rounds)
        texts = [_text(record) for record in rounds[kept:]]

        def fill(tmp: str | Path) -> None:
            with open(tmp, "wb") as out:
                if not rounds:
                    out.write(head)
                    return
                out.write(head.removesuffix(b"[]\n}") + b"[\n")
                body = out.tell()
                if kept and not (before is not None and before.copy_to(out, self.path)):
                    out.seek(body)  # the file changed meanwhile: its records are made anew
                    out.truncate()
                    out.write(b",\n".join(_text(record) for record in rounds[:kept]))
                for i, text in enumerate(texts):
                    if i == len(texts) - 1:  # the newest record's text may change: not settled
                        written.span = (body, out.tell())
                    out.write(b",\n" + text if kept or i else text)
                out.write(b"\n  ]\n}")

        try:
            atomic_write(self.path, fill)
            written.stamp, written.size = _stamp(self.path)
        except OSError as exc:  # a full disk, a folder turned read-only: the round is named
            self._written = None
            raise _unwritten(self.path, history, exc) from exc
        self._written = written
        self._due = start + (time.monotonic() - start) / self.share
        return True


def _text(record: RoundRecord) -> bytes:
    """A record's text in ``history.json``, as :meth:`History.save` writes it."""
    text = json.dumps(jsonable(asdict(record)), indent=2)
    return textwrap.indent(text, "    ").encode("utf-8")


ROUNDS_OPEN: Final = b'\n  "rounds": [\n'
"""What opens the records in ``history.json``: its last key, the one at the top level."""
ROUNDS_CLOSE: Final = b"\n  ]\n}"
"""What closes the records and the file."""
_LAID_OUT = re.compile(rb"\n *")
"""A line break and the next line's indent (JSON's strings hold neither raw)."""
RECORD_END: Final = b"\n    }"
"""What ends a record's text: its top-level object's brace, the only one this deep."""


def _left(rounds: list[RoundRecord], path: Path) -> _Written | None:
    """The ``history.json`` an earlier writer of the run left, as if this writer wrote it.

    Its first records are taken up while each holds what the run's record of that
    place holds (the same JSON, keys in the same order), all but the newest of
    ``rounds``: a record its round's callbacks changed since, a file cut short, damaged
    or of another run is made anew from there on. None if no record is taken up.
    """
    if len(rounds) < 2:
        return None
    try:
        with open(path, "rb") as old:
            stamp, _ = _stamp(path, old.fileno())
            text = old.read()
    except OSError:
        return None
    opened = text.find(ROUNDS_OPEN)
    if opened < 0 or not text.endswith(ROUNDS_CLOSE):
        return None
    body = start = opened + len(ROUNDS_OPEN)
    stop = len(text) - len(ROUNDS_CLOSE)
    taken, taken_end = 0, body
    while taken < len(rounds) - 1 and start < stop:
        end = text.find(RECORD_END + b",\n", start, stop)
        end = stop if end < 0 else end + len(RECORD_END)
        if not _holds(text[start:end], rounds[taken]):
            break
        taken, taken_end, start = taken + 1, end, end + 2  # past ",\n"
    if not taken:
        return None
    written = _Written(rounds[: taken + 1])  # settled: the records taken up
    written.span = (body, taken_end)
    written.stamp, written.size = stamp, len(text)
    return written


_NAMES: dict[type, tuple[str, ...]] = {}
"""The field names of each record class, in their order (``dataclasses.fields`` is slow)."""


def _holds(text: bytes, record: RoundRecord) -> bool:
    """Whether a record's ``text`` in the file is the one :meth:`History.save` writes of it.

    Compared as compact JSON (the C encoder's, no record turned into JSON by
    Python): its text with the line breaks and indents taken out, against
    ``record``'s values in that form. Keys, their order, values and the types
    JSON tells apart must be the same; a record plain JSON cannot say as the file
    does (NumPy values, NaN) is not taken up.
    """
    if not text.startswith(b"    {"):
        return False
    names = _NAMES.get(type(record))
    if names is None:
        names = _NAMES[type(record)] = tuple(f.name for f in fields(record))
    values = {name: getattr(record, name) for name in names}
    try:
        said = json.dumps(values, allow_nan=False, separators=(",", ": "))
    except (ValueError, TypeError, RecursionError):
        return False
    return _LAID_OUT.sub(b"", text[4:]) == said.encode("ascii")


def _stamp(path: Path, fd: int | None = None) -> tuple[tuple[int, ...], int]:
    """What tells a file from another or changed one (device, inode, size, time), and its size."""
    st = os.stat(path) if fd is None else os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), st.st_size


class _Written:
    """A ``history.json`` as last written: which records it holds, where their text is.

    It holds two records of the run (the first and the last settled one), not
    every record's text: a long run's writer stays the same size.
    """

    def __init__(self, rounds: list[RoundRecord]) -> None:
        self.settled = max(len(rounds) - 1, 0)  # records whose text is final (all but the newest)
        self.first = rounds[0] if rounds else None
        self.last = rounds[self.settled - 1] if self.settled else None  # the last settled one
        self.span = (0, 0)  # the bytes of the settled records' text in the file
        self.stamp: tuple[int, ...] = ()
        self.size = 0

    def reusable(self, rounds: list[RoundRecord], path: Path) -> int:
        """How many of ``rounds`` have their final text in the file: its first records.

        None if the file was changed or replaced since, or the history is another
        (a history read again) or has fewer records.
        """
        n = self.settled
        if (
            not n
            or len(rounds) <= n
            or rounds[0] is not self.first
            or rounds[n - 1] is not self.last
        ):
            return 0
        try:
            return n if _stamp(path)[0] == self.stamp else 0
        except OSError:
            return 0

    def copy_to(self, out: BinaryIO, path: Path) -> bool:
        """Copy the settled records' text from the file at ``path`` into ``out``.

        Returns:
            Whether it was copied whole: not if the file changed since :meth:`reusable`
            found it unchanged (``out`` then holds part of it).
        """
        start, end = self.span
        try:
            with open(path, "rb") as old:
                if _stamp(path, old.fileno())[0] != self.stamp:
                    return False
                old.seek(start)
                left = end - start
                while left:
                    chunk = old.read(min(left, 1 << 20))
                    if not chunk:
                        return False
                    out.write(chunk)
                    left -= len(chunk)
        except OSError:
            return False
        return True


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
