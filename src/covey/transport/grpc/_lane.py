"""Data connections: a deployed client's bulk bytes on TCP beside its gRPC stream.

gRPC's Python API hands over each message it receives as a new ``bytes``
object, which the receiver then copies into the message's buffer: two copies
of every byte of a model beyond the kernel's. A server started with a data
port (``serve(data_port=...)``, ``covey server --data-port``) offers each
client two plain TCP connections (one per direction, under TLS when the stream
has TLS), on which a task's or a reply's arrays go as raw bytes: the receiver
reads them straight into the message's buffer (``recv_into``), the sender
writes them straight from the arrays. Headers, sizes, checksums and every
limit stay on the gRPC stream, checked as before; a data connection carries
only the bytes a checked header announced.

A data connection proves whose it is with the 32-byte token the server gave
that client's stream in its Welcome (and, under TLS, with the same certificate
as the stream). A client that cannot open them goes on with chunk frames.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from covey.core import _codec

logger = logging.getLogger("covey")

TOKEN_BYTES = 32
DOWN = 1  # server to client: the bytes of tasks
UP = 2  # client to server: the bytes of replies
ACK = b"\x01"
HANDSHAKE_SECONDS = 10.0  # to connect, finish TLS and present the token
MAX_HANDSHAKES = 64  # data connections being identified at once; more are closed at once
READY_WAIT = 2 * HANDSHAKE_SECONDS + 1  # most a first task waits for them to be opened
PIECE = 4 * 1024 * 1024  # bytes moved per system call, between progress checks


def new_token() -> bytes:
    """A fresh random token for one client stream's data connections."""
    return secrets.token_bytes(TOKEN_BYTES)


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a PEM certificate and key held in memory (``ssl`` reads them only from files)."""
    with tempfile.TemporaryDirectory(prefix="covey-tls-") as folder:  # mode 0700
        paths = []
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])


def server_context(ca: bytes, cert: bytes, key: bytes) -> ssl.SSLContext:
    """TLS for the server's data port: its certificate; clients must show one from ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
    _load_chain(context, cert, key)
    return context


def client_context(ca: bytes, cert: bytes | None, key: bytes | None) -> ssl.SSLContext:
    """TLS for a client's data connections: the server checked against ``ca``, its name too."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
    if cert and key:
        _load_chain(context, cert, key)
    return context


def cut(sock: socket.socket | None) -> None:
    """Close ``sock`` so that a thread blocked reading or writing it wakes up at once."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under TLS too
    with contextlib.suppress(OSError):
        sock.close()


def receive(
    sock: socket.socket, target: memoryview, took: Callable[[memoryview], Any] | None = None
) -> None:
    """Fill ``target`` from ``sock``, then hand the bytes that came to ``took``.

    ``took`` gets them all, or as many as came before a failure.

    Raises:
        ConnectionError: the peer closed the connection first.
        OSError: the connection failed, or went silent past its timeout.
    """
    filled = 0
    try:
        while filled < len(target):
            got = sock.recv_into(target[filled:])
            if not got:
                raise ConnectionError(
                    f"the data connection closed {filled} bytes into a piece of {len(target)}"
                )
            filled += got
    finally:
        if took is not None and filled:
            took(target[:filled])


def send(
    sock: socket.socket, *blobs: _codec.Encoded | None, progress: Callable[[], Any] | None = None
) -> None:
    """Write the bytes of ``blobs`` on ``sock``, straight from their arrays.

    Written in pieces of :data:`PIECE` so that a socket timeout bounds each
    piece, not the whole message; ``progress`` is called after each.
    """
    for blob in blobs:
        if blob is None:
            continue
        for segment in blob.segments:
            view = memoryview(segment).cast("B")
            for start in range(0, len(view), PIECE):
                sock.sendall(view[start : start + PIECE])
                if progress is not None:
                    progress()


