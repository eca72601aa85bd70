"""Quiet one kind of warning while some work runs, safely from several threads.

``warnings.catch_warnings`` saves the process's filter list on entry and puts
that copy back on exit. Two of them overlapping in two threads (two simulations
in one process, a client's fit beside the application's own code) undo each
other: the one that exits last restores a list holding the other's filter, which
then stays for the rest of the process, and any filter the application added
meanwhile is lost.

:func:`ignoring` instead adds one filter of its own at the front of the list
while any thread needs it, and on the way out removes that filter alone, by
identity, leaving every other filter (the application's, added before or
during the work) as it is. While it is in place the filter holds for the whole
process, as any warning filter does; it only ever drops the warning it names.
Where Python keeps warning filters per thread and context
(``sys.flags.context_aware_warnings``), ``catch_warnings`` is safe and is used.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, cast

_lock = threading.Lock()
# (category, message) -> [the filter in warnings.filters, how many users hold it]
_held: dict[tuple[type[Warning], str], list[Any]] = {}


@contextlib.contextmanager
def ignoring(category: type[Warning] = Warning, message: str = "") -> Iterator[None]:
    """Ignore warnings of ``category`` (whose text starts with ``message``) while the block runs.

    Args:
        category: The warning class to drop (subclasses included).
        message: A regular expression the start of the warning's text must match
            (case-insensitive, as in ``warnings.filterwarnings``); empty matches all.
    """
    if getattr(sys.flags, "context_aware_warnings", False):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=message, category=category)
            yield
        return
    key = (category, message)
    with _lock:
        entry = _held.get(key)
        if entry is None:
            item = ("ignore", re.compile(message, re.I) if message else None, category, None, 0)
            entry = _held[key] = [item, 0]
            _filters().insert(0, item)
            _changed()
        entry[1] += 1
    try:
        yield
    finally:
        with _lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                filters = _filters()
                for i, other in enumerate(filters):
                    if other is entry[0]:
                        del filters[i]
                        _changed()
                        break


def _filters() -> list[Any]:
    """The process's warning filters, the list itself (typeshed calls it a Sequence)."""
    return cast("list[Any]", warnings.filters)


def _changed() -> None:
    """Tell the warnings machinery its filters changed (it caches what it has shown)."""
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
