"""The byte counting shared by the transports that wrap another to count and compress.

:class:`CountingWrapper` is the part of :class:`~covey.compress.CompressedTransport`
(a synchronous round's exchanges) and of
:class:`~covey.compress._counted.CountedAsyncTransport` (an asynchronous run's
single tasks) that hands on what the inner transport offers; the functions give
the array bytes of a task and of a reply as both count them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from covey.compress._schemes import Encoded
from covey.core._messages import FitResult, Task, fit_nbytes
from covey.core._weights import Weights


def _nbytes(weights: Weights | None) -> int:
    return 0 if weights is None else sum(int(a.nbytes) for a in weights.values())


def task_nbytes(task: Task) -> int:
    """The bytes of a task's arrays: its weights, and a fit task's arrays sent besides them."""
    extras = task.payload if task.kind == "fit" and task.payload else {}
    return _nbytes(task.weights) + sum(_nbytes(w) for w in extras.values())


def result_nbytes(result: Any) -> int:
    """The bytes of a reply's arrays: an encoded update's parts, a fit result's, a mapping's."""
    if isinstance(result, Encoded):
        return result.nbytes
    if isinstance(result, FitResult):
        return fit_nbytes(result)
    if isinstance(result, Mapping):  # a protocol's reply, e.g. secure aggregation's masked vector
        return sum(int(v.nbytes) for v in result.values() if isinstance(v, np.ndarray))
    return 0


class CountingWrapper:
    """A transport around ``inner`` that counts array bytes: what it hands on as it is.

    Subclasses set ``inner``, ``bytes_sent`` and ``bytes_received``.
    """

    inner: Any
    bytes_sent: int
    bytes_received: int

    def clients(self) -> Sequence[int]:
        """The inner transport's clients."""
        clients: Sequence[int] = self.inner.clients()
        return clients

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        """Wait for ``count`` clients, if the inner transport waits (a network's does)."""
        wait = getattr(self.inner, "wait_for_clients", None)
        return True if wait is None else bool(wait(count, timeout))

    @property
    def joins(self) -> Callable[[int], int] | None:
        """The inner transport's ``joins(cid)``; None for simulated clients (they never rejoin)."""
        joins: Callable[[int], int] | None = getattr(self.inner, "joins", None)
        return joins

    def refused(
        self, cid: int, rnd: int, reason: str, *, stage: str = "fit", unit: str = ""
    ) -> None:
        """Tell client ``cid`` its reply of round ``rnd`` was refused, where the inner one can."""
        tell = getattr(self.inner, "refused", None)
        if tell is not None:  # a network's: a simulated client has no operator to tell
            tell(cid, rnd, reason, stage=stage, unit=unit)

    def take_counts(self) -> tuple[int, int]:
        """``(bytes sent, bytes received)`` since the last call, and reset them."""
        counts = (self.bytes_sent, self.bytes_received)
        self.bytes_sent = self.bytes_received = 0
        return counts