def _exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes read from ``sock`` (a short read is a closed connection)."""
    data = bytearray(size)
    receive(sock, memoryview(data))
    return bytes(data)


def open_lane(
    host: str,
    port: int,
    direction: int,
    token: bytes,
    context: ssl.SSLContext | None,
    server_name: str | None,
    timeout: float,
) -> socket.socket:
    """A client's data connection of ``direction``, accepted by the server.

    Raises:
        OSError: it could not be opened, or the server did not accept it.
    """
    sock = socket.create_connection((host, port), timeout=HANDSHAKE_SECONDS)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=server_name or host)
        sock.sendall(bytes([direction]) + token)
        try:
            answer = _exactly(sock, 1)
        except ConnectionError:
            answer = b""
        if answer != ACK:
            raise ConnectionError(
                "the server closed the data connection without taking it (a token it does not "
                "know, or as many connections being identified as it takes at once)"
            )
        sock.settimeout(timeout)
        return sock
    except BaseException:
        cut(sock)
        raise


Attach = Callable[[int, bytes, socket.socket], str | None]
Refused = Callable[[str, str], None]


class LaneListener:
    """The server's data port: accepts data connections and hands each to its client's stream.

    Args:
        host: The host the gRPC server listens on.
        port: The data port (0: a free one).
        context: TLS for the data port; None without TLS.
        attach: ``(direction, token, socket) -> why``: None when the connection
            belongs to a connected client (which then owns it), else why not.
        refused: ``(host, detail)``, told of refused connections as they are logged
            (the 1st, 2nd, 4th, ...), to record them as the run's events.
        count: ``(host, why)``, told of every refused connection, to count it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        attach: Attach,
        refused: Refused | None = None,
        count: Refused | None = None,
    ) -> None:
        """Listen on ``host:port``; raises OSError if it cannot."""
        self._context = context
        self._attach = attach
        self._told = refused
        self._counted = count
        self._slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
        if host in ("0.0.0.0", "::"):  # noqa: S104 - every address, as the stream's address says
            dual = host == "::" and socket.has_dualstack_ipv6()
            family = socket.AF_INET6 if dual else socket.AF_INET
            self._sock = socket.create_server(("", port), family=family, dualstack_ipv6=dual)
        else:  # the host's first address (as a client dialling it tries first)
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._sock = socket.create_server((host, port), family=family)
        self.port: int = self._sock.getsockname()[1]
        self.refused = 0  # data connections closed without being taken
        self._count = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="covey-data-port", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self._refuse(sock, peer, f"more than {MAX_HANDSHAKES} identifying at once")
                continue
            threading.Thread(
                target=self._identify, args=(sock, peer), name="covey-data-hello", daemon=True
            ).start()

    def _identify(self, sock: socket.socket, peer: Any) -> None:
        """Take a new data connection if its first bytes are a direction and a live token.

        It has :data:`HANDSHAKE_SECONDS` in all (TLS included), not per read: a
        peer trickling a byte at a time cannot keep its slot.
        """
        try:
            spare = sock.dup()  # shut down when time is up: ends the connection, TLS or not
        except OSError as exc:
            self._slots.release()
            self._refuse(sock, peer, str(exc))
            return
        watchdog = threading.Timer(HANDSHAKE_SECONDS, lambda: cut(spare))
        watchdog.daemon = True
        watchdog.start()
        try:
            sock.settimeout(HANDSHAKE_SECONDS)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_side=True)
            first = _exactly(sock, 1 + TOKEN_BYTES)
            watchdog.cancel()
            why = (
                self._attach(first[0], first[1:], sock)
                if first[0] in (DOWN, UP)
                else f"it asked for direction {first[0]}, which does not exist"
            )
            if why is not None:
                self._refuse(sock, peer, why)
                return
            sock.sendall(ACK)
        except (OSError, ValueError) as exc:
            self._refuse(sock, peer, str(exc) or type(exc).__name__)
        finally:
            watchdog.cancel()
            spare.close()
            self._slots.release()

    def _refuse(self, sock: socket.socket, peer: Any, why: str) -> None:
        with self._count:
            self.refused += 1
            count = self.refused
        host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        if self._counted is not None:
            self._counted(str(host), why)
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, ...: never a flood
            logger.warning(
                "closed a data connection from %s: %s (%d so far)", _shown(peer), why, count
            )
            if self._told is not None:
                self._told(
                    str(host),
                    f"data connection from {_shown(peer)} closed: {why} ({count} so far)",
                )
        cut(sock)

    def close(self) -> None:
        """Stop listening (data connections already taken stay with their clients)."""
        self._closed = True
        cut(self._sock)
        self._thread.join(5.0)


