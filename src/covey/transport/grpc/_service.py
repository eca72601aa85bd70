"""The gRPC service of the server: the ``Federation.Join`` stream of each client.

Each connected client holds one bidirectional stream. A reader thread per
stream turns the client's messages into :class:`~covey.core._messages.Reply`
objects; the stream's response generator sends task headers and weight chunks
as gRPC's flow control allows, so memory in flight stays bounded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from covey.core import _codec
from covey.core._messages import Reply
from covey.transport.grpc import _wire
from covey.transport.grpc._admission import Admission, Refusal
from covey.transport.grpc._registry import (
    CLOSE,
    Connection,
    Registry,
    ShuttingDownError,
)
from covey.transport.grpc._stream import (
    MAX_INFLIGHT_BYTES,
    SPILL_BYTES,
    Skipped,
    Upload,
    UploadBudget,
    chunks,
)
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = [
    "MAX_MESSAGE_BYTES",
    "METHOD",
    "SERVICE",
    "SILENCE",
    "FederationService",
    "ServerTLS",
    "grpc_options",
    "start_server",
]

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


def start_server(
    address: str, tls: ServerTLS | None, service: FederationService, max_clients: int
) -> tuple[grpc.Server, int]:
    """Listen on ``address`` and serve ``service``; return the running server and its port.

    Args:
        address: ``host:port`` to listen on (port 0 picks a free one).
        tls: TLS material (mutual TLS); None means insecure.
        service: The service whose ``join`` handles each client's stream.
        max_clients: Most streams served at once.

    Returns:
        The started server and the port it listens on.

    Raises:
        OSError: The address cannot be listened on.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_clients + 8, thread_name_prefix="covey-rpc"),
        options=grpc_options(),
        maximum_concurrent_rpcs=max_clients,
    )
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Join": grpc.stream_stream_rpc_method_handler(
                service.join,
                request_deserializer=pb.ClientMessage.FromString,
                response_serializer=pb.ServerMessage.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        creds = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
        )
        port = server.add_secure_port(address, creds)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port


class _ProtocolError(Exception):
    """A client sent messages out of the protocol's order or over its limits."""


