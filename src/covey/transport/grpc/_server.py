"""The server side of the gRPC transport: clients dial in, the server pushes tasks.

:class:`GrpcServerTransport` is the transport API the round loops use
(``clients``, ``exchange``, ``submit``, ``next_reply``, ``close``). The clients
it talks to are kept by the connection registry (:mod:`._registry`) and served
by the gRPC service (:mod:`._service`). The global weights of a round are
encoded once and every client's chunks are slices of that one buffer.
"""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import Weights, WeightsSpec
from covey.transport._base import LONGEST_WAIT, ServerDiskError
from covey.transport.grpc import _wire
from covey.transport.grpc._checks import check_address, check_heartbeat
from covey.transport.grpc._lane import DataPort, cut
from covey.transport.grpc._listen import ListenError
from covey.transport.grpc._registry import CLOSE, FREED, NO_MODEL, Registry, ReplyLimits, Sink
from covey.transport.grpc._service import SILENCE, FederationService, ServerTLS, start_server
from covey.transport.grpc._stream import MAX_INFLIGHT_BYTES
from covey.transport.grpc._told import refusal_frame
from covey.transport.grpc._wirecheck import reply_limit

__all__ = ["DataPortError", "GrpcServerTransport", "ServerTLS"]

logger = logging.getLogger("covey")


class DataPortError(ListenError):
    """The data port cannot be listened on (taken, say)."""


def _busy(kind: str) -> str:
    """Why a client still working on a task of a closed round was not sent this one."""
    return (
        f"busy: still working on its {kind} task of an earlier round when this one "
        "closed (a client runs one task at a time)"
    )


def _busy_now(kind: str) -> str:
    """Why a client still working on a task of a closed exchange was not sent an evaluate task."""
    return (
        f"busy: still working on its {kind} task, whose time ran out, when this evaluation "
        "began, so it was not asked to evaluate (a client runs one task at a time)"
    )


_HELD = (
    "busy: still working on an earlier task when this one's time ran out, so it was never "
    "sent (a client runs one task at a time)"
)


def task_limits(task: Task, blob: _codec.Encoded | None) -> ReplyLimits:
    """The caps on the reply to ``task``, sent with ``blob`` (its weights, encoded).

    They are the task's own: a reply is read against the model it answers, not
    the one sent last (another client's, in an exchange of personal models, or a
    later one in an asynchronous run). A task without a model has the caps alone.
    """
    if not task.weights or blob is None:
        return NO_MODEL
    spec = WeightsSpec.of(task.weights)
    return reply_limit(len(blob), spec), _wire.WireLimits.for_spec(spec)


