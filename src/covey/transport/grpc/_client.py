"""The client side of the gRPC transport: dial out, receive tasks, reply, reconnect.

A client opens one long-lived stream to the server (so sites behind NAT and
firewalls work), performs each task it is pushed with the client runtime and
streams the reply back as chunk frames (:mod:`._frames`). When the connection
drops it reconnects with exponential backoff and jitter, until the server says
goodbye.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from covey.clients._client import ClientLike, task_kinds
from covey.core._messages import Count, Real, plain_count, plain_real
from covey.core._text import clipped
from covey.core._version import covey_version
from covey.core._weights import WeightsSpec
from covey.strategies._names import FLOWER_CONNECT, flower_keywords
from covey.transport.grpc import _wire
from covey.transport.grpc._attempt import CLOSED as _CLOSED
from covey.transport.grpc._attempt import Goodbye as _Goodbye
from covey.transport.grpc._attempt import end_of as _session
from covey.transport.grpc._attempt import retry_delay
from covey.transport.grpc._checks import (
    MAX_TASK_BYTES,
    TaskLimits,
    WithProperties,
    check_address,
    check_client,
    check_heartbeat,
    own_name,
    stated_properties,
)
from covey.transport.grpc._frames import (
    PROTOCOL,
    Download,
    FrameError,
    control,
    is_chunk,
    server_message,
    welcome_heartbeat_of,
)
from covey.transport.grpc._lane import ClientLanes
from covey.transport.grpc._options import (
    METHOD,
    ClientTLS,
    client_security,
    grpc_options,
    open_channel,
)
from covey.transport.grpc._refusal import (
    Refused,
    RetryBudget,
    end_if_refused,
    server_named,
    unanswered,
)
from covey.transport.grpc._stream import Buffers
from covey.transport.grpc._tasks import ConnectResult, drop_queued, refuse_task
from covey.transport.grpc._taskthread import (
    Shared,
    join_task_thread,
    left_behind,
    serve_tasks,
    wait_for_task_thread,
)
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = ["ClientTLS", "ConnectResult", "connect"]

logger = logging.getLogger("covey")


SILENCE = 6  # heartbeat intervals of silence after which the peer is taken for gone
CANCEL_GRACE = 10.0  # seconds a cancelled call has to end before it is given up
QUEUED_TASKS = 4  # tasks held while one runs: a server sends the next once it is answered

_END = object()
_WAKE = object()  # re-read the heartbeat interval


class _Session:
    """One connection: a request generator fed by a queue, and the response loop."""

    def __init__(
        self,
        client: Any,
        name: str,
        properties: dict[str, Any],
        heartbeat: float,
        limits: TaskLimits,
        buffers: Buffers | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.client = client
        # The result it changes while it is live, and the right to run a task on the client.
        self.shared = shared if shared is not None else Shared()
        self.token = self.shared.begin()
        self.ended = threading.Event()  # close() was called: a task waiting to run is dropped
        self.stop: threading.Event | None = None  # set to leave: close() waits for no task
        self.limits = limits
        # The receive buffer of the last task, for the next (see Buffers).
        self.buffers = buffers
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.heartbeat = heartbeat
        self.last_heard = time.monotonic()
        self.hello = pb.Hello(
            version=covey_version(),
            name=name,
            properties=_wire.dumps(properties),
            kinds=list(task_kinds()),
            protocol=PROTOCOL,
            data_lane=True,
        )
        self.lanes = ClientLanes("", None, None)
        self.call: Any = None
        # Read and written by the reading, the request and the session's threads: the
        # checks and settings of gone, leaving and cancelled_at go under this lock.
        self._lock = threading.Lock()
        self.gone = False  # the server was silent too long: the call is cancelled
        self.leaving = False  # stop was set: the call is cancelled
        self.cancelled_at: float | None = None  # when the call was first cancelled (monotonic)
        # When the server must have welcomed this client (a monotonic time; None: gRPC's
        # own bound), and why the attempt was given up once it had not.
        self.answer_by: float | None = None
        self.unanswered = ""
        # The host the server's certificate is checked against, when not the address's.
        self.server_name: str | None = None
        self.welcomed = False
        self.welcomed_at = 0.0  # when (a monotonic time)
        self.refused = ""  # why this client refused a task, and so the server
        self.received = 0  # tasks the server sent it that it took (their headers checked)
        self.cid = -1
        self.worker: threading.Thread | None = None
        # Tasks run on their own thread, so the stream keeps being read (and the
        # server's heartbeats heard) during a long fit.
        self.tasks: queue.Queue[Any] = queue.Queue()

    def requests(self) -> Iterator[bytes]:
        """The request stream; only it writes, so a reply's chunk frames are never interleaved."""
        yield control(pb.ClientMessage(hello=self.hello))
        while True:
            try:
                # Beat twice per interval so one late beat never looks like a death.
                item = self.outbound.get(timeout=self.heartbeat / 2)
            except queue.Empty:
                if self.buffers is not None:
                    self.buffers.release()  # the last task's buffer, once its reply is sent
                if self._gone():
                    return
                yield _HEARTBEAT
                continue
            if item is _END:
                return
            if item is _WAKE:
                continue
            try:
                yield from item
            except OSError as exc:  # its data connection failed: a new session
                logger.warning("sending a reply failed: %s; reconnecting", exc or "closed")
                self.cancel()
                return

    def run(self, channel: grpc.Channel, result: ConnectResult, stop: threading.Event) -> None:
        join = channel.stream_stream(METHOD)  # frames as bytes, see _frames
        self.call = join(self.requests())
        self.stop = stop
        self.worker = threading.Thread(
            target=serve_tasks, args=(self, _END), name=f"covey-task-{self.token}", daemon=True
        )
        self.worker.start()
        ended = threading.Event()
        failed: list[BaseException] = []
        reader = threading.Thread(
            target=self._read, args=(result, ended, failed), name="covey-read", daemon=True
        )
        reader.start()
        try:
            self._watch(stop, ended)  # on this thread, which a stuck call cannot hold
        except ConnectionError:
            if not self.refused:  # else its refusal is why it ended
                raise
        finally:
            self.close()
        if failed:
            raise failed.pop()
        if self.refused:
            raise Refused(self.refused)

    def _read(self, result: ConnectResult, ended: threading.Event, failed: list[Any]) -> None:
        """Read the server's frames until the call ends; what ended it goes in ``failed``."""
        download: Download | None = None
        try:
            for frame in self.call:
                self.last_heard = time.monotonic()
                if is_chunk(frame):
                    if download is None and self.refused:  # the refused task's bytes
                        continue
                    if download is None:
                        raise ConnectionError(
                            f"the server sent a chunk frame of {len(frame) - 1} bytes for no task"
                        )
                    if download.write(frame):
                        task = (self.cid, download.header, download.buffer, download.intact)
                        self.tasks.put(task)
                        del task
                        download = None
                    continue
                if download is not None:
                    raise ConnectionError(
                        f"the server sent a control frame in the middle of a task "
                        f"({download.filled} of {len(download.buffer)} bytes received)"
                    )
                download = self._control(frame, result)
        except grpc.RpcError as exc:
            if not self.refused:
                failed.append(exc)
        except BaseException as exc:  # noqa: BLE001 - raised by run, on the session's thread
            failed.append(exc)
        finally:
            # gRPC's error for a lost stream is the call itself, held by the frames of its
            # traceback, this one among them: the model half received is let go now, not
            # at the collector's next full pass, while the client reconnects.
            download = None
            ended.set()

    def _control(self, frame: bytes, result: ConnectResult) -> Download | None:
        """Act on a control frame from the server; a task with arrays starts a download."""
        try:
            message = server_message(frame)
        except FrameError as exc:
            raise ConnectionError(f"the server sent {exc}") from None
        body = message.WhichOneof("body")
        if body == "welcome":
            self._welcome(message.welcome, result)
        elif body == "task":
            header = message.task
            if self.refused:
                return None
            if self.tasks.qsize() >= QUEUED_TASKS:  # before its config or bytes are held
                raise ConnectionError(
                    f"the server sent a task while {self.tasks.qsize()} of its tasks waited for "
                    "this client's current one (a server sends one at a time; at most "
                    f"{QUEUED_TASKS} are held)"
                )
            try:
                size = self.limits.check(header)
            except ConnectionError as exc:  # its model will not shrink: leave for good
                self.refused = refuse_task(header, str(exc), self.outbound.put, _END, self)
                return None
            self.received += 1  # the server chose this client for a task: it got through
            if size and header.data_lane:  # its bytes come on the data connection
                if self.lanes.down is None:
                    raise ConnectionError("the server sent a task's bytes on no data connection")
                download = Download(header, size, self.buffers)
                download.receive(self.lanes.down, self._heard)
                self.tasks.put((self.cid, header, download.buffer, download.intact))
            elif size:
                return Download(header, size, self.buffers)
            else:
                self.tasks.put((self.cid, header, None, True))
        elif body == "heartbeat" and message.heartbeat.HasField("refusal"):
            self.shared.told.heard(message.heartbeat.refusal)  # this site's reply refused
        elif body == "goodbye" and not self.refused:  # else this client's refusal is the end
            raise _Goodbye(clipped(message.goodbye.reason, 1000))  # a peer's text
        return None

    def _welcome(self, welcome: pb.Welcome, result: ConnectResult) -> None:
        heartbeat = welcome_heartbeat_of(welcome)  # or Refused, at once: it would not change
        self.welcomed, self.welcomed_at = True, time.monotonic()
        self.cid = int(welcome.cid)
        with self.shared.changing(self.token) as live:  # None: a call given up
            if live is not None:
                live.cid = self.cid
        if heartbeat is not None:
            self.heartbeat = heartbeat
            self.outbound.put(_WAKE)
        logger.info(
            "connected as %s (id %d) to %s",
            clipped(welcome.name, 300),  # a peer's text
            self.cid,
            server_named(welcome.version),
        )
        if welcome.data_port:  # the server holds back tasks until it hears they are open
            self.lanes.open(welcome.data_port, welcome.data_token, SILENCE * self.heartbeat)
            self.last_heard = time.monotonic()  # the stream was not read meanwhile
            self.outbound.put([_DATA_READY])

    def _heard(self) -> None:
        self.last_heard = time.monotonic()

    def _watch(self, stop: threading.Event, ended: threading.Event) -> None:
        """Until the call ends (``ended``), cancel it on ``stop`` or the server's silence.

        gRPC ends a cancelled call's reading only once its core has completed the
        read under way, which a connection being torn down (a GOAWAY) may never do:
        a call not ended :data:`CANCEL_GRACE` seconds after it was cancelled is given
        up, so the client reconnects on a new channel rather than wait for ever.

        Raises:
            ConnectionError: the cancelled call did not end in time.
        """
        while not ended.wait(0.1):
            if stop.is_set():
                self._leave()
            else:  # a call stuck before it started reads no requests to check it
                self._gone()
            at = self.cancelled_at
            if at is not None and time.monotonic() - at > CANCEL_GRACE:
                raise ConnectionError(
                    f"the call cancelled {CANCEL_GRACE:.0f} s ago did not end; giving it up"
                )

    def _leave(self) -> None:
        """Cancel the call once: stop was set."""
        with self._lock:
            if self.leaving:
                return
            self.leaving = True
        logger.info("leaving the federation (stop was set)")
        self.cancel()

    def cancel(self) -> None:
        """Cancel the call, from any thread; if it does not end, ``_watch`` gives it up."""
        with self._lock:
            if self.cancelled_at is None:
                self.cancelled_at = time.monotonic()
        self.call.cancel()

    def _gone(self) -> bool:
        """Whether the server has said nothing for too long; if so the call is cancelled.

        Before its welcome, the attempt's own bound applies (``answer_by``): a peer that
        takes the connection and never answers holds gRPC for its ~20 s handshake timeout.
        The request stream's thread and the session's both ask; one of them cancels.
        """
        now = time.monotonic()
        with self._lock:
            if self.gone:
                return True
            late = not self.welcomed and self.answer_by is not None and now > self.answer_by
            quiet = late or now - self.last_heard > SILENCE * self.heartbeat
            if not quiet or not self.call or self.lanes.opening:  # opening: no reads
                return False
            self.gone = True
            if late:
                self.unanswered = unanswered((self.answer_by or now) - self.last_heard)
        if not late:
            said = "no word from the server for %.0f s; reconnecting"
            logger.warning(said, SILENCE * self.heartbeat)
        self.cancel()
        return True

    def close(self, deadline: float = 10.0) -> None:
        """End the session: stop the request stream, cancel the call, wait for the task thread.

        Tasks still queued behind the running one are dropped, not run: their
        replies could not be sent, and the server has given up on them.
        """
        self.ended.set()
        drop_queued(self.tasks)
        self.tasks.put(_END)
        self.outbound.put(_END)
        self.lanes.close()
        if self.call is not None:
            self.call.cancel()  # ends gRPC's threads for this call now, not at exit
        join_task_thread(self.worker, deadline, self.stop)
        self.shared.abandon(self.token)  # a task finishing later changes nothing