def _shown(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class DataPort:
    """A server's data port and the tokens of the client streams that may use it.

    Args:
        host: The host the gRPC server listens on.
        port: The data port (0: a free one).
        tls: ``(ca, cert, key)`` PEMs when the streams have TLS; None without.
        timeout: Seconds a data connection may stay silent in the middle of a message.
        refused: ``(host, detail)`` for refused data connections (see :class:`LaneListener`).
        count: ``(host, why)`` for every refused data connection (see :class:`LaneListener`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: tuple[bytes, bytes, bytes] | None,
        timeout: float,
        refused: Refused | None = None,
        count: Refused | None = None,
    ) -> None:
        """Listen on ``host:port``; raises OSError if it cannot."""
        self._tokens: dict[bytes, Any] = {}
        self._lock = threading.Lock()
        self.timeout = timeout
        context = None if tls is None else server_context(*tls)
        self.listener = LaneListener(host, port, context, self._attach, refused, count)
        self.port = self.listener.port

    def offer(self, conn: Any) -> bytes:
        """A new token for ``conn`` (a connection of the registry), to send in its Welcome."""
        token = new_token()
        with self._lock:
            self._tokens[token] = conn
        return token

    def forget(self, token: bytes) -> None:
        """The stream the token was given to ended: it opens nothing any more."""
        with self._lock:
            self._tokens.pop(token, None)

    def _attach(self, direction: int, token: bytes, sock: socket.socket) -> str | None:
        with self._lock:
            conn = self._tokens.get(token)
            if conn is None or not conn.alive:
                return "its token is no connected client's"
            if conn.lanes[direction - 1] is not None:
                return "its client has that connection already"
            if conn.certificate is not None and not _same_certificate(sock, conn.certificate):
                return "it shows another certificate than its client's stream"
            sock.settimeout(self.timeout)
            conn.lanes[direction - 1] = sock
            if all(lane is not None for lane in conn.lanes):
                del self._tokens[token]
        if not conn.alive:  # dropped meanwhile: the drop may have closed its lanes before
            cut(sock)
        return None

    def close(self) -> None:
        """Stop listening; no token opens anything any more."""
        self.listener.close()
        with self._lock:
            self._tokens.clear()


def _same_certificate(sock: socket.socket, pem: bytes) -> bool:
    """Whether a TLS data connection shows the certificate its client's stream showed."""
    shown = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    try:
        return shown is not None and shown == ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except ValueError:
        return False


class ClientLanes:
    """A client session's data connections: one for each direction, either may be missing.

    Args:
        host: The host the client dialled for its stream.
        tls: ``(ca, cert, key)`` PEMs when the stream has TLS; None without.
        server_name: The name the server's certificate is checked against, if not ``host``.
    """

    def __init__(
        self,
        host: str,
        tls: tuple[bytes, bytes | None, bytes | None] | None,
        server_name: str | None,
    ) -> None:
        """No connection yet; :meth:`open` opens them when the server offers a data port."""
        self.host = host
        self.tls = tls
        self.server_name = server_name
        self.down: socket.socket | None = None  # the bytes of tasks
        self.up: socket.socket | None = None  # the bytes of replies
        self.opening = False  # the stream is not read meanwhile: its silence is no death

    def open(self, port: int, token: bytes, timeout: float) -> None:
        """Open both connections to ``port``; a failure leaves the arrays on the stream."""
        if not port:
            return
        self.opening = True
        try:
            if len(token) != TOKEN_BYTES or port > 65535:
                raise ValueError(f"the server offered port {port} with {len(token)} token bytes")
            context = None if self.tls is None else client_context(*self.tls)
            for direction in (DOWN, UP):
                lane = open_lane(
                    self.host, port, direction, token, context, self.server_name, timeout
                )
                if direction == DOWN:
                    self.down = lane
                else:
                    self.up = lane
            logger.info("opened data connections to %s:%d", self.host, port)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            logger.warning(
                "cannot open data connections to %s:%d (%s); %s go on the stream",
                self.host,
                port,
                exc or type(exc).__name__,
                "the arrays" if self.down is None else "replies' arrays",
            )
        finally:
            self.opening = False

    def close(self) -> None:
        """Close both connections."""
        cut(self.down)
        cut(self.up)
        self.down = self.up = None
