"""The in-memory transport: clients are a plain function in this process."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence

from covey.core._messages import Reply, Task

Handler = Callable[[int, Task], Reply]


class MemoryTransport:
    """Delivers each task by calling ``handler(cid, task)`` in this process.

    No serialization and no threads: replies are produced lazily, one client at
    a time in client-id order, as the round loop consumes them, so the loop
    folds each reply into the aggregate before the next client even runs.

    Args:
        clients: The ids of the clients this transport serves.
        handler: ``(cid, task) -> Reply``; an exception it raises becomes a failed Reply.

    Example:
        >>> from covey.core import Reply, Task
        >>> t = MemoryTransport([0, 1], lambda cid, task: Reply(cid, task.kind, result=cid))
        >>> [r.result for r in t.exchange({1: Task("ping", 0), 0: Task("ping", 0)})]
        [0, 1]
    """

    def __init__(self, clients: Sequence[int], handler: Handler) -> None:
        self._clients = clients
        self._handler = handler

    def clients(self) -> Sequence[int]:
        """The ids of the clients served."""
        return self._clients

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Call the handler for each task in client-id order, yielding each reply."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for cid in sorted(tasks):
            if deadline is not None and time.monotonic() > deadline:
                return
            task = tasks[cid]
            try:
                reply = self._handler(cid, task)
            except Exception:  # noqa: BLE001 - the handler's error is that client's reply
                reply = Reply(cid, task.kind, error=traceback.format_exc())
            yield reply

    def close(self) -> None:
        """Nothing to release."""
