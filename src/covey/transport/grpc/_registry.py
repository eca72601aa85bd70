"""The connection registry of the gRPC server: who is connected, under which id.

Each connected client is one :class:`Connection` (its stream's outbound queue,
the tasks it owes a reply to, whether it is still alive). The
:class:`Registry` maps client ids to live connections, gives each client name
its stable id, routes replies to whoever waits for them, and reports fleet
events (join, rejoin, leave, refused, late-reply, protocol-error).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

from covey.core._log import ON_CONSOLE
from covey.core._messages import Reply
from covey.transport._base import LONGEST_WAIT
from covey.transport.grpc._lane import cut
from covey.transport.grpc._wirecheck import NO_MODEL_REPLY_BYTES
from covey.transport.grpc._wireread import WireLimits

__all__ = [
    "CLOSE",
    "CUT_OFF",
    "FREED",
    "LEFT_KEPT",
    "NO_MODEL",
    "Connection",
    "Registry",
    "ReplyLimits",
    "ShuttingDownError",
    "Sink",
    "lost_connection",
    "peer_of",
]

logger = logging.getLogger("covey")

CLOSE = object()
"""Put on a connection's outbound queue to end its response stream."""

FREED = "covey:freed"
"""The kind of the marker reply a sink gets when a busy client it waits for is free."""

NAMED_KINDS = 10
"""The task kinds a failure names of a client that does not perform a task's kind."""

LEFT_KEPT = 1024
"""The most departed clients a registry remembers (the latest to leave), with why they left.

A fleet whose clients come and go for weeks (phones) would otherwise grow the
server's memory with every client that ever left.
"""
"""The task kinds a failure names of a client that does not perform a task's kind."""

ReplyLimits = tuple[int, WireLimits]
"""The caps on one task's reply: the most bytes of arrays, and the caps on its JSON."""

NO_MODEL: ReplyLimits = (NO_MODEL_REPLY_BYTES, WireLimits())
"""The caps on a reply to a task sent without a model (and to a task not pending)."""

_LOST = (
    "disconnected",
    "timed out (no heartbeat)",
    "replaced by a new connection",
    "lost its data connection",
    "certificate revoked",
    "certificate expired",
)


def lost_connection(error: str) -> bool:
    """Whether a task failed with ``error`` because its client's connection was lost.

    A dropped connection fails the tasks it owed with ``client <why>``: it closed,
    fell silent, gave way to the same client's new connection, lost its data
    connection, or was shut out as its certificate was revoked or expired (the
    operator's doing, not its update's: the round can go on without it). One that
    broke the protocol (``disconnected: it broke ...``) was dropped for what the
    client sent, and is no such loss.
    """
    why = error.removeprefix("client ")
    if why == error or why.startswith("disconnected: "):
        return False
    return why.startswith(_LOST)


def peer_of(context: grpc.ServicerContext) -> str:
    """The address of a stream's peer as logs and events show it: ``ipv6:[::1]:5``.

    gRPC percent-encodes the brackets of an IPv6 address (``ipv6:%5B::1%5D:5``).
    """
    return urllib.parse.unquote(str(context.peer()))


class Sink:
    """Where the replies to one exchange (or to the asynchronous loop) go."""

    __slots__ = ("open", "replies")

    def __init__(self) -> None:
        """An open sink with an empty reply queue."""
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.open = True


#: Why a reply stopped coming when gRPC gives no reason (its peer's connection died).
CUT_OFF = (
    "the connection ended without closing the stream (the client's process ended, or the "
    "network between them failed)"
)


RUN_FINISHED = "the run is over"
"""Why a client that hung up after the goodbye of a run that ended normally left."""


def left_after(goodbye: str) -> str:
    """Why a client left that hung up once told ``goodbye``: the run's end, not a drop.

    ``the run is over`` after the normal end (a line apart from the server's own ``run
    finished``, which a log watcher may wait for); after any other goodbye
    (``the run stopped: the server was interrupted``), what it was told.
    """
    if goodbye.startswith("the run is over"):
        return RUN_FINISHED
    return f"told {goodbye}"


