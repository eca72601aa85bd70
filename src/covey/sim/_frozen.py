"""Keep the garbage collector off the objects a simulation finds alive, and give them back.

A run allocates many short-lived objects; each collection of the oldest
generation would scan everything already alive (imported libraries, the
user's data) again and again. :func:`freeze` moves those objects to the
permanent generation for the run (:func:`gc.freeze`), and :func:`thaw` moves
them back after it.

The permanent generation is the process's, not the run's: an application
that froze its own objects (a pre-fork server keeping its pages shared with
its workers) must find them frozen after a simulation, and two simulations
in two threads share one freeze. So the objects are frozen only when nothing
is frozen yet (beyond the interpreter's own, see :mod:`covey.core._gcstart`),
and given back when the last simulation that froze them ends.
"""

from __future__ import annotations

import gc
import threading

from covey.core import _gcstart

_lock = threading.Lock()
_runs = 0  # simulations running under the freeze this module made
_ours = False  # whether the objects in the permanent generation were frozen here


def freeze() -> None:
    """Freeze the objects alive now, unless the permanent generation already holds some.

    Each call is paired with one :func:`thaw` when the run ends, however it ends.
    """
    global _runs, _ours
    with _lock:
        if _runs == 0:
            _ours = not _gcstart.others_frozen()  # the interpreter's own do not count
            if _ours:
                gc.freeze()
        _runs += 1


def thaw() -> None:
    """End one run's freeze: the last run to end gives back what :func:`freeze` froze."""
    global _runs, _ours
    with _lock:
        _runs -= 1
        if _runs == 0 and _ours:
            gc.unfreeze()
            _ours = False
