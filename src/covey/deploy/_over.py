"""A resumed run with no round left: its returning clients are told the run is over.

A server killed after saving its last round, before marking the run finished,
is resumed with nothing to train. Its clients, reconnecting meanwhile, would
find no server once it stopped at once, retry for ``--retry-for`` and exit 1
("start me again"), which a service manager does for ever. So the resumed
server keeps listening a little while: each client it knows that comes back
is told, as at any run's end, that the run is over, and exits 0.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from typing import Protocol

from covey.server._refusednote import refused_note

logger = logging.getLogger("covey")

TELL_FOR = 60.0
"""Seconds at most a resumed run with no round left waits for its clients to come back:
twice a client's longest pause between attempts to reconnect (30 s)."""


class _Waits(Protocol):
    def wait_for_clients(self, count: int, timeout: float | None) -> bool: ...


def tell_returning_clients(
    over: bool,
    transport: _Waits,
    known: Collection[object],
    max_clients: int,
    wait_timeout: float | None,
    last: int,
    step: str = "round",
) -> None:
    """Wait until every client the run knows is back (or a while passes), to tell them.

    They are told as the transport closes. Ctrl-C (or SIGTERM) ends the wait: the
    run is finished all the same.

    Args:
        over: Whether the run was resumed with no round left; if not, nothing is done.
        transport: The listening transport.
        known: The clients the run recorded.
        max_clients: Most clients connected at once.
        wait_timeout: The run's wait for clients; the wait is at most this and
            :data:`TELL_FOR`.
        last: The run's last round.
        step: What a round number counts: ``"round"``, or ``"update"`` when asynchronous.
    """
    count = min(len(known), max_clients)
    if not over or count == 0:
        return
    timeout = TELL_FOR if wait_timeout is None else min(TELL_FOR, wait_timeout)
    logger.warning(
        "the run was over already (%s %d was its last): telling the %d client(s) it knows "
        "so as they come back, for up to %.0f s (Ctrl-C to stop now)",
        step,
        last,
        count,
        timeout,
    )
    with contextlib.suppress(KeyboardInterrupt):
        if not transport.wait_for_clients(count, timeout):
            said = refused_note(transport)  # a client refused cannot be told
            logger.info("not every client came back within %.0f s%s", timeout, said)