class Connection:
    """One connected client.

    Args:
        name: The client's name (its certificate's common name under TLS).
        cid: The client's stable id.
        context: The gRPC context of its stream.
    """

    def __init__(self, name: str, cid: int, context: grpc.ServicerContext) -> None:
        """A live connection with nothing queued and no task pending."""
        self.name = name
        self.cid = cid
        self.context = context
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.pending: dict[int, tuple[Sink, str]] = {}  # task_id -> (where to, kind)
        # What a reply to each pending task may hold: the most bytes of arrays it may
        # declare, and the caps on its JSON. Both are the task's own, from the model it
        # was sent with (a task without one has the caps alone, as its client checks
        # them: ``_wirecheck.result_limits``), not those of the last model sent.
        self.limits: dict[int, ReplyLimits] = {}
        self.waiting: list[Sink] = []  # exchanges waiting for it to finish a closed round's task
        self.alive = True
        self.last_seen = time.monotonic()
        self.lock = threading.Lock()
        self.certificate: bytes | None = None  # its client certificate (PEM) under TLS
        self.kinds: frozenset[str] = frozenset()  # task kinds it said it performs
        self.peer = ""
        self.stray = 0  # replies it sent to tasks that were not pending
        self.refusal = ""  # set when it is dropped for good: its stream ends refusing it
        self.refusal_code = grpc.StatusCode.FAILED_PRECONDITION  # the status it ends with
        self.goodbye = ""  # the goodbye sent to it: a hang-up after it is no drop
        self.upload: Any = None  # the reply being received (``filled`` of ``size`` bytes)
        self.lanes: list[Any] = [None, None]  # its data connections, down and up (see _lane)
        # Set once it has opened the data connections it could (or was offered none).
        self.data_ready = threading.Event()

    def limits_of(self, task_id: int) -> ReplyLimits:
        """The caps on a reply to ``task_id``: its own, or :data:`NO_MODEL`'s if not pending."""
        with self.lock:
            return self.limits.get(task_id, NO_MODEL)

    def closed(self) -> bool:
        """Whether the connection has been dropped."""
        return not self.alive

    def lost(self, grace: float = 1.0) -> bool:
        """Whether its stream, found ended, ended because the connection itself did.

        gRPC may end the request stream of a call whose connection died (a killed
        client process) before it marks the call cancelled: a stream that ends in
        the middle of a reply is a protocol break only if the call is still up
        ``grace`` seconds later.
        """
        deadline = time.monotonic() + grace
        while self.alive and self.context.is_active():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _stale(self) -> str:
        """The kind of a task it still works on whose round closed without its reply, or ""."""
        return next((kind for sink, kind in self.pending.values() if not sink.open), "")

    def wait_until_free(self, sink: Sink) -> str:
        """If it is busy with a closed round's task, have ``sink`` told when it is free.

        Returns:
            The kind of that task ("" if the client is free now).
        """
        with self.lock:
            kind = self._stale()
            if kind:
                self.waiting.append(sink)
            return kind

    def take(self, task_id: int) -> tuple[Sink, str] | None:
        """Forget pending task ``task_id`` (answered, failed or given up); its sink and kind."""
        with self.lock:
            entry = self.pending.pop(task_id, None)
            self.limits.pop(task_id, None)
            woken: list[Sink] = []
            if self.waiting and not self._stale():
                woken, self.waiting = self.waiting, []
        for sink in woken:
            sink.replies.put(Reply(self.cid, FREED))
        return entry


class ShuttingDownError(Exception):
    """A client tried to join a registry that is closed."""


