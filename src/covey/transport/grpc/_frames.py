"""Frames on the ``Federation.Join`` stream: control messages as protobuf, chunks as raw bytes.

The method is registered without (de)serializers, so every gRPC message on the
stream is a frame of bytes that reaches covey as gRPC received it. A frame
whose first byte is :data:`CHUNK_TAG` (0x00) is a chunk: the bytes after the
tag are the next piece of the arrays the last task or reply header announced.
Any other frame is a serialized ``ClientMessage`` or ``ServerMessage``; a
serialized protobuf message never starts with 0x00 (there is no field number
0), so the two cannot be confused, and a frame that is neither is refused.

A chunk thus costs one copy to send (the array's bytes into the frame, tag
first) and one to receive (the frame's bytes into the buffer or file that
holds the message), with no protobuf message built, serialized or parsed per
chunk. Wire protocol 1 sent each chunk as a protobuf ``Chunk`` message; peers
state their protocol in ``Hello``/``Welcome`` and one of another protocol is
refused at the handshake.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from covey.core import _codec
from covey.core._messages import DeferredReply, Reply
from covey.core._pages import trim_heap
from covey.core._version import covey_version
from covey.transport.grpc import _lane, _wire
from covey.transport.grpc._checks import shown_kind, welcome_heartbeat
from covey.transport.grpc._refusal import VERSION_CHARS, Refused, server_named, stated_version
from covey.transport.grpc._stream import CHUNK_BYTES, Buffers, Upload, chunks, feed, lazy_buffer
from covey.transport.grpc._wirecheck import reply_bytes_error
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = [
    "CHUNK_TAG",
    "PROTOCOL",
    "Download",
    "FrameError",
    "chunk_data",
    "client_message",
    "control",
    "frames",
    "is_chunk",
    "protocol_refusal",
    "reply_frames",
    "server_message",
    "server_protocol_refusal",
    "task_header",
    "welcome_message",
]

logger = logging.getLogger("covey")

#: The wire protocol this covey speaks: 2 = chunks as raw tagged frames.
PROTOCOL = 2

#: The first byte of a chunk frame.
CHUNK_TAG = b"\x00"


#: What protobuf raises on bytes that are not a message of the type parsed.
DecodeError: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError


class FrameError(ValueError):
    """A frame that is not a chunk nor a well-formed control message, or a chunk too large."""


def control(message: pb.ClientMessage | pb.ServerMessage) -> bytes:
    """The frame of a control message: its protobuf serialization."""
    frame: bytes = message.SerializeToString()
    return frame


def is_chunk(frame: bytes) -> bool:
    """Whether ``frame`` is a chunk frame (its first byte is the chunk tag)."""
    return frame[:1] == CHUNK_TAG


def chunk_data(frame: bytes) -> memoryview:
    """The data of a chunk frame, without copying; :class:`FrameError` if over :data:`CHUNK_BYTES`.

    Example:
        >>> bytes(chunk_data(CHUNK_TAG + b"abc"))
        b'abc'
    """
    size = len(frame) - 1
    if size > CHUNK_BYTES:
        raise FrameError(f"a chunk frame of {size} bytes exceeds the chunk size of {CHUNK_BYTES}")
    return memoryview(frame)[1:]


def _parse(message: Any, frame: bytes, what: str) -> Any:
    if not frame:
        raise FrameError(f"an empty frame where a {what} was expected")
    if frame[:1] == CHUNK_TAG:
        raise FrameError(f"a chunk frame ({len(frame)} bytes) where a {what} frame was expected")
    try:
        message.ParseFromString(frame)
    except DecodeError as exc:
        raise FrameError(f"a malformed {what} frame ({len(frame)} bytes): {exc}") from None
    if message.WhichOneof("body") is None:
        raise FrameError(f"a {what} frame of {len(frame)} bytes carries no known message")
    return message


def client_message(frame: bytes) -> pb.ClientMessage:
    """Parse a control frame from a client; :class:`FrameError` if it is not one."""
    message: pb.ClientMessage = _parse(pb.ClientMessage(), frame, "client control")
    return message


def server_message(frame: bytes) -> pb.ServerMessage:
    """Parse a control frame from the server; :class:`FrameError` if it is not one."""
    message: pb.ServerMessage = _parse(pb.ServerMessage(), frame, "server control")
    return message


def protocol_refusal(client: int, server: int, client_version: str, server_version: str) -> str:
    """The handshake's message to a peer that speaks another wire protocol."""
    return (
        f"incompatible covey wire protocols: this server runs covey {server_version} "
        f"(wire protocol {server}), the client runs covey {stated_version(client_version)} "
        f"(wire protocol {client or 1}); install covey "
        f"{'.'.join(server_version.split('.')[:2])}.x on both sides"
    )


def server_protocol_refusal(server: int, client_version: str, server_version: str = "") -> str:
    """What a client says when the server's ``Welcome`` states another wire protocol.

    Args:
        server: The server's wire protocol (0: it states none, protocol 1).
        client_version: This client's covey version.
        server_version: The covey version the server states ("" from an older server).
    """
    return (
        f"incompatible covey wire protocols: {server_named(server_version)} speaks wire "
        f"protocol {server or 1}, this client (covey {client_version}) speaks {PROTOCOL}; "
        "run the same covey major.minor version on both sides"
    )


