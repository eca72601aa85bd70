"""The task a client is performing: its id and round, for code that runs inside ``fit``.

The runtime (:func:`covey.clients.run_task`) sets it around each task, in the
thread the client runs in, whichever backend or transport called it: the
inline, process and Ray backends and a deployed client alike. Code a client
calls, such as :class:`covey.privacy.DPSGD`, reads it to know which client and
which round it trains for when it is not told.

It holds a plain ``(cid, round)`` tuple, set and put back around each task: the
simulation's inner loop pays for it on every client and round, and building a
named tuple there cost more than the rest of it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import NamedTuple, TypeVar

_T = TypeVar("_T")


class TaskContext(NamedTuple):
    """The client's id as the runtime knows it and the task's round (0 outside rounds).

    The id is the simulation's ``cid`` (the one ``client_fn`` was given), or the
    id a deployed server gave the client's name (the same across that run and
    its resumes).
    """

    cid: int
    round: int


TASK: ContextVar[tuple[int, int] | None] = ContextVar("covey_task", default=None)
"""The calling code's ``(cid, round)``, None outside a task; the runtime sets it."""


def current_task() -> TaskContext | None:
    """The task the calling code runs in, or None outside one (a ``fit`` called directly)."""
    task = TASK.get()
    return None if task is None else TaskContext(*task)


def within(cid: int, round: int, call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)`` with :func:`current_task` telling client ``cid`` and ``round``."""
    token = TASK.set((cid, round))
    try:
        return call(*args)
    finally:
        TASK.reset(token)
