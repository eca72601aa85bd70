"""The one seam between round logic and the network: :class:`Transport`.

The round loop never knows whether its clients are objects in this process,
worker processes, Ray actors or sites across the internet. It asks a transport
which clients are connected and hands it tasks; replies come back as an
iterator in whatever order they arrive.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from covey.core._messages import Reply, Task

LONGEST_WAIT = 3600.0
"""Seconds a transport waits for replies at once: the OS refuses waits of years (a
``round_timeout`` of ``1e12`` or ``inf``), so a longer deadline is waited out in turns."""


class ServerDiskError(OSError):
    """The server could not write what a client sent to its own disk (full, or read-only).

    No failure of the client nor of the network: a transport raises it from
    ``exchange`` or ``next_reply`` and the round loop stops the run with it,
    naming the folder and the system's error, rather than failing the clients
    or running the round again as one cut short by lost connections.
    """


@runtime_checkable
class Transport(Protocol):
    """Carries tasks to clients and their replies back.

    ``exchange`` must yield at most one :class:`Reply` per client asked, and
    should yield a ``Reply`` with ``error`` for a client it knows has failed
    (for example, disconnected). It stops when every client has answered or
    when ``timeout`` seconds have passed; clients that have not answered by then
    are treated by the loop as timed out, and anything they send later is dropped.
    """

    def clients(self) -> Sequence[int]:
        """The ids of the clients connected now."""
        ...

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send ``tasks[cid]`` to each client ``cid`` and yield replies as they arrive.

        Args:
            tasks: The task for each client, by client id.
            timeout: Seconds to wait for the replies; None waits until every client
                has answered.
        """
        ...

    def close(self) -> None:
        """Release every resource (processes, sockets, shared memory)."""
        ...