def welcome_message(cid: int, name: str, heartbeat: float, version: str) -> pb.Welcome:
    """The server's ``Welcome``: the client's id and name, the heartbeat, protocol and version.

    The covey version is cut to :data:`VERSION_CHARS` characters, the most a client takes.
    """
    return pb.Welcome(
        cid=cid,
        name=name,
        heartbeat_interval=heartbeat,
        protocol=PROTOCOL,
        version=version[:VERSION_CHARS],
    )


def welcome_heartbeat_of(welcome: pb.Welcome) -> float | None:
    """The heartbeat interval a server's ``Welcome`` sets (None: keep the client's own).

    Raises:
        Refused: the Welcome states a version no covey states, another wire
            protocol, or a heartbeat out of range: the same on every connection,
            so the client gives up at once rather than retrying.
    """
    if len(welcome.version) > VERSION_CHARS:
        raise Refused(
            f"the server sent a Welcome stating a covey version of {len(welcome.version)} "
            f"characters (at most {VERSION_CHARS}): {stated_version(welcome.version)}; "
            "no covey states such a version: check that the address is a covey server's"
        )
    if welcome.protocol != PROTOCOL:
        raise Refused(server_protocol_refusal(welcome.protocol, covey_version(), welcome.version))
    try:
        return welcome_heartbeat(welcome.heartbeat_interval)
    except ValueError as exc:
        raise Refused(str(exc)) from None


def task_header(
    task_id: int,
    task: Any,
    blob: _codec.Encoded | None,
    extras: _codec.Encoded | None,
    unit: str = "",
) -> pb.TaskHeader:
    """The header announcing ``task`` (a :class:`~covey.core.Task`) and its arrays.

    ``unit`` is what ``task.round`` counts: ``"update"`` for a task of an
    asynchronous run, empty for a round (as a server that sends no unit means).

    Raises:
        covey.transport.grpc._wire.WireError: if its config or payload holds a value the
            network cannot carry, or one larger than a client accepts (checked before
            anything is sent), naming the entry.
    """
    parts: list[bytes] = []
    for part, value in (("config", dict(task.config)), ("payload", task.payload)):
        if part == "payload" and extras is not None:
            parts.append(b"")  # the payload travels as arrays after the weights
            continue
        try:
            # The caps every client applies. One given its model's layout
            # (``connect(spec=...)``) caps arrays lower, at the model's size
            # (``WireLimits.for_spec``); its Hello does not say so, so that
            # client refuses such a config itself (naming no entry).
            parts.append(_wire.dumps_within(value, _wire.WireLimits()))
        except _wire.WireError as exc:
            raise _wire.WireError(f"its {part}: {exc}") from None
    config, payload = parts
    return pb.TaskHeader(
        task_id=task_id,
        kind=task.kind,
        round=task.round,
        config=config,
        payload=payload,
        weights_size=0 if blob is None else len(blob),
        extras_size=0 if extras is None else len(extras),
        unit=unit,
    )


def frames(*blobs: _codec.Encoded | None) -> Iterator[bytes]:
    """The chunk frames of ``blobs``: each the tag, then up to :data:`CHUNK_BYTES` of data."""
    return chunks(*blobs, prefix=CHUNK_TAG)


def reply_frames(
    task_id: int,
    reply: Reply,
    lane: socket.socket | None = None,
    limits: _wire.WireLimits | None = None,
    most: int = 0,
    task: str = "",
) -> Iterator[bytes]:
    """The frames of a client's reply: its header, then its arrays as chunk frames.

    With ``lane`` (the client's data connection to the server), the arrays go
    there instead, written once the header is out. A result over ``limits``
    (those the server reads it with, default :class:`~covey.transport.grpc._wire.WireLimits`;
    see :func:`~covey.transport.grpc._wirecheck.result_limits`), or whose arrays
    take more than ``most`` bytes (the cap the task's header states; 0: none
    stated, as by an older server), is sent as the task's failure instead, naming
    what is too large, and logged as the failure of ``task`` (its description).

    Raises:
        OSError: the data connection failed (raised from the generator).
    """
    blob: _codec.Encoded | None = None
    extras: _codec.Encoded | None = None
    if reply.ok:
        try:
            result_json, arrays = _wire.result_to_wire(reply.result, limits or _wire.WireLimits())
            blob = None if arrays is None else _codec.Encoded(arrays)
            more = getattr(reply.result, "extras", None)
            if more:
                extras = _codec.Encoded(_wire.flatten_extras(more))
        except Exception as exc:  # noqa: BLE001 - an unsendable result is reported, not fatal
            reply = _unsendable(reply, f"cannot send the result: {exc}", task)
        else:
            size = (0 if blob is None else len(blob)) + (0 if extras is None else len(extras))
            if most and size > most:  # the server would drop the connection for it
                blob = extras = None
                error = reply_bytes_error(shown_kind(reply.kind), size, most)
                reply = _unsendable(reply, error, task)
    if not reply.ok:
        header = pb.ReplyHeader(task_id=task_id, kind=reply.kind, error=reply.error or "failed")
        yield control(pb.ClientMessage(reply=header))
        return
    header = pb.ReplyHeader(
        task_id=task_id,
        kind=reply.kind,
        result=result_json,
        weights_size=0 if blob is None else len(blob),
        extras_size=0 if extras is None else len(extras),
        data_lane=lane is not None and (blob is not None or extras is not None),
    )
    if header.data_lane and lane is not None:
        yield control(pb.ClientMessage(reply=header))
        _lane.send(lane, blob, extras)
        return
    body = frames(blob, extras)
    # Only ``body`` refers to the arrays from here, and it is run to its end before
    # the last frame goes out: once the server has the whole reply (and may send
    # the next task), nothing here holds the memory the reply was sent from.
    del blob, extras, reply, arrays, more
    yield control(pb.ClientMessage(reply=header))
    last = next(body, b"")
    for frame in body:
        yield last
        last = frame
    if last:
        yield last