class GrpcServerTransport:
    """A :class:`~covey.transport.Transport` whose clients connect over gRPC.

    Args:
        address: ``host:port`` to listen on (port 0 picks a free one).
        tls: TLS material; None means insecure (for local experiments only).
        client_id: ``name -> int``: the stable id of a client name (e.g. a run
            store's registry); default: ids in order of first connection.
        on_event: ``(name, event, detail)`` for fleet events (join, leave, ...).
        heartbeat: Seconds between heartbeats; a client silent for six is dropped.
        max_clients: Most clients connected at once.
        max_inflight: Most bytes of replies being received at once, over all clients.
        data_port: A TCP port (0: a free one) on which clients move the arrays of tasks
            and replies as raw bytes beside their gRPC streams (see ``_lane``); None
            to send them as chunk frames on the streams. Under TLS it has TLS too.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: ServerTLS | None = None,
        client_id: Callable[[str], int] | None = None,
        on_event: Callable[[str, str, str], None] | None = None,
        heartbeat: float = 5.0,
        max_clients: int = 1000,
        max_inflight: int = MAX_INFLIGHT_BYTES,
        data_port: int | None = None,
    ) -> None:
        """Start listening on ``address``; clients may connect at once."""
        check_heartbeat(heartbeat)  # a client refuses a Welcome stating another
        if data_port is not None and (
            type(data_port) is not int or not 0 <= data_port <= 65535  # bool refused too
        ):
            raise ValueError(f"data_port must be a port number (0 to 65535), got {data_port!r}")
        self._registry = Registry(client_id, on_event)
        self._lock = self._registry.lock
        self._fleet = self._registry.fleet
        self._task_ids = itertools.count(1)
        self._async = Sink()
        # cid -> (task_id, kind, deadline) of tasks submitted asynchronously
        self._inflight: dict[int, tuple[int, str, float | None]] = {}
        # cid -> (task_id, task, weights) submitted while it was busy: sent once it is free
        self._deferred: dict[int, tuple[int, Task, _codec.Encoded | None]] = {}
        # Clients whose latest task never left this server (busy until it closed, gone)
        self._unreached: set[int] = set()
        self._late = Sink()  # where the replies to cancelled tasks go: nowhere
        self._late.open = False
        self._broadcast: tuple[Weights | None, _codec.Encoded | None] = (None, None)
        self._extras: tuple[Any, _codec.Encoded | None] = (None, None)
        self._reply_limits: tuple[_codec.Encoded | None, ReplyLimits] = (None, NO_MODEL)
        self.refused_in_wait = ""  # the connections the last wait for clients refused
        self._service = FederationService(self._registry, tls, heartbeat, max_inflight)
        self._server, self.port = start_server(address, tls, self._service, max_clients)
        self.data_port: int | None = None  # the data port listened on, if any
        if data_port is not None:
            self._open_data_port(address, data_port, tls, SILENCE * heartbeat)

    def _open_data_port(self, address: str, port: int, tls: ServerTLS | None, quiet: float) -> None:
        """Listen for data connections on ``port`` of the gRPC server's host."""
        host = check_address(address, listen=True)[0]
        pems = None if tls is None else (tls.ca, tls.cert, tls.key)
        counted = self._service.admission.note_data  # each one, in the stop short of clients
        try:
            self._service.data = DataPort(host, port, pems, quiet, self._data_refused, counted)
        except OSError as exc:  # ssl.SSLError too: a certificate or key it cannot load
            if self._service.handshakes is not None:
                self._service.handshakes.close()
            self._server.stop(None)
            raise DataPortError(
                f"cannot listen for data connections on {host}:{port}: {exc}"
            ) from None
        self.data_port = self._service.data.port
        logger.info("listening for data connections on %s:%d", host, self.data_port)

    def _data_refused(self, host: str, detail: str) -> None:
        """Record a refused data connection as the run's event, named by its host."""
        on_event = self._registry.on_event
        if on_event is not None:
            on_event(host, "refused", detail)

    # -- Transport ---------------------------------------------------------------------

    def clients(self) -> Sequence[int]:
        """Ids of the clients connected now, sorted."""
        return self._registry.clients()

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        """Block until ``count`` clients are connected or ``timeout`` passes.

        :attr:`refused_in_wait` then counts the connections refused meanwhile, by cause.
        """
        mark = self._service.admission.refused
        came = self._registry.wait_for(count, timeout)
        self.refused_in_wait = self._service.admission.refused_since(mark)
        return came

    def refusals(self) -> int:
        """How many connections this server refused so far: a mark for :meth:`refused_since`."""
        return self._service.admission.refused

    def refused_since(self, mark: int) -> str:
        """The connections refused since :meth:`refusals` was ``mark``, by cause ("" if none)."""
        return self._service.admission.refused_since(mark)

    def joins(self, cid: int) -> int:
        """The session of client ``cid``'s connection: it changes each time the client connects.

        A new session may bring new properties. 0 for a client not connected and
        not among the latest to leave (see :data:`~covey.transport.grpc._registry.LEFT_KEPT`).
        """
        with self._lock:
            return self._registry.joins.get(cid, 0)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Push each task down its client's stream; yield replies as they arrive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sink = Sink()
        replies = sink.replies
        try:
            expecting = set(tasks)
            deferred = self._send_all(tasks, sink)
            while expecting:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    reply = replies.get(timeout=remaining and min(remaining, LONGEST_WAIT))
                except queue.Empty:
                    if remaining is not None and remaining > LONGEST_WAIT:
                        continue
                    break
                if reply.kind == FREED:
                    entry = deferred.pop(reply.cid, None)
                    if entry is not None and self._send(reply.cid, entry[0], entry[1], sink):
                        deferred[reply.cid] = entry
                elif reply.cid in expecting:
                    self._check_disk()
                    expecting.discard(reply.cid)
                    yield reply
            for cid in sorted(expecting & set(deferred)):
                expecting.discard(cid)
                self._unreached.add(cid)
                yield Reply(cid, deferred[cid][0].kind, error=_busy(deferred[cid][2]))
            if expecting:
                logger.warning(
                    "deadline passed with %d client(s) still working: %s; their replies "
                    "will be discarded",
                    len(expecting),
                    [self._name(cid) for cid in sorted(expecting)[:10]],
                )
        finally:
            sink.open = False
            # The next exchange carries a new model: do not keep this one alive.
            self._broadcast = (None, None)
            self._extras = (None, None)
            self._reply_limits = (None, NO_MODEL)

    def _send_all(
        self, tasks: Mapping[int, Task], sink: Sink
    ) -> dict[int, tuple[Task, _codec.Encoded | None, str]]:
        """Send each task that can go now, its reply to go to ``sink``; those held back.

        Clients still working on a task of a closed round (stragglers) get theirs
        once they are free, within the exchange's deadline: never two at once. An
        evaluate task is not held for them (an evaluation is not worth a whole
        deadline): it fails at once as busy, never sent.

        Returns:
            ``cid -> (task, weights, kind of the task it still works on)`` of the held tasks.
        """
        deferred: dict[int, tuple[Task, _codec.Encoded | None, str]] = {}
        for cid in sorted(tasks):
            task = tasks[cid]
            blob = self._encode(task.weights)
            busy = self._send(cid, task, blob, sink)
            if busy and task.kind == "evaluate":
                self._unreached.add(cid)
                sink.replies.put(Reply(cid, task.kind, error=_busy_now(busy)))
            elif busy:
                deferred[cid] = (task, blob, busy)
        return deferred

    def spill_to(self, folder: str | Path | None) -> None:
        """Keep replies too large for memory in ``folder`` (None: the system's temporary one)."""
        self._service.spill_files.folder = folder

    def _check_disk(self) -> None:
        """Raise the server's disk failure, if receiving a reply met one (the run stops).

        Raises:
            ServerDiskError: a reply could not be written to the spill folder.
        """
        error = self._service.disk.error
        if error is not None:
            raise ServerDiskError(str(error)) from error

    def client_name(self, cid: int) -> str | None:
        """Client ``cid``'s name (its certificate's), or None if it is not connected."""
        with self._lock:
            conn = self._fleet.get(cid)
        return conn.name if conn is not None else None

    def left_clients(self) -> dict[int, tuple[str, str]]:
        """The clients that connected and left, not connected now: ``cid -> (name, why)``."""
        with self._lock:
            return dict(self._registry.left)

    def _name(self, cid: int) -> str:
        """Client ``cid``'s name (its certificate's), as the other log lines call it."""
        return self.client_name(cid) or f"client {cid}"

    def reached(self, cid: int) -> bool:
        """Whether client ``cid``'s latest task was sent to it.

        False for a task held back while the client worked on an earlier one until
        its time ran out, or one whose client was not connected: the byte counts of
        a run take such a task's bytes back (see :class:`~covey.compress.CompressedTransport`).
        """
        return cid not in self._unreached

    def refused(
        self, cid: int, rnd: int, reason: str, *, stage: str = "fit", unit: str = ""
    ) -> None:
        """Tell client ``cid`` that its reply of round ``rnd`` was refused, and why (see ``_told``).

        Sent after what its stream had queued before, on its connection of now; a
        client not connected is told nothing (its refusal is in the server's log).

        Args:
            cid: The client.
            rnd: The round (``unit``: the update) of the task its refused reply answered.
            reason: Why, without the client's name (cut to ``REFUSAL_CHARS`` characters).
            stage: What was refused: ``"fit"`` (an update) or ``"evaluate"``.
            unit: What ``rnd`` counts: ``"update"``, or empty for rounds.
        """
        with self._lock:
            conn = self._fleet.get(cid)
        if conn is not None and conn.alive:
            conn.outbound.put(("told", refusal_frame(rnd, reason, stage, unit)))

    def _send(self, cid: int, task: Task, blob: _codec.Encoded | None, sink: Sink) -> str:
        """Send ``task`` to client ``cid``, its reply to go to ``sink``.

        Returns:
            "" when it was sent (or failed at once: the client is gone); else the
            kind of the closed round's task the client still works on, and
            ``sink`` gets a :data:`FREED` marker once it is free.
        """
        with self._lock:
            conn = self._fleet.get(cid)
            if conn is None or not conn.alive:
                self._unreached.add(cid)
                sink.replies.put(Reply(cid, task.kind, error="client is not connected"))
                return ""
            busy = conn.wait_until_free(sink)
            if busy:
                return busy
            with conn.lock:
                task_id = next(self._task_ids)
                conn.pending[task_id] = (sink, task.kind)
                conn.limits[task_id] = self._limits(task, blob)
            self._unreached.discard(cid)
        conn.outbound.put(("task", task_id, task, blob, self._encode_extras(task), ""))
        return ""

    # -- AsyncTransport: one task at a time, for asynchronous (FedBuff) runs -----------

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Push ``task`` to client ``cid``; its reply comes from :meth:`next_reply`.

        A client still working on a task whose time ran out gets the new one once
        it has replied to the old (within ``timeout``): never two at once.
        """
        blob = self._encode(task.weights)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            task_id = next(self._task_ids)
            self._inflight[cid] = (task_id, task.kind, deadline)
        self._submit(cid, task_id, task, blob)

    def _submit(self, cid: int, task_id: int, task: Task, blob: _codec.Encoded | None) -> None:
        """Send submitted task ``task_id`` now, or once ``cid`` is free; drop it if cancelled."""
        with self._lock:
            entry = self._inflight.get(cid)
            if entry is None or entry[0] != task_id:
                return  # cancelled (timed out) while it waited
            conn = self._fleet.get(cid)
            if conn is None or not conn.alive:
                self._unreached.add(cid)
                self._async.replies.put(Reply(cid, task.kind, error="client is not connected"))
                return
            if conn.wait_until_free(self._async):
                self._deferred[cid] = (task_id, task, blob)
                return
            with conn.lock:
                conn.pending[task_id] = (self._async, task.kind)
                conn.limits[task_id] = self._limits(task, blob)
            self._unreached.discard(cid)
        # The asynchronous loop numbers its tasks by the updates of the model, not rounds.
        conn.outbound.put(("task", task_id, task, blob, self._encode_extras(task), "update"))

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        """The next reply to a submitted task, a time-out error, or None after ``timeout``."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._inflight and self._async.replies.empty():
                    return None
                deadlines = [d for _, _, d in self._inflight.values() if d is not None]
            now = time.monotonic()
            expired = [
                cid for cid, (_, _, d) in list(self._inflight.items()) if d is not None and d <= now
            ]
            if expired:
                cid = expired[0]
                _, kind, _ = self._inflight[cid]
                held = cid in self._deferred  # never sent: the client was busy all along
                if held:
                    self._unreached.add(cid)
                self.cancel(cid)
                return Reply(cid, kind, error=_HELD if held else "no reply in time")
            wake = min([*deadlines, *([end] if end is not None else [])], default=None)
            try:
                reply = self._async.replies.get(
                    timeout=None if wake is None else min(max(0.0, wake - now), LONGEST_WAIT)
                )
            except queue.Empty:
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            with self._lock:
                if reply.kind == FREED:  # a busy client is free: send what waits for it
                    waiting = self._deferred.pop(reply.cid, None)
                else:
                    waiting = None
                    entry = self._inflight.get(reply.cid)
                    if entry is None or entry[1] != reply.kind:
                        continue  # cancelled meanwhile
                    del self._inflight[reply.cid]
            if reply.kind != FREED:
                self._check_disk()
                return reply
            if waiting is not None:
                self._submit(reply.cid, *waiting)

    def cancel(self, cid: int) -> None:
        """Forget ``cid``'s submitted task: a reply that still comes is dropped.

        Until that reply comes, the client counts as busy (:meth:`submit`).
        """
        with self._lock:
            entry = self._inflight.pop(cid, None)
            self._deferred.pop(cid, None)
            conn = self._fleet.get(cid)
        if entry is not None and conn is not None:
            with conn.lock:
                if entry[0] in conn.pending:
                    conn.pending[entry[0]] = (self._late, entry[1])

    def close(self, reason: str = "the run is over") -> None:
        """Say goodbye to every client and stop the server."""
        conns = self._registry.close()
        if conns is None:
            return
        for conn in conns:
            conn.outbound.put(("goodbye", reason))
            conn.outbound.put(CLOSE)
        if self._service.handshakes is not None:  # before the stop: what it cuts did not fail
            self._service.handshakes.close()
        self._server.stop(grace=5.0).wait(10.0)
        if self._service.data is not None:
            self._service.data.close()
            for conn in conns:  # the streams are over: so are their data connections
                for lane in conn.lanes:
                    cut(lane)
        self._service.spill_files.close()
        self._registry.on_event = None  # whoever records events may be gone after close

    # -- internals ---------------------------------------------------------------------

    def _encode(self, weights: Weights | None) -> _codec.Encoded | None:
        """Encode the round's weights once; every client's task reuses the buffer."""
        if weights is None:
            return None
        cached, blob = self._broadcast
        if cached is weights and blob is not None:
            return blob
        blob = _codec.Encoded(weights)
        self._broadcast = (weights, blob)
        return blob

    def _limits(self, task: Task, blob: _codec.Encoded | None) -> ReplyLimits:
        """:func:`task_limits`, worked out once for the tasks that share ``blob``."""
        cached, limits = self._reply_limits
        if blob is None or cached is not blob:
            limits = task_limits(task, blob)
            self._reply_limits = (blob, limits)
        return limits

    def _encode_extras(self, task: Task) -> _codec.Encoded | None:
        """Encode the arrays a fit task carries beside the weights, once per round.

        Arrays an aggregation step broadcasts with fit tasks (e.g. SCAFFOLD's
        control variate) travel as a second encoded blob after the weights; so
        do those of a task of any kind whose payload is named weights (e.g. a
        compressed fit task), which the client reads back as the same mapping.
        """
        if not _wire.is_extras(task.payload):
            return None
        cached, blob = self._extras
        if cached is task.payload and blob is not None:
            return blob
        blob = _codec.Encoded(_wire.flatten_extras(task.payload))
        self._extras = (task.payload, blob)
        return blob