class Registry:
    """The clients connected now, by id, and the fleet events they cause.

    ``lock`` guards ``fleet`` (and whatever the transport keeps beside it);
    ``changed`` is notified whenever a client joins or leaves.

    ``left`` names the clients gone and not back, the latest :data:`LEFT_KEPT`
    of them (the oldest departures are forgotten first); ``joins`` holds the
    session of each client connected or in ``left``: a number the registry
    raises with every connection, so a client forgotten and back is never
    taken for the session it had.

    Args:
        client_id: ``name -> int``: the stable id of a client name; default:
            ids in order of first connection.
        on_event: ``(name, event, detail)`` for fleet events.
    """

    def __init__(
        self,
        client_id: Callable[[str], int] | None = None,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        """An empty, open registry."""
        ids: dict[str, int] = {}
        self.client_id = client_id or (lambda name: ids.setdefault(name, len(ids)))
        self.on_event = on_event
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.fleet: dict[int, Connection] = {}
        self.joins: dict[int, int] = {}  # cid -> the session of its latest connection
        # cid -> (name, why): gone, not back; the latest LEFT_KEPT, oldest first
        self.left: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._sessions = itertools.count(1)
        self.closed = False
        # Why the server stops on a fault of its own (its disk), if it does: replies cut
        # short from then on are not their clients' doing (see :meth:`winding_down`).
        self.stopping = ""
        # Held from a connection's (de)registration to its join (leave) event, so that a
        # client's events come in the order its connections came and went.
        self.membership = threading.RLock()

    def winding_down(self) -> bool:
        """Whether replies cut short are expected: the run is over, or the server is stopping."""
        return self.closed or bool(self.stopping)

    def clients(self) -> list[int]:
        """Ids of the clients connected now, sorted."""
        with self.lock:
            return sorted(cid for cid, c in self.fleet.items() if c.alive)

    def wait_for(self, count: int, timeout: float | None) -> bool:
        """Block until ``count`` clients are connected or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while sum(c.alive for c in self.fleet.values()) < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # In turns: the OS refuses a wait of centuries (a wait_timeout of 1e10).
                self.changed.wait(
                    LONGEST_WAIT if remaining is None else min(remaining, LONGEST_WAIT)
                )
            return True

    def add(self, conn: Connection) -> Connection | None:
        """Register a new connection; return the one it replaces (then drop that one).

        Raises:
            ShuttingDownError: The registry is closed.
        """
        with self.changed:
            if self.closed:
                raise ShuttingDownError("the server is shutting down")
            old = self.fleet.get(conn.cid)
            self.fleet[conn.cid] = conn
            self.joins[conn.cid] = next(self._sessions)
            self.left.pop(conn.cid, None)
            self.changed.notify_all()
        return old

    def join(self, conn: Connection, refusal: str, note: str = "") -> None:
        """Register ``conn`` and report it joined; a connection it replaces is dropped first.

        Args:
            conn: The new connection.
            refusal: What the connection it replaces is told, if any.
            note: Said of it after its peer in the event's detail, in parentheses
                (its covey version when it is not the server's), if any.

        Raises:
            ShuttingDownError: The registry is closed.
        """
        with self.membership:
            old = self.add(conn)
            if old is not None:
                old.refusal = refusal
                self.drop(old, "replaced by a new connection")
            detail = f"{conn.peer} ({note})" if note else conn.peer
            self.event(conn.name, "join" if old is None else "rejoin", detail)

    def close(self) -> list[Connection] | None:
        """Mark the registry closed; return the connections then, or None if it was closed."""
        with self.lock:
            if self.closed:
                return None
            self.closed = True
            return list(self.fleet.values())

    def drop(self, conn: Connection, why: str, *, names_upload: bool = False) -> None:
        """Take a connection out: fail the tasks it owes, end its stream, report it left.

        ``why`` gains the reply the drop cut short unless ``names_upload`` says it
        names that reply already.
        """
        if why == "disconnected" and conn.goodbye:  # it hung up as told: the run ended
            why = left_after(conn.goodbye)
        with self.membership:
            with self.changed:
                if not conn.alive:
                    return
                conn.alive = False
                if self.fleet.get(conn.cid) is conn:
                    del self.fleet[conn.cid]
                    self._departed(conn, why)
                self.changed.notify_all()
            upload = conn.upload
            if upload is not None and not names_upload:
                why += f" in the middle of its reply ({upload.filled} of {upload.size} bytes"
                why += " received)"
            self.event(conn.name, "leave", why)
        with conn.lock:
            pending = list(conn.pending.items())
            conn.pending.clear()
            waiting, conn.waiting = conn.waiting, []
        for _, (sink, kind) in pending:
            if sink.open:  # a closed round gave up on it: no reply came, late or not
                sink.replies.put(Reply(conn.cid, kind, error=f"client {why}"))
        for sink in waiting:  # their tasks find it gone
            sink.replies.put(Reply(conn.cid, FREED))
        conn.outbound.put(CLOSE)
        for lane in conn.lanes:  # a read or a write blocked on one ends at once
            cut(lane)
        conn.data_ready.set()
        if not conn.refusal:  # a refused stream is ended by its own handler, with the reason
            with contextlib.suppress(Exception):
                conn.context.cancel()
        logger.info("client %s (%d) left: %s", conn.name, conn.cid, why, extra=ON_CONSOLE)

    def _departed(self, conn: Connection, why: str) -> None:
        """Remember that ``conn``'s client left, forgetting the oldest departures beyond the cap.

        Called with ``lock`` held.
        """
        self.left.pop(conn.cid, None)
        self.left[conn.cid] = (conn.name, why)
        while len(self.left) > LEFT_KEPT:
            cid, _ = self.left.popitem(last=False)
            if cid not in self.fleet:
                self.joins.pop(cid, None)

    def route(self, sink: Sink, reply: Reply, name: str) -> None:
        """Hand a reply to its sink, or discard it (and say so) if the sink is closed."""
        if sink.open:
            sink.replies.put(reply)
        else:
            logger.log(
                logging.INFO if self.stopping else logging.WARNING,
                "discarding a late %s reply from client %s (its round is over)",
                reply.kind,
                name,
            )
            self.event(name, "late-reply", reply.kind)

    def late(self, conn: Connection, task_id: int, kind: str, size: int) -> None:
        """Report a reply that began after its round closed (a straggler's), to be skipped.

        Logged at INFO: the round has already warned of the client (no reply in
        time), and a fleet of stragglers would otherwise add a warning each. A
        reply without bytes to skip frees its client at once.
        """
        logger.info(
            "discarding a late %s reply from client %s (task %d, %d bytes): its round is over",
            kind,
            conn.name,
            task_id,
            size,
        )
        detail = f"task {task_id}: its reply ({size} bytes) came after its round closed"
        self.event(conn.name, "late-reply", f"{detail} (peer {conn.peer})")
        if not size:
            conn.take(task_id)

    def unable(self, conn: Connection, task_id: int, kind: str, error: str = "") -> None:
        """Fail for a client a task it cannot be sent: of a kind it does not perform, say."""
        entry = conn.take(task_id)
        if entry is not None:
            if not error:
                kinds = sorted(conn.kinds)
                listed = ", ".join(kinds[:NAMED_KINDS])
                if len(kinds) > NAMED_KINDS:  # the error is recorded and shown every round
                    listed += f" and {len(kinds) - NAMED_KINDS} more"
                error = f"client {conn.name} does not perform {kind!r} tasks (it performs: "
                error += f"{listed})"
            self.route(entry[0], Reply(conn.cid, kind, error=error), conn.name)

    def stray(self, conn: Connection, task_id: int, size: int) -> None:
        """Report a reply to a task that is not pending (its ``size`` bytes to be skipped)."""
        conn.stray += 1
        if conn.stray & (conn.stray - 1) == 0:  # the 1st, 2nd, 4th, ...: never a flood
            logger.warning(
                "client %s (%s) replied to task %d, which is not pending; skipping its %d "
                "bytes (%d such replies from it so far)",
                conn.name,
                conn.peer,
                task_id,
                size,
                conn.stray,
            )

    def abandoned(self, conn: Connection, task_id: int, filled: int, size: int) -> None:
        """Report a reply whose round closed with ``filled`` of its ``size`` bytes in.

        Once the run is over, or while the server stops on a fault of its own (its
        disk), replies still on their way are expected: logged at INFO, not blamed on
        their clients.
        """
        closed = "(its round or the run)"
        if self.stopping:
            closed = f"as the server stops on its own failure ({self.stopping})"
        logger.log(
            logging.INFO if self.winding_down() else logging.WARNING,
            "client %s (%s): task %d closed %s with its reply %d of %d bytes in; skipping the rest",
            conn.name,
            conn.peer,
            task_id,
            closed,
            filled,
            size,
        )
        self.event(
            conn.name,
            "late-reply",
            f"task {task_id}: {filled} of {size} bytes when its round closed (peer {conn.peer})",
        )

    def event(self, name: str, event: str, detail: str = "") -> None:
        """Report a fleet event; a failing recorder is logged, never raised."""
        record = self.on_event
        if record is not None:
            try:
                record(name, event, detail)
            except Exception:
                if not self.closed:
                    logger.exception("recording fleet event %s for %s failed", event, name)