_HEARTBEAT = control(pb.ClientMessage(heartbeat=pb.Heartbeat()))
_DATA_READY = control(pb.ClientMessage(heartbeat=pb.Heartbeat(data_ready=True)))


@flower_keywords(FLOWER_CONNECT)
def connect(
    client: ClientLike,
    address: str,
    *,
    tls: ClientTLS | None = None,
    insecure: bool = False,
    name: str = "",
    properties: dict[str, Any] | None = None,
    spec: WeightsSpec | None = None,
    max_task_bytes: Count = MAX_TASK_BYTES,
    max_attempts: Count | None = None,
    retry_for: Real | None = 600.0,
    backoff: Real = 0.5,
    max_backoff: Real = 30.0,
    heartbeat: Real = 5.0,
    stop: threading.Event | None = None,
    server_name: str | None = None,
) -> ConnectResult:
    """Join the federation at ``address`` and serve tasks until the server says goodbye.

    The client dials out (so it works behind NAT and firewalls) and reconnects with exponential
    backoff and jitter when the connection drops. A refusal retrying cannot change (certificate
    not trusted or revoked, an incompatible covey version, the run is over) ends it at once; a
    server interrupted before its run was over (its goodbye says so) is reconnected to, as a
    lost connection.

    Args:
        client: A :class:`covey.Client` (the same object that runs in simulation), or
            another object with a ``fit`` method (:class:`~covey.clients.ClientLike`).
        address: The server's ``host:port``.
        tls: Certificates for mutual TLS (the default for real deployments).
        insecure: Connect without TLS; only for local experiments.
        name: The client's name on an insecure server (with TLS the certificate names it).
            Without one, the client picks ``anonymous-`` and 8 random hex digits, kept across
            its reconnections, so the server sees one client, not one per connection.
        properties: Facts the server may select clients by (``Strategy(where=...)``) or
            give a client its own config by (``on_client_fit_config``), merged over
            ``client.properties()``; the server reads them when it asks.
        spec: The model's layout; tasks announcing more bytes than the model (and
            extra arrays of its size) are refused, and arrays inside configs are
            capped at the model's size.
        max_task_bytes: Most bytes one task may announce (without ``spec``).
        max_attempts: Give up after this many failed connection attempts in a row
            (None: no count limit; ``retry_for`` still applies). A session the server
            ends before it sent a task, and within a minute
            (:data:`~._refusal.STEADY_SECONDS`), counts as one.
        retry_for: Give up after this many seconds of failed attempts in a row
            (None: keep trying).
        backoff: First reconnection delay in seconds; doubles each failure, with jitter.
        max_backoff: Longest reconnection delay.
        heartbeat: Seconds between heartbeats until the server sets its own interval.
        stop: Set this event to leave, even in the middle of a session.
        server_name: The host name the server's certificate is checked against (and sent
            as SNI) when it is not the host of ``address``: an IP address, or a load
            balancer's name, in front of a server whose certificate names another host.
            Overrides ``tls.server_name``; needs ``tls``.

    Returns:
        How the participation ended.

    Raises:
        Refused: the server refused this client for good (the message names the cause).
        ConnectionError: the server stayed unreachable past ``max_attempts`` or ``retry_for``.
        covey.transport.grpc.AddressError: ``address`` is not ``host:port``.
        ValueError: a setting is out of range (a negative ``backoff``, a ``heartbeat``
            of 0, ...), naming it; or neither or both of ``tls`` and ``insecure``.
        TypeError: ``client`` is a class, a ``client_fn`` or None rather than a client; a
            keyword is not one of these (Flower's names covey's); or ``client.properties()``
            returned no dict, or values the network cannot carry (its error gets a note).
    """
    check_client(client)
    max_task_bytes, max_attempts = plain_count(max_task_bytes), plain_count(max_attempts)
    retry_for, backoff = plain_real(retry_for), plain_real(backoff)
    max_backoff, heartbeat = plain_real(max_backoff), plain_real(heartbeat)
    tls = client_security(tls, insecure, server_name)
    host = check_address(address, listen=False)[0]
    pems = None if tls is None else (tls.ca, tls.cert, tls.key)
    name = own_name(name, tls)
    check_heartbeat(heartbeat)
    limits = TaskLimits.of(spec, max_task_bytes)
    budget = RetryBudget(backoff, max_backoff, retry_for, max_attempts)
    props = stated_properties(client, properties)
    if properties:
        client = WithProperties(client, dict(properties))
    stop = stop or threading.Event()
    shared = Shared(ConnectResult())
    options = grpc_options()
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    strikes = 0  # TLS handshakes the server closed in a row
    running: threading.Thread | None = None  # the last session's task thread
    # A client training in place replies from its receive buffer, which the next task's
    # arrays may be written into (Buffers); others free it at once, never holding both.
    buffers = Buffers() if getattr(client, "writes_weights", False) is True else None
    result = shared.result
    try:
        while not wait_for_task_thread(running, stop, budget, shared):
            session = _Session(client, name, props, heartbeat, limits, buffers, shared)
            session.server_name = tls.server_name if tls is not None else None
            session.lanes = ClientLanes(host, pems, session.server_name)
            session.answer_by = budget.attempt_deadline()  # within what is left of retry_for
            performed = result.tasks
            error = _session(session, open_channel(address, tls, options), result, stop)
            shared.abandon(session.token)  # had the call not even started
            if session.welcomed:  # a connection attempt that failed is no session
                result.sessions += 1
            if error is None:
                return result
            running = session.worker
            if stop.is_set():
                break
            strikes = strikes + 1 if error.startswith(_CLOSED) else 0  # with TLS or without
            end_if_refused(strikes, tls.cert if tls is not None else None, insecure=tls is None)
            stop.wait(retry_delay(budget, session, result, performed, address, error))
        return result
    finally:
        left_behind(shared)  # a task still running is not waited for
