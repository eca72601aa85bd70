"""Pacing the process backend's workers by the replies the server has not folded yet.

The server folds replies in client-id order, so a reply that arrives before
a lower client's is held (mapped) until that one is in. Unpaced, a worker
runs its next client while its earlier replies wait, and each large reply is
one more model-sized file: a slow client 0 in a round of 100 clients of a
400 MB model could leave the server holding 99 of them. Paced, a worker
starts its next client only while the replies it sent and the server has not
yet let go of total less than a budget (``max_waiting_bytes``, 32 MiB by
default); so a model over the budget is held at most once per worker.

The server gives a reply's credit back once, at the first of: the round loop
calling :meth:`Reply.release` after folding it (even if the aggregation
keeps its arrays, as Krum does: its memory is the rule's own), the reply's
mapping being freed, or the reply being discarded (late or unreadable).
Replies that travel in the message itself (256 kB and less) are not counted.

A waiting worker tells the server so, with the number of credits it has
taken. When every worker the server still waits for is waiting, and none has
a message ready, the consumer of the replies is holding them without
releasing (a strategy of the user's own, say): the server then gives each a
credit, so the round always goes on; pacing can only slow a round, never
stall it.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from covey.core._messages import Reply

__all__ = ["DEFAULT_BUDGET", "Credit", "PacedReply", "Pacer", "is_wait", "waited_at"]

#: Bytes of unfolded replies a worker may have at the server and still start a client.
DEFAULT_BUDGET = 32 * 1024 * 1024

_WAIT = b"wait"
_COUNT = struct.Struct(">Q")


def is_wait(data: bytes) -> bool:
    """Whether a worker's message says it waits for credit (not a reply, not logs)."""
    return len(data) == len(_WAIT) + _COUNT.size and data[: len(_WAIT)] == _WAIT


def waited_at(data: bytes) -> int:
    """The number of credits a waiting worker had taken when it sent ``data``."""
    return int(_COUNT.unpack_from(data, len(_WAIT))[0])


class Pacer:
    """The worker's side: counts its file replies and waits for their credits.

    Args:
        credits: A semaphore the server releases once per reply it let go of.
        budget: Bytes of unfolded replies allowed before the next client runs.
        conn: The worker's pipe (to say it waits, and to see the server moved on).
        send: Sends one message to the server (under the worker's send lock).
    """

    def __init__(
        self, credits: Any, budget: int, conn: Connection, send: Callable[[bytes], None]
    ) -> None:
        self._credits = credits
        self._budget = budget
        self._conn = conn
        self._send = send
        self._owed: deque[int] = deque()
        self._taken = 0

    def sent(self, size: int) -> None:
        """A reply went out; ``size`` is its file's size (0: it travelled in the message)."""
        if size:
            self._owed.append(size)

    def wait(self) -> None:
        """Return once the replies still unfolded total less than the budget.

        Returns at once, unpaced, if a message from the server is waiting: it
        moved on from this exchange (a stop, or the next round after a timeout).
        """
        told = False
        while self._owed and sum(self._owed) >= self._budget:
            if not self._credits.acquire(block=False):
                if not told:
                    self._send(_WAIT + _COUNT.pack(self._taken))
                    told = True
                while not self._credits.acquire(timeout=0.1):
                    if self._conn.poll():
                        return
            self._taken += 1
            self._owed.popleft()


class Credit:
    """The server's side of one file reply: gives its worker one credit, once.

    Args:
        give: Releases one credit to the reply's worker.
    """

    __slots__ = ("__weakref__", "_give")

    def __init__(self, give: Callable[[], None]) -> None:
        self._give: Callable[[], None] | None = give

    def __call__(self) -> None:
        give, self._give = self._give, None
        if give is not None:
            give()


class PacedReply(Reply):
    """A reply whose :meth:`release` (after the round loop folds it) gives its credit back."""

    __slots__ = ("_credit",)
    _credit: Credit

    def __init__(self, reply: Reply, credit: Credit) -> None:
        super().__init__(reply.cid, reply.kind, reply.result, reply.error)
        object.__setattr__(self, "_credit", credit)

    def release(self) -> None:
        """Give the worker its credit: the reply is folded."""
        self._credit()
