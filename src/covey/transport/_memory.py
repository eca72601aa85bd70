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
        """Call the handler for each task in client-id order, yielding each reply.

        The clients run one after another here, standing in for clients that would
        run at the same time: ``timeout`` bounds each client's own call, and the
        reply of a client that took longer is replaced by a timeout error, as a
        reply arriving after the deadline over a network would be dropped. (A
        deadline for the whole round would let a slow client through and blame
        the clients after it, which never got to run.)

        Args:
            tasks: The task for each client, by client id.
            timeout: Seconds each client's call may take; None: no limit.
        """
        handler, clock = self._handler, time.monotonic
        for cid in sorted(tasks):
            task = tasks[cid]
            start = clock() if timeout is not None else 0.0
            try:
                reply = handler(cid, task)
            except Exception:  # noqa: BLE001 - the handler's error is that client's reply
                reply = Reply(cid, task.kind, error=traceback.format_exc())
            if timeout is not None and (took := clock() - start) > timeout:
                reply.release()
                reply = Reply(
                    cid,
                    task.kind,
                    error=f"no reply in time: its {task.kind} task took {took:.3g} s, "
                    f"past the timeout of {timeout:g} s",
                )
            yield reply
            del reply  # not kept while the next client runs

    def close(self) -> None:
        """Nothing to release."""