def _unsendable(reply: Reply, error: str, task: str) -> Reply:
    """The failed reply that replaces ``reply`` when its result cannot be sent; logged."""
    logger.warning("the %s failed: %s", task or f"{shown_kind(reply.kind)} task", error)
    return Reply(reply.cid, reply.kind, error=error)


class Download:
    """A task's arrays arriving chunk by chunk on the client, into one buffer of the announced size.

    Args:
        header: The task's header (its sizes already checked against the client's limits).
        size: The bytes it announced.
        buffers: Where to take a buffer written before (the last task's, once
            nothing refers to it); None for a new one every time.
    """

    def __init__(self, header: pb.TaskHeader, size: int, buffers: Buffers | None = None) -> None:
        """A buffer for ``size`` bytes of ``header``'s task, a new one taking memory as they arrive.

        Raises:
            ConnectionError: the buffer cannot be mapped.
        """
        self.header = header
        try:
            self.buffer = lazy_buffer(size) if buffers is None else buffers.take(size)
        except MemoryError as exc:
            raise ConnectionError(f"refusing a {shown_kind(header.kind)} task: {exc}") from None
        self.filled = 0
        # Checksums computed as the bytes arrive, while they are in the cache: the
        # arrays are then decoded without reading the whole message once more.
        self.split = header.weights_size
        self.checks = (_codec.StreamCheck(), _codec.StreamCheck())

    def write(self, frame: bytes) -> bool:
        """Append a chunk frame's data; True once every announced byte has arrived.

        Every byte of the buffer is written before it is handed over, so a reused
        buffer never shows the message before.

        Raises:
            ConnectionError: the chunk is too large or runs past the announced size.
        """
        try:
            data = chunk_data(frame)
        except FrameError as exc:
            raise ConnectionError(f"the server sent {exc}") from None
        end = self.filled + len(data)
        if end > len(self.buffer):
            raise ConnectionError(
                f"the server sent more bytes than the {len(self.buffer)} its "
                f"{shown_kind(self.header.kind)} task announced"
            )
        self._check(data)
        self.buffer[self.filled : end] = data
        self.filled = end
        return end == len(self.buffer)

    def _check(self, data: memoryview) -> None:
        feed(self.checks, self.split, self.filled, data)

    def receive(self, lane: socket.socket, heard: Callable[[], Any]) -> None:
        """Read every announced byte from the data connection ``lane`` straight into the buffer.

        ``heard`` is called after each piece (the server is alive). Raises OSError
        if the connection fails or closes first.
        """
        with memoryview(self.buffer) as whole:
            while self.filled < len(whole):
                end = min(self.filled + _lane.PIECE, len(whole))
                piece = whole[self.filled : end]
                _lane.receive(lane, piece)
                self._check(piece)
                piece.release()
                self.filled = end
                heard()

    @property
    def intact(self) -> bool:
        """Whether the weights and the extra arrays both arrived with matching checksums."""
        sizes = (self.split, len(self.buffer) - self.split)
        return self.filled == len(self.buffer) and all(
            check.ok() for size, check in zip(sizes, self.checks, strict=True) if size
        )


def reply_of(
    cid: int, kind: str, header: Any, upload: Upload | None, limits: _wire.WireLimits
) -> Reply:
    """The reply of a complete upload (``header``, a ``ReplyHeader``): decoded, or deferred.

    A spilled reply is checked in full now (checksums, the encoding's headers, the
    result's JSON and limits) and unmapped again; the round loop maps it when it
    folds it and releases it right after.
    """
    if upload is None or not upload.spilled:
        weights, extras = (None, None) if upload is None else upload.decode()
        return Reply(
            cid, kind, result=_wire.result_from_wire(header.result, weights, extras, limits)
        )
    spill = upload.spill()
    data = header.result

    def load() -> Any:
        return _wire.result_from_wire(data, *spill.map(), limits)

    try:
        load()
    except BaseException:
        spill.close()
        raise
    spill.unmap()
    trim_heap()  # the frames that carried it were freed into the heap
    return DeferredReply(cid, kind, load, spill.unmap)
