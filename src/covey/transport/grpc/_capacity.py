"""The server's cap on clients at once: a stream past it is refused, logged and recorded.

Each ``Federation.Join`` stream takes one of the server's ``max_clients``
slots from the moment it opens (before it says ``Hello``) until it ends. A
stream that finds every slot taken is refused with ``RESOURCE_EXHAUSTED`` and
a message saying the server is full, which the client retries with its
backoff. The operator sees it: the first refusal is logged and recorded as a
``refused`` event of the run, then at most one line and one event per
:data:`REPORT_SECONDS` (with the count of the refusals in between), so a
thousand clients knocking at a full server do not flood the log or the run's
events.

gRPC's own cap on concurrent calls stays above this one (by :data:`SPARE`
streams) as a backstop: it refuses without a word (``Concurrent RPC limit
exceeded!``), so covey's cap is the one a client normally meets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from covey.core._text import clients
from covey.transport.grpc._registry import peer_of

__all__ = ["FULL", "REPORT_SECONDS", "SPARE", "Capacity", "full_message"]

logger = logging.getLogger("covey")

REPORT_SECONDS = 10.0  # one log line and event at most this often
SPARE = 16  # streams gRPC lets past covey's cap, so that covey can refuse them in words

#: The start of what a client is told when the server has no slot for it.
FULL = "the server is full"


def full_message(most: int) -> str:
    """What a client is told (and the operator reads) when all ``most`` slots are taken."""
    return (
        f"{FULL}: it serves at most {clients(most)} at once (serve(max_clients=...), "
        "covey server --max-clients); "
        "the client retries"
    )


class Capacity:
    """At most ``most`` streams at once; refusals past it logged and recorded, rate-limited.

    Args:
        most: Most streams served at once.
        on_event: ``(name, event, detail)``: where refusals are recorded.
    """

    def __init__(self, most: int, on_event: Callable[[str, str, str], None]) -> None:
        """No stream served yet."""
        self.most = most
        self.on_event = on_event
        self._lock = threading.Lock()
        self._open = 0
        self._last = -REPORT_SECONDS  # when the last refusal was reported
        self._suppressed = 0  # refusals since then, not reported

    @property
    def open(self) -> int:
        """How many streams hold a slot now."""
        with self._lock:
            return self._open

    def take(self, context: grpc.ServicerContext) -> bool:
        """Take a slot for the stream of ``context``; False (reported) when there is none."""
        with self._lock:
            if self._open < self.most:
                self._open += 1
                return True
            now = time.monotonic()
            if now - self._last < REPORT_SECONDS:
                self._suppressed += 1
                return False
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        peer = peer_of(context)
        names = context.auth_context().get("x509_common_name") or [b""]
        # By host, not host:port: each attempt comes from a new port, and the run's
        # events (the dashboard's clients) would gain a name per refusal.
        name = names[0].decode(errors="replace") or peer.rpartition(":")[0] or peer
        more = f" ({suppressed} more refused since the last report)" if suppressed else ""
        detail = f"{full_message(self.most)}{more} (peer {peer})"
        logger.warning("refused %s from %s: %s", name, peer, detail)
        self.on_event(name, "refused", detail)
        return False

    def give_back(self) -> None:
        """A stream that held a slot ended."""
        with self._lock:
            self._open -= 1
