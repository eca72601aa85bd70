"""The gRPC service of the server: the ``Federation.Join`` stream of each client.

Each connected client holds one bidirectional stream of frames (:mod:`._frames`:
protobuf control messages, chunks as raw bytes). A reader thread per stream
turns the client's frames into :class:`~covey.core._messages.Reply` objects;
the stream's response generator (:mod:`._outbound`) sends task headers and
chunk frames as gRPC's flow control allows, so memory in flight stays bounded.
A reply large enough to be spilled to a file is checked when it completes and
handed over as a :class:`~covey.core._messages.DeferredReply`, mapped only
while it is folded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from covey.core import _codec
from covey.core._log import ON_CONSOLE
from covey.core._messages import Reply
from covey.transport._base import ServerDiskError
from covey.transport.grpc import _lane, _wire
from covey.transport.grpc._admission import Admission, Refusal
from covey.transport.grpc._capacity import Capacity, full_message
from covey.transport.grpc._faults import DiskFault
from covey.transport.grpc._faults import ProtocolError as _ProtocolError
from covey.transport.grpc._frames import (
    FrameError,
    chunk_data,
    client_message,
    control,
    is_chunk,
    reply_of,
    welcome_message,
)
from covey.transport.grpc._greeting import Greeting
from covey.transport.grpc._handshakes import HandshakeWatch
from covey.transport.grpc._options import (
    MAX_MESSAGE_BYTES,
    METHOD,
    SERVICE,
    ServerTLS,
    grpc_options,
    start_server,
)
from covey.transport.grpc._outbound import SILENCE, TaskStream
from covey.transport.grpc._registry import (
    CUT_OFF,
    Connection,
    Registry,
    ShuttingDownError,
    Sink,
    peer_of,
)
from covey.transport.grpc._stream import (
    MAX_INFLIGHT_BYTES,
    SPILL_BYTES,
    Skipped,
    SpillFiles,
    Upload,
    UploadBudget,
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

GOODBYE_DRAIN = 5.0  # seconds a client has to hang up after the goodbye


class FederationService(TaskStream):
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
        """A service for ``registry``; each reply is capped by its task (``Connection.limits``)."""
        self.registry = registry
        self.tls = tls
        self.heartbeat = heartbeat
        self.admission = Admission(registry, tls)
        # Streams that have not said Hello: a deadline, and a cap on how many wait at once.
        self.greeting = Greeting(registry.event)
        self.budget = UploadBudget(max_inflight)
        # Files of spilled replies, written over by later replies (see SpillFiles).
        self.spill_files = SpillFiles(keep_bytes=min(max_inflight, SpillFiles().keep_bytes))
        self.disk = DiskFault()  # a spill file that could not be written: the run stops
        # Under TLS, who connected and whether their handshake passed (set by start_server).
        self.handshakes: HandshakeWatch | None = None
        # The cap on streams at once (start_server sets it to the server's max_clients).
        self.capacity = Capacity(1000, registry.event)
        self.data: _lane.DataPort | None = None  # the data port, if any (see _lane)

    def join(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Serve one client's stream of frames, if the server has room for one more."""
        if self.handshakes is not None:  # its handshake passed, full or not (not a TLS failure)
            self.handshakes.saw(peer_of(context))
        if not self.capacity.take(context):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, full_message(self.capacity.most))
        try:
            yield from self._join(requests, context)
        finally:
            self.capacity.give_back()

    def _join(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Serve one client's stream of frames: Hello, Welcome, then tasks out and replies in."""
        frame = self.greeting.first_frame(requests, context)
        if frame is None:
            return
        try:
            first, why = client_message(frame), "its first message was not Hello"
        except FrameError as exc:
            first, why = pb.ClientMessage(), f"its first frame was not Hello: {exc}"
        if first.WhichOneof("body") != "hello":
            self.greeting.refuse(context, why)  # logged and recorded, a flood of them not
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        name, certificate = self.admission.admit(context, first.hello)
        try:
            cid = self.registry.client_id(name)
        except OSError as exc:  # the run cannot record a new client: its disk is full, ...
            logger.error("client %s could not join: %s", name, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server cannot take new clients now")
        conn = Connection(name, cid, context)
        conn.certificate = certificate
        conn.kinds = frozenset(first.hello.kinds)
        conn.peer = peer_of(context)
        # A connection it replaces is told for good, so that two processes holding one
        # identity do not take turns replacing each other; a client that reconnects has
        # left the old one.
        own = (
            "certificate"
            if certificate is not None
            else "name (connect(name=...), covey client --name)"
        )
        refusal = (
            f"another client connected as {name} (from {conn.peer}); "
            f"each client process needs its own {own}"
        )
        note = self.admission.version_note(first.hello.version)  # patch releases roll out
        try:
            self.registry.join(conn, refusal, note)
        except ShuttingDownError:
            self.admission.run_over(context, name)
        said = f" ({note})" if note else ""
        logger.info("client %s joined as %d%s", name, cid, said, extra=ON_CONSOLE)
        context.add_callback(lambda: self.registry.drop(conn, "disconnected"))
        reader = threading.Thread(
            target=self._read, args=(conn, requests), name=f"covey-read-{cid}", daemon=True
        )
        reader.start()
        welcome = welcome_message(cid, name, self.heartbeat, self.admission.version)
        data = self.data if first.hello.data_lane else None
        if data is not None:
            welcome.data_port, welcome.data_token = data.port, data.offer(conn)
        else:
            conn.data_ready.set()
        yield control(pb.ServerMessage(welcome=welcome))
        try:
            if (yield from self._send(conn)):
                # The client hangs up once it reads the goodbye. Ending the stream first
                # would close the connection while it may still send (a late reply), and
                # its kernel would then drop the unread goodbye with the reset connection.
                reader.join(GOODBYE_DRAIN)
        finally:
            if data is not None:
                data.forget(welcome.data_token)
        if conn.refusal:
            context.abort(conn.refusal_code, conn.refusal)

    def _read(self, conn: Connection, requests: Iterator[bytes]) -> None:
        """Read one client's frames until its stream ends, then drop it."""
        upload: Upload | Skipped | None = None
        upload_header, why = pb.ReplyHeader(), "disconnected"
        broke: Exception | None = None  # the protocol break, which ``why`` names
        try:
            for frame in requests:
                conn.last_seen = time.monotonic()
                upload, upload_header = self._taken(conn, frame, upload, upload_header)
                conn.upload = upload  # a drop names the reply it cut short
            if upload is not None and conn.lost():  # a disconnect, not a protocol break
                raise grpc.RpcError()
            if upload is not None:
                raise _ProtocolError(
                    f"its stream ended in the middle of a reply to task {upload_header.task_id} "
                    f"({upload.filled} of {upload.size} bytes received)"
                )
        except (_ProtocolError, FrameError) as exc:
            logger.warning(
                "client %s (%s) broke the protocol: %s; closing its stream",
                conn.name,
                conn.peer,
                exc,
            )
            self.registry.event(conn.name, "protocol-error", f"{exc} (peer {conn.peer})")
            why, broke = f"disconnected: it broke the protocol ({exc})", exc
        except Refusal as exc:
            logger.warning("refused %s from %s: %s", conn.name, conn.peer, exc)
            self.registry.event(conn.name, "refused", f"{exc} (peer {conn.peer})")
            self.admission.note(str(exc), conn.name, conn.certificate)
            # Its stream ends refusing it, as a new connection would be: not cancelled,
            # which its client would take for a lost connection and retry.
            conn.refusal, conn.refusal_code = str(exc), grpc.StatusCode.PERMISSION_DENIED
            self.registry.drop(conn, str(exc))
        except (grpc.RpcError, OSError) as exc:  # OSError: a data connection failed
            cut = upload or (conn.upload if isinstance(exc, OSError) else None)
            if cut is not None:
                level = logging.INFO if self.registry.winding_down() else logging.WARNING
                what = f"({cut.filled} of {cut.size} bytes received): {str(exc) or CUT_OFF}"
                said = "client %s (%s): its stream failed in the middle of a reply %s"
                logger.log(level, said, conn.name, conn.peer, what)
            cut = None  # see below
        except Exception:
            logger.exception("reading from client %s failed", conn.name)
        upload = upload or conn.upload  # or the one a data connection cut short
        if upload is not None:
            self.budget.settle(upload)
        # ``conn.upload`` stays set until the drop: the stream's end may drop it first.
        self.registry.drop(conn, why, names_upload=broke is not None)
        if isinstance(broke, _ProtocolError) and broke.failed is not None:
            self.registry.route(*broke.failed, conn.name)
        # gRPC's error for a dead connection sits in a reference cycle with its traceback's
        # frames, this one among them: a reply cut short (model-sized) is let go now.
        conn.upload = upload = None

    def _taken(
        self, conn: Connection, frame: bytes, upload: Any, upload_header: pb.ReplyHeader
    ) -> tuple[Upload | Skipped | None, pb.ReplyHeader]:
        """:meth:`_take`, unless the server's disk refused this client's reply (DiskFault)."""
        if conn in self.disk.drained:
            return None, upload_header
        try:
            return self._take(conn, frame, upload, upload_header)
        except ServerDiskError as exc:  # the server's own disk, not the client's doing
            self.disk.failed(self.registry, self.budget, conn, exc, upload or conn.upload)
            return None, upload_header

    def _take(
        self,
        conn: Connection,
        frame: bytes,
        upload: Upload | Skipped | None,
        upload_header: pb.ReplyHeader,
    ) -> tuple[Upload | Skipped | None, pb.ReplyHeader]:
        """Handle one client frame; return the reply upload in progress and its header."""
        if isinstance(upload, Upload) and self._unwanted(conn, upload_header.task_id):
            upload = self._abandon(conn, upload, upload_header)
        if is_chunk(frame):
            if upload is None:
                raise _ProtocolError(
                    f"a chunk frame of {len(frame) - 1} bytes arrived with no reply in progress"
                )
            upload = self._chunk(conn, chunk_data(frame), upload, upload_header)
            if not upload.complete:
                return upload, upload_header
            self._complete(conn, upload, upload_header)
            return None, upload_header
        message = client_message(frame)
        self.admission.check(conn)  # a certificate revoked since it joined
        body = message.WhichOneof("body")
        if body == "heartbeat":
            if message.heartbeat.data_ready:
                conn.data_ready.set()
            return upload, upload_header
        if body == "reply":
            if upload is not None and conn.lost():  # a disconnect, not a protocol break
                raise grpc.RpcError()
            if upload is not None:
                raise _ProtocolError(
                    f"a new reply started before the reply to task {upload_header.task_id} "
                    f"finished ({upload.filled} of {upload.size} bytes received)"
                )
            header = message.reply
            if header.data_lane and conn.lanes[1] is None:
                raise _ProtocolError(
                    f"its reply to task {header.task_id} announced its bytes on a data "
                    "connection it has not opened"
                )
            upload = self._start(conn, header)
            if header.data_lane:  # its bytes follow on the data connection, not as frames
                self._from_lane(conn, upload, header)
                return None, header
            return upload, header
        raise _ProtocolError(f"unexpected {body} message")

    def _complete(self, conn: Connection, upload: Upload | Skipped, header: pb.ReplyHeader) -> None:
        """Hand over a reply whose bytes have all arrived (or count those of a skipped one)."""
        self.budget.settle(upload)
        if isinstance(upload, Upload):
            self._deliver(conn, header, upload)
        else:  # skipped to the end: a client busy with a closed round's task is free again
            conn.take(header.task_id)

    def _from_lane(
        self, conn: Connection, upload: Upload | Skipped | None, header: pb.ReplyHeader
    ) -> None:
        """Read a reply's bytes from the data connection, checked as chunk frames are."""
        lane = conn.lanes[1]
        while upload is not None and not upload.complete:
            if isinstance(upload, Upload) and self._unwanted(conn, header.task_id):
                upload = self._abandon(conn, upload, header)
            size = min(_lane.PIECE, upload.size - upload.filled)
            if isinstance(upload, Upload) and not self.budget.reserve(size):
                upload = self._overflow(conn, upload, header)
            conn.upload = upload  # a drop names the reply it cut short
            before = upload.filled
            with upload.space(size) as view:
                try:
                    _lane.receive(lane, view, upload.wrote)
                except BaseException:  # the piece was reserved whole, and not all of it came
                    if isinstance(upload, Upload):
                        self.budget.release(size - (upload.filled - before))
                    raise
            conn.last_seen = time.monotonic()
        conn.upload = None  # complete: the reader's cleanup must not give its bytes back twice
        if upload is not None:
            self._complete(conn, upload, header)

    def _start(self, conn: Connection, header: pb.ReplyHeader) -> Upload | Skipped | None:
        """Where a reply's bytes go: checked against the pending task and the limits first."""
        size = header.weights_size + header.extras_size
        most = conn.limits_of(header.task_id)[0]
        if size > most:
            raise _ProtocolError(
                f"reply of {size} bytes to task {header.task_id} exceeds the limit of {most} "
                "for that task"
            )
        with conn.lock:
            entry = conn.pending.get(header.task_id)
        if entry is None:
            self.registry.stray(conn, header.task_id, size)
            return Skipped(size) if size else None
        if header.kind != entry[1]:
            self._wrong_kind(conn, header, entry[0], entry[1])
        if not entry[0].open:  # a straggler's reply, begun after its round closed
            self.registry.late(conn, header.task_id, entry[1], size)
            return Skipped(size) if size else None
        if size == 0:
            self._deliver(conn, header, None)
            return None
        if size > self.budget.total:  # could never fit, whatever else is in flight
            raise _ProtocolError(
                f"a reply of {size} bytes is more than the server's limit of "
                f"{self.budget.total} bytes of replies in progress"
            )
        spill = self.spill_files if size >= SPILL_BYTES else False
        return Upload(header.weights_size, header.extras_size, spill=spill)

    @staticmethod
    def _wrong_kind(conn: Connection, header: pb.ReplyHeader, sink: Sink, kind: str) -> None:
        """Refuse a reply whose kind is not its task's: its task fails, its client is dropped."""
        why = (
            f"refused a reply of kind {header.kind!r:.300} to task {header.task_id}, "
            f"a {kind!r} task (a reply's kind must be its task's)"
        )
        conn.take(header.task_id)
        failed = (sink, Reply(conn.cid, kind, error=why)) if sink.open else None
        raise _ProtocolError(why, failed)

    @staticmethod
    def _unwanted(conn: Connection, task_id: int) -> bool:
        """Whether no one waits for the reply to ``task_id`` any more (its round closed)."""
        with conn.lock:
            entry = conn.pending.get(task_id)
        return entry is None or not entry[0].open

    def _abandon(self, conn: Connection, upload: Upload, header: pb.ReplyHeader) -> Skipped:
        """Stop keeping a reply whose round closed: its memory goes, its other bytes are skipped.

        Otherwise a client that starts a reply and never finishes it would hold
        the reply's buffer and its share of the bytes in flight for as long as it
        stays connected.
        """
        self.budget.settle(upload)
        skipped = Skipped.rest_of(upload)
        self.registry.abandoned(conn, header.task_id, upload.filled, upload.size)
        return skipped

    def _chunk(
        self, conn: Connection, data: memoryview, upload: Upload | Skipped, header: pb.ReplyHeader
    ) -> Upload | Skipped:
        """Write a chunk, reserving its bytes against the bytes in flight of all replies.

        A reply reserves what it has sent, not what its header declares, so peers
        that declare large replies and send little cannot use up the cap. A reply
        that would pass it is not kept: its task fails naming the cause, and its
        other bytes are skipped, the client staying connected.
        """
        fits = upload.filled + len(data) <= upload.size
        if isinstance(upload, Upload) and fits and not self.budget.reserve(len(data)):
            upload = self._overflow(conn, upload, header)
        if not upload.write(data):
            raise _ProtocolError(
                f"a reply to task {header.task_id} sent more than the "
                f"{upload.size} bytes it announced"
            )
        return upload

    def _overflow(self, conn: Connection, upload: Upload, header: pb.ReplyHeader) -> Skipped:
        """Skip a reply that would pass the bytes in flight, and fail its task saying so."""
        self.budget.settle(upload)
        skipped = Skipped.rest_of(upload)
        error = (
            f"the server was receiving its limit of {self.budget.total} bytes of replies at "
            f"once; the reply to task {header.task_id} ({upload.size} bytes) was not kept"
        )
        logger.warning("client %s (%s): %s", conn.name, conn.peer, error)
        entry = conn.take(header.task_id)
        if entry is not None:
            self.registry.route(entry[0], Reply(conn.cid, entry[1], error=error), conn.name)
        return skipped

    def _deliver(self, conn: Connection, header: pb.ReplyHeader, upload: Upload | None) -> None:
        """Turn a complete reply into a :class:`Reply` for whoever waits for it."""
        limits = conn.limits_of(header.task_id)[1]
        entry = conn.take(header.task_id)
        if entry is None:
            logger.warning("client %s replied to unknown task %d", conn.name, header.task_id)
            return
        sink, kind = entry
        if header.error:
            reply = Reply(conn.cid, kind, error=_wire.clipped_error(header.error))
        else:
            try:
                reply = reply_of(conn.cid, kind, header, upload, limits)
            except (_codec.CodecError, _wire.WireError, ValueError, TypeError) as exc:
                # A message that breaks the format or its limits: the round learns the
                # client failed, and the client is dropped.
                why = _wire.clipped_error(str(exc), 1000)  # it may quote the peer at length
                failed = (sink, Reply(conn.cid, kind, error=f"malformed reply: {why}"))
                raise _ProtocolError(f"refused a malformed {kind} reply: {why}", failed) from None
        self.registry.route(sink, reply, conn.name)
