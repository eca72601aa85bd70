"""Streams that have not said Hello yet: each gets a few seconds, and only so many wait at once.

A ``Federation.Join`` stream holds one of the server's ``max_clients`` slots
(and a thread) from the moment it opens, before the server knows who is on
the other end. A peer that opens streams and never sends ``Hello`` would hold
every slot for as long as it likes, and honest clients would be refused
(``RESOURCE_EXHAUSTED``) for the whole run. So a stream must send its first
frame within :data:`HELLO_SECONDS`, and at most :data:`MOST_WAITING` streams
wait for it at once: a new stream past that cancels the one that has waited
longest. An honest client sends ``Hello`` as it opens the stream, so it waits
for microseconds and is never the oldest; a peer that parks streams loses
them, and identified clients keep the remaining slots. Under mutual TLS the
certificate names a stream before it says anything, and at most
:data:`MOST_PER_CERTIFICATE` streams of one certificate wait at once: a
certificate holder parking streams pushes out only its own.

Each refusal is logged with the peer's address and recorded as a ``refused``
event, at most once per :data:`REPORT_SECONDS` per peer host (with the count
of the ones in between), so that a flood of streams cannot flood the log or
the run's events.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from covey.transport.grpc._registry import peer_of

__all__ = ["HELLO_SECONDS", "MOST_PER_CERTIFICATE", "MOST_WAITING", "Greeting"]

logger = logging.getLogger("covey")

HELLO_SECONDS = 10.0  # a stream must send its first frame within this
MOST_WAITING = 64  # streams waiting for their first frame at once
MOST_PER_CERTIFICATE = 4  # of them under one client certificate (mutual TLS)
REPORT_SECONDS = 10.0  # one log line and event per peer host at most this often


class _Waiting:
    """One stream waiting for its first frame."""

    __slots__ = ("certified", "context", "name", "peer", "why")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.peer = peer_of(context)
        # Under mutual TLS the certificate names the peer before it says anything.
        names = context.auth_context().get("x509_common_name") or [b""]
        self.certified = bool(names[0])  # a certificate without a common name names no one
        self.name = names[0].decode(errors="replace") or self.peer
        self.why = ""


class Greeting:
    """The first frame of each stream, within a deadline and a cap on streams waiting for one.

    Args:
        on_event: ``(name, event, detail)``: where refusals are recorded (the
            registry's ``event``); the name is the certificate's under mutual
            TLS, else the peer's host (without the port).
        timeout: Seconds a stream has to send its first frame.
        most: Most streams waiting for a first frame at once.
    """

    def __init__(
        self,
        on_event: Callable[[str, str, str], None],
        timeout: float = HELLO_SECONDS,
        most: int = MOST_WAITING,
    ) -> None:
        """No stream waiting yet."""
        self.on_event = on_event
        self.timeout = timeout
        self.most = most
        self.most_per_peer = MOST_PER_CERTIFICATE
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: collections.OrderedDict[int, _Waiting] = collections.OrderedDict()
        self._reported: dict[str, tuple[float, int]] = {}  # host -> (last report, suppressed)

    @property
    def waiting(self) -> int:
        """How many streams wait for their first frame now."""
        with self._lock:
            return len(self._waiting)

    def first_frame(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes | None:
        """The stream's first frame; None if it ended, was too slow, or was pushed out."""
        entry = _Waiting(context)
        key = next(self._ids)
        with self._lock:
            self._waiting[key] = entry
            evicted = self._evict(entry)
        for oldest in evicted:
            oldest.context.cancel()
        timer = threading.Timer(self.timeout, self._expire, (key,))
        timer.daemon = True
        timer.start()
        try:
            frame: bytes | None = next(requests)
        except (StopIteration, grpc.RpcError):
            frame = None
        finally:
            timer.cancel()
            with self._lock:
                self._waiting.pop(key, None)
        if entry.why:
            self._report(entry)
            return None
        return frame

    def _evict(self, new: _Waiting) -> list[_Waiting]:
        """Take out the streams ``new`` pushes out (the lock held): its own peer's first."""
        evicted: list[_Waiting] = []
        if new.certified:
            mine = [k for k, w in self._waiting.items() if w.certified and w.name == new.name]
            for k in mine[: max(0, len(mine) - self.most_per_peer)]:
                oldest = self._waiting.pop(k)
                oldest.why = (
                    f"sent no Hello while {self.most_per_peer} newer streams of the same "
                    "certificate opened (one client needs one stream)"
                )
                evicted.append(oldest)
        while len(self._waiting) > self.most:
            _, oldest = self._waiting.popitem(last=False)
            oldest.why = (
                f"sent no Hello while {self.most} newer streams opened "
                "(too many streams waiting to identify themselves)"
            )
            evicted.append(oldest)
        return evicted

    def _expire(self, key: int) -> None:
        """Cancel stream ``key`` if it still waits for its first frame."""
        with self._lock:
            entry = self._waiting.pop(key, None)
        if entry is not None:
            entry.why = f"sent no Hello within {self.timeout:g} s of opening its stream"
            entry.context.cancel()

    def refuse(self, context: grpc.ServicerContext, why: str) -> None:
        """Log and record a stream refused for its first frame, as those refused here are."""
        entry = _Waiting(context)
        entry.why = why
        self._report(entry)

    def _report(self, entry: _Waiting) -> None:
        """Log and record a refused stream, at most once per REPORT_SECONDS per peer host."""
        host = entry.peer.rpartition(":")[0] or entry.peer
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._reported.get(host, (-REPORT_SECONDS, 0))
            if now - last < REPORT_SECONDS:
                self._reported[host] = (last, suppressed + 1)
                return
            if len(self._reported) > 4096:
                self._reported.clear()
            self._reported[host] = (now, 0)
        more = f" ({suppressed} more such streams from {host} since the last report)"
        detail = f"{entry.why}{more if suppressed else ''} (peer {entry.peer})"
        logger.warning("refused a stream of %s from %s: %s", entry.name, entry.peer, detail)
        # Uncertified, by host: each stream has a port of its own, and the run's events
        # (the dashboard's clients) would gain a name per report.
        self.on_event(entry.name if entry.certified else host, "refused", detail)
