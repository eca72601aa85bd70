"""Bytes of an asynchronous run's exchanges, counted as tasks leave and replies arrive.

A served asynchronous run (FedBuff over the network) sends single tasks and
takes replies one at a time through an :class:`~covey.transport.AsyncTransport`;
:class:`CountedAsyncTransport` wraps it and counts the array bytes both ways,
as :class:`~covey.compress.CompressedTransport` counts a synchronous round's.
"""

from __future__ import annotations

from typing import Any

from covey.compress._runtime import CountingWrapper, _result_nbytes, _task_nbytes
from covey.core._messages import Reply, Task


class CountedAsyncTransport(CountingWrapper):
    """An asynchronous transport whose tasks and replies are counted in bytes.

    Counted are the arrays of each task submitted (the weights and the arrays
    sent besides them) and of each reply taken (its weights or delta and
    extras); :meth:`take_counts` hands over what was counted since its last
    call, which a run records in each global update. A task later cancelled was
    sent all the same and stays counted; a failed reply carries no arrays.

    Args:
        inner: The transport that reaches the clients.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bytes_sent = 0
        self.bytes_received = 0

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Send ``task`` to ``cid`` through the inner transport and count its arrays."""
        self.inner.submit(cid, task, timeout=timeout)
        self.bytes_sent += _task_nbytes(task)

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        """The inner transport's next reply, its arrays counted."""
        reply: Reply | None = self.inner.next_reply(timeout)
        if reply is not None and reply.error is None and reply.result is not None:
            self.bytes_received += _result_nbytes(reply.result)
        return reply

    def cancel(self, cid: int) -> None:
        """Forget ``cid``'s task in flight (its bytes, sent, stay counted)."""
        self.inner.cancel(cid)

    def now(self) -> float:
        """Seconds on the inner transport's clock."""
        return float(self.inner.now())

    def close(self, *args: Any, **kwargs: Any) -> None:
        """Close the inner transport (with whatever it takes, e.g. a reason)."""
        self.inner.close(*args, **kwargs)
