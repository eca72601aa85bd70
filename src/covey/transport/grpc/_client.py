"""The client side of the gRPC transport: dial out, receive tasks, reply, reconnect.

A client opens one long-lived stream to the server (so sites behind NAT and
firewalls work), performs each task it is pushed with the client runtime and
streams the reply back in chunks. When the connection drops it reconnects with
exponential backoff and jitter, until the server says goodbye.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from covey.clients._client import run_task, task_kinds
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import WeightsSpec
from covey.transport.grpc import _wire
from covey.transport.grpc._checks import MAX_TASK_BYTES, TaskLimits, WithProperties, check_address
from covey.transport.grpc._refusal import (
    HANDSHAKE_STRIKES,
    Refused,
    RetryBudget,
    handshake_closed,
    handshake_refusal,
    permanent_cause,
)
from covey.transport.grpc._service import METHOD, grpc_options
from covey.transport.grpc._stream import chunks, split_blobs
from covey.transport.grpc.proto import covey_pb2 as pb

logger = logging.getLogger("covey")


@dataclass(frozen=True)
class ClientTLS:
    """The client's TLS material.

    Args:
        ca: PEM of the federation CA (verifies the server).
        cert: PEM of this client's certificate (its identity is the certificate's name).
        key: PEM of this client's private key.
        server_name: Expected name in the server certificate, if not the host dialled.
    """

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None


@dataclass
class ConnectResult:
    """How a client's participation ended.

    Attributes:
        reason: The server's goodbye message.
        tasks: How many tasks this client performed.
        sessions: How many times it connected.
        cid: The id the server gave it.
    """

    reason: str = ""
    tasks: int = 0
    sessions: int = 0
    cid: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)


class _Goodbye(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


SILENCE = 6  # heartbeat intervals of silence after which the peer is taken for gone

_END = object()
_WAKE = object()  # re-read the heartbeat interval


def _reply_messages(task_id: int, reply: Reply) -> Iterator[pb.ClientMessage]:
    blob: _codec.Encoded | None = None
    extras: _codec.Encoded | None = None
    if reply.ok:
        try:
            result_json, arrays = _wire.result_to_wire(reply.result)
            blob = None if arrays is None else _codec.Encoded(arrays)
            more = getattr(reply.result, "extras", None)
            if more:
                extras = _codec.Encoded(_wire.flatten_extras(more))
        except Exception as exc:  # noqa: BLE001 - an unsendable result is reported, not fatal
            reply = Reply(reply.cid, reply.kind, error=f"cannot send the result: {exc}")
    if not reply.ok:
        yield pb.ClientMessage(
            reply=pb.ReplyHeader(task_id=task_id, kind=reply.kind, error=reply.error or "failed")
        )
        return
    yield pb.ClientMessage(
        reply=pb.ReplyHeader(
            task_id=task_id,
            kind=reply.kind,
            result=result_json,
            weights_size=0 if blob is None else len(blob),
            extras_size=0 if extras is None else len(extras),
        )
    )
    for piece in chunks(blob, extras):
        yield pb.ClientMessage(chunk=pb.Chunk(task_id=task_id, data=piece))


class _Session:
    """One connection: a request generator fed by a queue, and the response loop."""

    def __init__(
        self,
        client: Any,
        name: str,
        properties: dict[str, Any],
        heartbeat: float,
        limits: TaskLimits,
    ) -> None:
        self.client = client
        self.limits = limits
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.heartbeat = heartbeat
        self.last_heard = time.monotonic()
        self.hello = pb.Hello(
            version=_version(),
            name=name,
            properties=_wire.dumps(properties),
            kinds=list(task_kinds()),
        )
        self.call: Any = None
        self.welcomed = False
        self.worker: threading.Thread | None = None
        # Tasks run on their own thread, so the stream keeps being read (and the
        # server's heartbeats heard) during a long fit.
        self.tasks: queue.Queue[Any] = queue.Queue()

    def requests(self) -> Iterator[pb.ClientMessage]:
        yield pb.ClientMessage(hello=self.hello)
        while True:
            try:
                # Beat twice per interval so one late beat never looks like a death.
                item = self.outbound.get(timeout=self.heartbeat / 2)
            except queue.Empty:
                if time.monotonic() - self.last_heard > SILENCE * self.heartbeat and self.call:
                    logger.warning(
                        "no word from the server for %.0f s; reconnecting",
                        SILENCE * self.heartbeat,
                    )
                    self.call.cancel()
                    return
                yield pb.ClientMessage(heartbeat=pb.Heartbeat())
                continue
            if item is _END:
                return
            if item is _WAKE:
                continue
            yield from item

    def run(self, channel: grpc.Channel, result: ConnectResult, stop: threading.Event) -> None:
        join = channel.stream_stream(
            METHOD,
            request_serializer=pb.ClientMessage.SerializeToString,
            response_deserializer=pb.ServerMessage.FromString,
        )
        self.call = join(self.requests())
        self.worker = threading.Thread(
            target=self._work, args=(result,), name="covey-task", daemon=True
        )
        self.worker.start()
        ended = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(stop, ended), name="covey-stop", daemon=True
        )
        watcher.start()
        cid = -1
        download: list[Any] | None = None  # [header, buffer, filled]
        try:
            for message in self.call:
                self.last_heard = time.monotonic()
                body = message.WhichOneof("body")
                if body == "welcome":
                    self.welcomed = True
                    cid = int(message.welcome.cid)
                    result.cid = cid
                    if message.welcome.heartbeat_interval > 0:
                        self.heartbeat = message.welcome.heartbeat_interval
                        self.outbound.put(_WAKE)
                    logger.info("connected as %s (id %d)", message.welcome.name, cid)
                elif body == "task":
                    header = message.task
                    size = self.limits.check(header)
                    if size == 0:
                        self.tasks.put((cid, header, None))
                    else:
                        download = [header, bytearray(size), 0]
                elif body == "chunk":
                    download = self._chunk(download, message.chunk, cid)
                elif body == "goodbye":
                    raise _Goodbye(message.goodbye.reason)
        finally:
            ended.set()
            self.close()

    def _chunk(self, download: list[Any] | None, chunk: pb.Chunk, cid: int) -> list[Any] | None:
        if download is None or chunk.task_id != download[0].task_id:
            raise ConnectionError("the server sent a chunk for no task")
        data = chunk.data
        end = download[2] + len(data)
        if end > len(download[1]):
            raise ConnectionError("the server sent more bytes than announced")
        download[1][download[2] : end] = data
        download[2] = end
        if end < len(download[1]):
            return download
        self.tasks.put((cid, download[0], download[1]))
        return None

    def _watch(self, stop: threading.Event, ended: threading.Event) -> None:
        while not ended.is_set():
            if stop.wait(0.1):
                logger.info("leaving the federation (stop was set)")
                self.call.cancel()
                return

    def close(self, deadline: float = 10.0) -> None:
        """End the session: stop the request stream, cancel the call, wait for the task thread."""
        self.tasks.put(_END)
        self.outbound.put(_END)
        if self.call is not None:
            self.call.cancel()  # ends gRPC's threads for this call now, not at exit
        worker = self.worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(deadline)
            if worker.is_alive():
                logger.warning(
                    "the running task did not finish within %.0f s of the session's end", deadline
                )

    def _work(self, result: ConnectResult) -> None:
        while True:
            item = self.tasks.get()
            if item is _END:
                return
            cid, header, buffer = item
            self._perform(cid, header, buffer, result)

    def _perform(
        self, cid: int, header: pb.TaskHeader, buffer: bytearray | None, result: ConnectResult
    ) -> None:
        try:
            weights, extras = split_blobs(buffer, header.weights_size, header.extras_size)
            task = Task(
                header.kind,
                int(header.round),
                _wire.loads(header.config, self.limits.wire) or {},
                weights,
                extras if extras is not None else _wire.loads(header.payload, self.limits.wire),
            )
        except (_codec.CodecError, _wire.WireError) as exc:
            reply = Reply(cid, header.kind, error=f"cannot decode the task: {exc}")
        else:
            reply = run_task(self.client, cid, task)
        if not reply.ok:
            logger.warning(
                "task %s of round %d failed: %s",
                header.kind,
                header.round,
                (reply.error or "").strip().splitlines()[-1:],
            )
        result.tasks += 1
        result.kinds[header.kind] = result.kinds.get(header.kind, 0) + 1
        self.outbound.put(_reply_messages(header.task_id, reply))


def _version() -> str:
    from covey import __version__

    return __version__


def connect(
    client: Any,
    address: str,
    *,
    tls: ClientTLS | None = None,
    insecure: bool = False,
    name: str = "",
    properties: dict[str, Any] | None = None,
    spec: WeightsSpec | None = None,
    max_task_bytes: int = MAX_TASK_BYTES,
    max_attempts: int | None = None,
    retry_for: float | None = 600.0,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    heartbeat: float = 5.0,
    stop: threading.Event | None = None,
) -> ConnectResult:
    """Join the federation at ``address`` and serve tasks until the server says goodbye.

    The client is the same :class:`covey.Client` object that runs in
    :func:`covey.simulate`. It dials out (so it works behind NAT and firewalls)
    and reconnects with exponential backoff and jitter when the connection drops.
    A refusal retrying cannot change (certificate not trusted or revoked, an
    incompatible covey version, the run is over) ends it at once.

    Args:
        client: A :class:`covey.Client` (the same object that runs in simulation).
        address: The server's ``host:port``.
        tls: Certificates for mutual TLS (the default for real deployments).
        insecure: Connect without TLS; only for local experiments.
        name: The client's name on an insecure server (with TLS the certificate names it).
        properties: Facts the server may select clients by (``Strategy(where=...)``),
            merged over ``client.properties()``; the server reads them when it asks.
        spec: The model's layout; tasks announcing more bytes than the model (and
            extra arrays of its size) are refused, and arrays inside configs are
            capped at the model's size.
        max_task_bytes: Most bytes one task may announce (without ``spec``).
        max_attempts: Give up after this many failed connection attempts in a row
            (None: no count limit; ``retry_for`` still applies).
        retry_for: Give up after this many seconds of failed attempts in a row
            (None: keep trying).
        backoff: First reconnection delay in seconds; doubles each failure, with jitter.
        max_backoff: Longest reconnection delay.
        heartbeat: Seconds between heartbeats until the server sets its own interval.
        stop: Set this event to leave, even in the middle of a session.

    Returns:
        How the participation ended.

    Raises:
        Refused: the server refused this client for good (the message names the cause).
        ConnectionError: the server stayed unreachable past ``max_attempts`` or ``retry_for``.
        covey.transport.grpc.AddressError: ``address`` is not ``host:port``.
    """
    if tls is None and not insecure:
        raise ValueError("connect() needs tls=ClientTLS(...) or insecure=True")
    if tls is not None and insecure:
        raise ValueError("give tls= or insecure=True, not both")
    check_address(address, listen=False)
    props = dict(client.properties()) if hasattr(client, "properties") else {}
    props.update(properties or {})
    if properties:
        client = WithProperties(client, dict(properties))
    limits = TaskLimits.of(spec, max_task_bytes)
    stop = stop or threading.Event()
    result = ConnectResult()
    budget = RetryBudget(backoff, max_backoff, retry_for, max_attempts)
    options = grpc_options()
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    strikes = 0  # TLS handshakes the server closed in a row
    while not stop.is_set():
        session = _Session(client, name, props, heartbeat, limits)
        result.sessions += 1
        error = _session(session, _channel(address, tls, options), result, stop)
        if error is None:
            return result
        if stop.is_set():
            break
        if session.welcomed:
            budget.success()
        strikes = strikes + 1 if tls is not None and error.startswith(_CLOSED) else 0
        if strikes >= HANDSHAKE_STRIKES:
            raise Refused(handshake_refusal(strikes))
        delay = budget.next_delay()
        if delay is None:
            raise ConnectionError(
                f"could not stay connected to {address} after {budget.failures} attempt(s): {error}"
            )
        logger.warning("connection to %s lost (%s); retrying in %.1f s", address, error, delay)
        stop.wait(delay)
    return result


_CLOSED = "handshake closed: "


def _channel(address: str, tls: ClientTLS | None, options: list[tuple[str, Any]]) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
    return grpc.secure_channel(address, creds, options=options)


def _session(
    session: _Session, channel: grpc.Channel, result: ConnectResult, stop: threading.Event
) -> str | None:
    """Run one session; None when the participation is over, else why the session ended."""
    try:
        session.run(channel, result, stop)
        return "the server closed the stream"
    except _Goodbye as bye:
        result.reason = bye.reason
        logger.info("the server said goodbye: %s", bye.reason)
        return None
    except grpc.RpcError as exc:
        if stop.is_set():
            result.reason = "stopped"
            return None
        cause = permanent_cause(exc)
        if cause is not None:
            raise Refused(cause) from None
        code = exc.code() if hasattr(exc, "code") else None
        text = f"{code}: {exc.details() if hasattr(exc, 'details') else exc}"
        return _CLOSED + text if handshake_closed(exc) else text
    except ConnectionError as exc:
        return str(exc)
    finally:
        channel.close()
