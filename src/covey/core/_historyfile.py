"""A run's ``history.json``, rewritten after every round at a cost that stays flat."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict
from pathlib import Path

from covey.core._files import atomic_write
from covey.core._history import History, RoundRecord, _head
from covey.core._jsonvalues import jsonable

__all__ = ["HistoryFile"]


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

    Args:
        path: The ``history.json`` to write.
    """

    def __init__(self, path: str | Path) -> None:
        """A writer of ``path``; nothing is written yet."""
        self.path = Path(path)
        self._records: list[RoundRecord] = []
        self._texts: list[str] = []
        self._settled = 0  # how many cached texts are final (all but the newest)

    def write(self, history: History) -> None:
        """Write ``history`` to the file atomically."""
        rounds = history.rounds
        same = 0
        for cached, record in zip(self._records, rounds, strict=False):
            if cached is not record:
                break
            same += 1
        keep = min(same, self._settled, max(len(rounds) - 1, 0))
        del self._records[keep:], self._texts[keep:]
        for index in range(keep, len(rounds)):
            record = rounds[index]
            self._records.append(record)
            text = json.dumps(jsonable(asdict(record)), indent=2)
            self._texts.append(textwrap.indent(text, "    "))
        self._settled = max(len(rounds) - 1, 0)
        head = json.dumps({**_head(history), "rounds": []}, indent=2)
        if self._texts:
            body = ",\n".join(self._texts)
            head = head.removesuffix("[]\n}") + f"[\n{body}\n  ]\n}}"
        atomic_write(self.path, head)
