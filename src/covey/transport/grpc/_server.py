"""The server side of the gRPC transport: clients dial in, the server pushes tasks.

Each connected client holds one bidirectional stream (``Federation.Join``). A
reader thread per stream turns the client's messages into :class:`Reply`
objects; the stream's response generator sends task headers and weight chunks
as gRPC's flow control allows, so memory in flight stays bounded. The global
weights of a round are encoded once and every client's chunks are slices of
that one buffer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import Weights
from covey.transport.grpc import _wire
from covey.transport.grpc._stream import SPILL_BYTES, Upload, chunks
from covey.transport.grpc.proto import covey_pb2 as pb

logger = logging.getLogger("covey")

SILENCE = 6  # heartbeat intervals of silence after which a client is taken for gone
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SERVICE = "covey.v1.Federation"
METHOD = f"/{SERVICE}/Join"


def grpc_options(max_message: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Channel/server options shared by both sides: message caps and keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class ServerTLS:
    """The server's TLS material; clients must present a certificate chaining to ``ca``.

    Args:
        ca: PEM of the federation CA (verifies client certificates).
        cert: PEM of the server certificate.
        key: PEM of the server's private key.
        is_revoked: ``(client_cert_pem) -> bool``; revoked clients are refused.
    """

    ca: bytes
    cert: bytes
    key: bytes
    is_revoked: Callable[[bytes], bool] | None = None


class _Conn:
    """One connected client."""

    def __init__(self, name: str, cid: int, context: grpc.ServicerContext) -> None:
        self.name = name
        self.cid = cid
        self.context = context
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.pending: dict[int, tuple[_Sink, str]] = {}  # task_id -> (where to, kind)
        self.alive = True
        self.last_seen = time.monotonic()
        self.lock = threading.Lock()

    def closed(self) -> bool:
        return not self.alive


_CLOSE = object()


class _Sink:
    """Where the replies to one exchange (or to the asynchronous loop) go."""

    __slots__ = ("open", "replies")

    def __init__(self) -> None:
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.open = True


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
    ) -> None:
        self._tls = tls
        self._heartbeat = heartbeat
        ids: dict[str, int] = {}
        self._client_id = client_id or (lambda name: ids.setdefault(name, len(ids)))
        self._on_event = on_event
        self._lock = threading.Lock()
        self._fleet_changed = threading.Condition(self._lock)
        self._fleet: dict[int, _Conn] = {}
        self._task_ids = itertools.count(1)
        self._async = _Sink()
        # cid -> (task_id, kind, deadline) of tasks submitted asynchronously
        self._inflight: dict[int, tuple[int, str, float | None]] = {}
        self._broadcast: tuple[Weights | None, _codec.Encoded | None] = (None, None)
        self._extras: tuple[Any, _codec.Encoded | None] = (None, None)
        self._max_reply = 64 * 1024 * 1024
        self._closed = False
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_clients + 8, thread_name_prefix="covey-rpc"),
            options=grpc_options(),
            maximum_concurrent_rpcs=max_clients,
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Join": grpc.stream_stream_rpc_method_handler(
                    self._join,
                    request_deserializer=pb.ClientMessage.FromString,
                    response_serializer=pb.ServerMessage.SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
            )
            self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._server.start()

    # -- Transport ---------------------------------------------------------------------

    def clients(self) -> Sequence[int]:
        """Ids of the clients connected now, sorted."""
        with self._lock:
            return sorted(cid for cid, c in self._fleet.items() if c.alive)

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        """Block until ``count`` clients are connected or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._fleet_changed:
            while sum(c.alive for c in self._fleet.values()) < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._fleet_changed.wait(remaining)
            return True

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Push each task down its client's stream; yield replies as they arrive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sink = _Sink()
        replies = sink.replies
        try:
            expecting = set(tasks)
            for cid in sorted(tasks):
                task = tasks[cid]
                blob = self._encode(task.weights)
                with self._lock:
                    conn = self._fleet.get(cid)
                    if conn is None or not conn.alive:
                        replies.put(Reply(cid, task.kind, error="client is not connected"))
                        continue
                    task_id = next(self._task_ids)
                    conn.pending[task_id] = (sink, task.kind)
                conn.outbound.put(("task", task_id, task, blob, self._encode_extras(task)))
            while expecting:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    reply = replies.get(timeout=remaining)
                except queue.Empty:
                    break
                if reply.cid in expecting:
                    expecting.discard(reply.cid)
                    yield reply
            if expecting:
                logger.warning(
                    "deadline passed with %d client(s) still working: %s; their replies "
                    "will be discarded",
                    len(expecting),
                    sorted(expecting)[:10],
                )
        finally:
            sink.open = False
            # The next exchange carries a new model: do not keep this one alive.
            self._broadcast = (None, None)
            self._extras = (None, None)

    # -- AsyncTransport: one task at a time, for asynchronous (FedBuff) runs -----------

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Push ``task`` to client ``cid`` now; its reply comes from :meth:`next_reply`."""
        blob = self._encode(task.weights)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            conn = self._fleet.get(cid)
            if conn is None or not conn.alive:
                self._async.replies.put(Reply(cid, task.kind, error="client is not connected"))
                self._inflight[cid] = (0, task.kind, None)
                return
            task_id = next(self._task_ids)
            conn.pending[task_id] = (self._async, task.kind)
            self._inflight[cid] = (task_id, task.kind, deadline)
        conn.outbound.put(("task", task_id, task, blob, self._encode_extras(task)))

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
                self.cancel(cid)
                return Reply(cid, kind, error="no reply in time")
            wake = min([*deadlines, *([end] if end is not None else [])], default=None)
            try:
                reply = self._async.replies.get(
                    timeout=None if wake is None else max(0.0, wake - now)
                )
            except queue.Empty:
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            with self._lock:
                entry = self._inflight.get(reply.cid)
                if entry is None or entry[1] != reply.kind:
                    continue  # cancelled meanwhile
                del self._inflight[reply.cid]
            return reply

    def cancel(self, cid: int) -> None:
        """Forget ``cid``'s submitted task: a reply that still comes is dropped."""
        with self._lock:
            entry = self._inflight.pop(cid, None)
            conn = self._fleet.get(cid)
        if entry is not None and conn is not None:
            with conn.lock:
                conn.pending.pop(entry[0], None)

    def close(self, reason: str = "the run is over") -> None:
        """Say goodbye to every client and stop the server."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._fleet.values())
        for conn in conns:
            conn.outbound.put(("goodbye", reason))
            conn.outbound.put(_CLOSE)
        self._server.stop(grace=5.0).wait(10.0)
        self._on_event = None  # whoever records events may be gone after close

    # -- internals ---------------------------------------------------------------------

    def _encode(self, weights: Weights | None) -> _codec.Encoded | None:
        if weights is None:
            return None
        cached, blob = self._broadcast
        if cached is weights and blob is not None:
            return blob
        blob = _codec.Encoded(weights)
        self._broadcast = (weights, blob)
        # A reply carries at most one model's worth of arrays (plus slack for names).
        self._max_reply = 2 * len(blob) + 1024 * 1024
        return blob

    def _encode_extras(self, task: Task) -> _codec.Encoded | None:
        # Arrays an aggregation step broadcasts with fit tasks (e.g. SCAFFOLD's control
        # variate) travel as a second encoded blob after the weights.
        if task.kind != "fit" or not _wire.is_extras(task.payload):
            return None
        cached, blob = self._extras
        if cached is task.payload and blob is not None:
            return blob
        blob = _codec.Encoded(_wire.flatten_extras(task.payload))
        self._extras = (task.payload, blob)
        return blob

    def _event(self, name: str, event: str, detail: str = "") -> None:
        record = self._on_event
        if record is not None:
            try:
                record(name, event, detail)
            except Exception:
                if not self._closed:
                    logger.exception("recording fleet event %s for %s failed", event, name)

    def _identify(self, context: grpc.ServicerContext, hello: pb.Hello) -> str | None:
        if self._tls is None:
            return hello.name or context.peer()
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        if not names:
            return None
        name = str(names[0].decode(errors="replace"))
        pems = auth.get("x509_pem_cert") or []
        if self._tls.is_revoked is not None and pems and self._tls.is_revoked(pems[0]):
            self._event(name, "refused", "certificate revoked")
            return None
        return name

    def _join(
        self, requests: Iterator[pb.ClientMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage]:
        try:
            first = next(requests)
        except (StopIteration, grpc.RpcError):
            return
        if first.WhichOneof("body") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        name = self._identify(context, first.hello)
        if name is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "client identity refused")
        assert name is not None
        cid = self._client_id(name)
        conn = _Conn(name, cid, context)
        with self._fleet_changed:
            if self._closed:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            old = self._fleet.get(cid)
            self._fleet[cid] = conn
            self._fleet_changed.notify_all()
        if old is not None:
            self._drop(old, "replaced by a new connection")
        self._event(name, "join" if old is None else "rejoin", context.peer())
        logger.info("client %s joined as %d", name, cid)
        context.add_callback(lambda: self._drop(conn, "disconnected"))
        reader = threading.Thread(
            target=self._read, args=(conn, requests), name=f"covey-read-{cid}", daemon=True
        )
        reader.start()
        yield pb.ServerMessage(
            welcome=pb.Welcome(cid=cid, name=name, heartbeat_interval=self._heartbeat)
        )
        yield from self._send(conn)

    def _send(self, conn: _Conn) -> Iterator[pb.ServerMessage]:
        while conn.alive:
            try:
                item = conn.outbound.get(timeout=self._heartbeat)
            except queue.Empty:
                if time.monotonic() - conn.last_seen > SILENCE * self._heartbeat:
                    self._drop(conn, "timed out (no heartbeat)")
                    return
                yield pb.ServerMessage(heartbeat=pb.Heartbeat())
                continue
            if item is _CLOSE:
                return
            if item[0] == "goodbye":
                yield pb.ServerMessage(goodbye=pb.Goodbye(reason=item[1]))
                continue
            _, task_id, task, blob, extras = item
            with conn.lock:
                if task_id not in conn.pending:
                    continue  # cancelled before it was sent
            yield pb.ServerMessage(
                task=pb.TaskHeader(
                    task_id=task_id,
                    kind=task.kind,
                    round=task.round,
                    config=_wire.dumps(dict(task.config)),
                    payload=b"" if extras is not None else _wire.dumps(task.payload),
                    weights_size=0 if blob is None else len(blob),
                    extras_size=0 if extras is None else len(extras),
                )
            )
            for piece in chunks(blob, extras):
                if conn.closed():
                    return
                yield pb.ServerMessage(chunk=pb.Chunk(task_id=task_id, data=piece))

    def _read(self, conn: _Conn, requests: Iterator[pb.ClientMessage]) -> None:
        upload: Upload | None = None
        upload_header = pb.ReplyHeader()
        try:
            for message in requests:
                conn.last_seen = time.monotonic()
                body = message.WhichOneof("body")
                if body == "heartbeat":
                    continue
                if body == "reply":
                    if upload is not None:
                        raise _ProtocolError("a new reply started before the last one finished")
                    header = message.reply
                    size = header.weights_size + header.extras_size
                    if size > self._max_reply:
                        raise _ProtocolError(
                            f"reply of {size} bytes exceeds the limit of {self._max_reply}"
                        )
                    if size == 0:
                        self._deliver(conn, header, None)
                    else:
                        upload = Upload(
                            header.weights_size, header.extras_size, spill=size >= SPILL_BYTES
                        )
                        upload_header = header
                elif body == "chunk":
                    if upload is None or message.chunk.task_id != upload_header.task_id:
                        raise _ProtocolError("a chunk arrived for no reply in progress")
                    if not upload.write(message.chunk.data):
                        raise _ProtocolError("a reply sent more bytes than it announced")
                    if upload.complete:
                        self._deliver(conn, upload_header, upload)
                        upload = None
                else:
                    raise _ProtocolError(f"unexpected {body} message")
        except _ProtocolError as exc:
            logger.warning("client %s broke the protocol: %s; closing its stream", conn.name, exc)
            self._event(conn.name, "protocol-error", str(exc))
        except grpc.RpcError:
            pass
        except Exception:
            logger.exception("reading from client %s failed", conn.name)
        if upload is not None:
            upload.discard()
        self._drop(conn, "disconnected")

    def _deliver(self, conn: _Conn, header: pb.ReplyHeader, upload: Upload | None) -> None:
        with conn.lock:
            entry = conn.pending.pop(header.task_id, None)
        if entry is None:
            logger.warning("client %s replied to unknown task %d", conn.name, header.task_id)
            return
        sink, kind = entry
        if header.error:
            reply = Reply(conn.cid, kind, error=header.error)
        else:
            try:
                weights, extras = (None, None) if upload is None else upload.decode()
                result = _wire.result_from_wire(header.result, weights, extras)
                reply = Reply(conn.cid, kind, result=result)
            except (_codec.CodecError, _wire.WireError, ValueError, TypeError) as exc:
                reply = Reply(conn.cid, kind, error=f"malformed reply: {exc}")
        self._route(sink, reply, conn.name)

    def _route(self, sink: _Sink, reply: Reply, name: str) -> None:
        if sink.open:
            sink.replies.put(reply)
        else:
            logger.warning(
                "discarding a late %s reply from client %s (its round is over)", reply.kind, name
            )
            self._event(name, "late-reply", reply.kind)

    def _drop(self, conn: _Conn, why: str) -> None:
        with self._fleet_changed:
            if not conn.alive:
                return
            conn.alive = False
            if self._fleet.get(conn.cid) is conn:
                del self._fleet[conn.cid]
            self._fleet_changed.notify_all()
        with conn.lock:
            pending = list(conn.pending.items())
            conn.pending.clear()
        for _, (sink, kind) in pending:
            self._route(sink, Reply(conn.cid, kind, error=f"client {why}"), conn.name)
        conn.outbound.put(_CLOSE)
        with contextlib.suppress(Exception):
            conn.context.cancel()
        self._event(conn.name, "leave", why)
        logger.info("client %s (%d) left: %s", conn.name, conn.cid, why)


class _ProtocolError(Exception):
    pass