class FederationService:
    """The ``Federation.Join`` handler: identify a client, then stream tasks and read replies.

    Args:
        registry: The connection registry clients join.
        tls: TLS material; None means insecure (identity from the Hello message).
        heartbeat: Seconds between heartbeats; a client silent for ``SILENCE``
            of them is dropped.
    """

    def __init__(
        self,
        registry: Registry,
        tls: ServerTLS | None,
        heartbeat: float,
        max_inflight: int = MAX_INFLIGHT_BYTES,
    ) -> None:
        """A service for ``registry``; replies are capped at 64 MiB until a model is sent."""
        self.registry = registry
        self.tls = tls
        self.heartbeat = heartbeat
        self.admission = Admission(registry, tls)
        self.budget = UploadBudget(max_inflight)
        # Caps on the JSON of replies; the transport sets them from the model's spec.
        self.wire_limits = _wire.WireLimits()
        # A reply carries at most one model's worth of arrays; the transport
        # raises this once it knows the model's size.
        self.max_reply = 64 * 1024 * 1024

    def join(
        self, requests: Iterator[pb.ClientMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage]:
        """Serve one client's stream: Hello, Welcome, then tasks out and replies in."""
        try:
            first = next(requests)
        except (StopIteration, grpc.RpcError):
            return
        if first.WhichOneof("body") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        name, certificate = self.admission.admit(context, first.hello)
        cid = self.registry.client_id(name)
        conn = Connection(name, cid, context)
        conn.certificate = certificate
        conn.kinds = frozenset(first.hello.kinds)
        conn.peer = context.peer()
        try:
            old = self.registry.add(conn)
        except ShuttingDownError:
            self.admission.run_over(context, name)
        if old is not None:
            self.registry.drop(old, "replaced by a new connection")
        self.registry.event(name, "join" if old is None else "rejoin", context.peer())
        logger.info("client %s joined as %d", name, cid)
        context.add_callback(lambda: self.registry.drop(conn, "disconnected"))
        reader = threading.Thread(
            target=self._read, args=(conn, requests), name=f"covey-read-{cid}", daemon=True
        )
        reader.start()
        yield pb.ServerMessage(
            welcome=pb.Welcome(cid=cid, name=name, heartbeat_interval=self.heartbeat)
        )
        yield from self._send(conn)

    def _send(self, conn: Connection) -> Iterator[pb.ServerMessage]:
        """The response stream: heartbeats, goodbyes, task headers and their chunks."""
        while conn.alive:
            try:
                item = conn.outbound.get(timeout=self.heartbeat)
            except queue.Empty:
                if time.monotonic() - conn.last_seen > SILENCE * self.heartbeat:
                    self.registry.drop(conn, "timed out (no heartbeat)")
                    return
                yield pb.ServerMessage(heartbeat=pb.Heartbeat())
                continue
            if item is CLOSE:
                return
            if item[0] == "goodbye":
                yield pb.ServerMessage(goodbye=pb.Goodbye(reason=item[1]))
                continue
            _, task_id, task, blob, extras = item
            with conn.lock:
                if task_id not in conn.pending:
                    continue  # cancelled before it was sent
            if conn.kinds and task.kind not in conn.kinds:
                self._unable(conn, task_id, task.kind)
                continue
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

    def _read(self, conn: Connection, requests: Iterator[pb.ClientMessage]) -> None:
        """Read one client's messages until its stream ends, then drop it."""
        upload: Upload | Skipped | None = None
        upload_header = pb.ReplyHeader()
        try:
            for message in requests:
                conn.last_seen = time.monotonic()
                upload, upload_header = self._take(conn, message, upload, upload_header)
        except _ProtocolError as exc:
            logger.warning(
                "client %s (%s) broke the protocol: %s; closing its stream",
                conn.name,
                conn.peer,
                exc,
            )
            self.registry.event(conn.name, "protocol-error", f"{exc} (peer {conn.peer})")
        except Refusal as exc:
            logger.warning("refused %s from %s: %s", conn.name, conn.peer, exc)
            self.registry.event(conn.name, "refused", f"{exc} (peer {conn.peer})")
            self.registry.drop(conn, str(exc))
        except grpc.RpcError:
            pass
        except Exception:
            logger.exception("reading from client %s failed", conn.name)
        if upload is not None:
            self._release(upload)
        self.registry.drop(conn, "disconnected")

    def _take(
        self,
        conn: Connection,
        message: pb.ClientMessage,
        upload: Upload | Skipped | None,
        upload_header: pb.ReplyHeader,
    ) -> tuple[Upload | Skipped | None, pb.ReplyHeader]:
        """Handle one client message; return the reply upload in progress and its header."""
        body = message.WhichOneof("body")
        if body != "chunk":
            self.admission.check(conn)  # a certificate revoked since it joined
        if body == "heartbeat":
            return upload, upload_header
        if body == "reply":
            if upload is not None:
                raise _ProtocolError("a new reply started before the last one finished")
            header = message.reply
            return self._start(conn, header), header
        if body == "chunk":
            if upload is None or message.chunk.task_id != upload_header.task_id:
                raise _ProtocolError("a chunk arrived for no reply in progress")
            if not upload.write(message.chunk.data):
                raise _ProtocolError("a reply sent more bytes than it announced")
            if not upload.complete:
                return upload, upload_header
            self._release(upload)
            if isinstance(upload, Upload):
                self._deliver(conn, upload_header, upload)
            return None, upload_header
        raise _ProtocolError(f"unexpected {body} message")

    def _start(self, conn: Connection, header: pb.ReplyHeader) -> Upload | Skipped | None:
        """Where a reply's bytes go: checked against the pending task and the limits first."""
        size = header.weights_size + header.extras_size
        if size > self.max_reply:
            raise _ProtocolError(f"reply of {size} bytes exceeds the limit of {self.max_reply}")
        with conn.lock:
            expected = header.task_id in conn.pending
        if not expected:
            logger.warning(
                "client %s replied to task %d, which is not pending; skipping its %d bytes",
                conn.name,
                header.task_id,
                size,
            )
            return Skipped(size) if size else None
        if size == 0:
            self._deliver(conn, header, None)
            return None
        if not self.budget.reserve(size):
            raise _ProtocolError(
                f"a reply of {size} bytes would put uploads in progress over the server's "
                f"limit of {self.budget.total} bytes"
            )
        return Upload(header.weights_size, header.extras_size, spill=size >= SPILL_BYTES)

    def _release(self, upload: Upload | Skipped) -> None:
        """Give back the reservation of an upload that completed or was abandoned."""
        if isinstance(upload, Upload):
            self.budget.release(upload.size)
            if not upload.complete:
                upload.discard()

    def _unable(self, conn: Connection, task_id: int, kind: str) -> None:
        """Answer for a client a task of a kind it did not say it performs."""
        with conn.lock:
            entry = conn.pending.pop(task_id, None)
        if entry is not None:
            error = f"client {conn.name} does not perform {kind!r} tasks (it performs: "
            error += ", ".join(sorted(conn.kinds)) + ")"
            self.registry.route(entry[0], Reply(conn.cid, kind, error=error), conn.name)

    def _deliver(self, conn: Connection, header: pb.ReplyHeader, upload: Upload | None) -> None:
        """Turn a complete reply into a :class:`Reply` for whoever waits for it."""
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
                result = _wire.result_from_wire(header.result, weights, extras, self.wire_limits)
                reply = Reply(conn.cid, kind, result=result)
            except (_codec.CodecError, _wire.WireError, ValueError, TypeError) as exc:
                # A message that breaks the format or its limits: the round learns the
                # client failed, and the client is dropped.
                error = f"malformed reply: {exc}"
                self.registry.route(sink, Reply(conn.cid, kind, error=error), conn.name)
                raise _ProtocolError(f"refused a malformed {kind} reply: {exc}") from None
        self.registry.route(sink, reply, conn.name)
