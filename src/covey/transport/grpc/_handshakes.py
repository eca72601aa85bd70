"""Failed TLS handshakes, with the peer's address, although gRPC reports none of them.

gRPC checks client certificates inside its C core and tells Python nothing
about a connection whose handshake fails. Its dynamic server credentials do
call into Python once per new connection, before that connection's handshake
(to ask for a certificate update, :meth:`HandshakeWatch.fetch`); at that moment
gRPC has accepted the connection, so its socket is among this process's open
files (``/proc/self/fd``) and ``getpeername`` on a duplicate of it names the
peer. The watch notes each new peer found so, and a background thread settles
it: *established* when a stream from the peer reaches the service or gRPC's
channelz lists a socket from it, *failed* when its connection is gone without
either. A failure is logged with the peer's address and recorded as a
``refused`` fleet event; past a host's first 8 failures only the 16th, 32nd,
64th... are reported, with the count, so a scanner cannot fill the run's log;
every failure is counted among the connections refused while the server waits
for clients (named when a run stops short of them).

gRPC does not say which end refused: a client that refuses this server's
certificate (most often for a host name the certificate does not list) fails
here just as a client this server refuses. The report names both, with the
hosts the server certificate lists.

On systems without ``/proc/self/fd`` nothing is recorded (gRPC's own log line
remains). A connection that completes the handshake and closes within a poll
interval without opening a stream is also reported (as not having made a call).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["HandshakeWatch", "certificate_hosts", "parse_peer"]

logger = logging.getLogger("covey")

Peer = tuple[str, int]
"""A remote address: host (IPv4 dotted, or IPv6) and port."""
Ends = tuple[int, str, int]
"""A connection's local port, peer host and peer port."""

FDS = Path("/proc/self/fd")
POLL = 0.2
"""Seconds between checks of the connections waiting to be settled."""
BUDGET = 0.05
"""Most CPU seconds a second :meth:`HandshakeWatch.fetch` spends listing this process's
sockets (past it, new connections are counted, not traced), and the most CPU time per
second of waiting the background thread spends settling."""
GONE_KEPT = 60.0
"""Seconds a settled connection found gone is remembered, so that a listing that saw it
open before it closed does not take it for a new connection."""
FIRST_REPORTED = 8
"""Failures of one host reported each; after them, only the 16th, 32nd, 64th..."""
MAX_HOSTS = 10_000
"""Most hosts whose failures are counted; past it, the counts start again."""
FAILED = "TLS handshake failed or no call was made"
WHY = (
    "either the client refused this server's certificate (e.g. it dialled a host name the "
    "certificate does not list{hosts}), or this server refused the client: no client "
    "certificate, one the federation's CA did not sign, one not valid by this server's clock "
    "(expired, or not valid yet: check the clocks), or not a covey client"
)
"""Why, in both directions: gRPC does not tell which end refused (``{hosts}``: those listed)."""


def certificate_hosts(cert: bytes) -> list[str]:
    """The DNS names and IP addresses a PEM certificate lists (empty if it cannot be read)."""
    from cryptography import x509

    try:
        found = x509.load_pem_x509_certificate(cert)
        san = found.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    names = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    return names + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def parse_peer(peer: str) -> Peer | None:
    """``(host, port)`` of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``), else None."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("ipv4", "ipv6") or not port.isdigit():
        return None
    host = host.strip("[]")
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(port)


def _channelz_peers() -> set[Peer]:
    """Peers of every server socket gRPC's channelz lists in this process (empty if unavailable)."""
    try:
        from grpc._cython import cygrpc
    except ImportError:  # pragma: no cover - grpc without its compiled core
        return set()
    peers: set[Peer] = set()
    with contextlib.suppress(Exception):
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        for server in servers:
            sid = int(server["ref"]["serverId"])
            start = 0
            while True:
                page = json.loads(cygrpc.channelz_get_server_sockets(sid, start, 1000))
                refs = page.get("socketRef", [])
                for ref in refs:
                    found = parse_peer(str(ref.get("name", "")).rpartition(" ")[2])
                    if found is not None:
                        peers.add(found)
                if page.get("end", True) or not refs:
                    break
                start = int(refs[-1]["socketId"]) + 1
    return peers


class _Sockets:
    """This process's TCP connections, by descriptor: local port and peer (cached per socket)."""

    def __init__(self) -> None:
        """An empty cache."""
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, Ends | None]] = {}  # fd -> (its link, its ends)

    def peers(self, port: int) -> set[Peer] | None:
        """Peers of this process's connections to local ``port``; None without ``/proc``."""
        try:
            fds = os.listdir(FDS)
        except OSError:
            return None
        found: set[Peer] = set()
        with self._lock:
            known, self._known = self._known, {}
            for fd in fds:
                try:
                    link = os.readlink(FDS / fd)
                except OSError:  # closed meanwhile (or the listing's own descriptor)
                    continue
                if not link.startswith("socket:"):
                    continue
                cached = known.get(fd)
                ends = cached[1] if cached is not None and cached[0] == link else _ends(fd)
                self._known[fd] = (link, ends)
                if ends is not None and ends[0] == port:
                    found.add((ends[1], ends[2]))
        return found


def _ends(fd: str) -> Ends | None:
    """``(local port, peer host, peer port)`` of a connected TCP socket descriptor, else None."""
    try:
        sock = socket.socket(fileno=os.dup(int(fd)))  # a duplicate: closing it ends nothing
    except (OSError, ValueError):
        return None
    with sock:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            local, remote = sock.getsockname(), sock.getpeername()
        except OSError:  # listening, or not connected
            return None
    host = str(remote[0])
    if host.startswith("::ffff:") and "." in host:  # an IPv4 peer of a dual-stack socket
        host = host[len("::ffff:") :]
    return int(local[1]), host, int(remote[1])


class HandshakeWatch:
    """Notices connections whose TLS handshake fails and reports each with its peer's address.

    Args:
        record: ``(name, event, detail)``, called with ``(peer, "refused", why)`` for each
            reported failure.
        hosts: The host names and addresses the server's certificate lists, named when a
            client may have refused it.
        count: ``(host)``, called for every failure, reported or not (to count it).
    """

    def __init__(
        self,
        record: Callable[[str, str, str], None],
        hosts: Sequence[str] = (),
        count: Callable[[str], None] | None = None,
    ) -> None:
        """A watch that records through ``record``; :attr:`port` is set once the server listens."""
        self.record = record
        self.count = count
        listed = f"; it lists {', '.join(hosts)}" if hosts else ""
        self._why = WHY.format(hosts=listed)
        self.port = 0
        self._lock = threading.Lock()
        self._pending: dict[Peer, float] = {}
        self._settled: set[Peer] = set()
        # Settled peers since found gone, with when: a listing begun before then may have
        # seen their connection still open, and must not take it for a new one.
        self._gone: dict[Peer, float] = {}
        self._streams: set[Peer] = set()
        self._failures: dict[str, int] = {}
        self._reads: list[tuple[float, float]] = []  # (when, seconds) of recent reads
        self.untraced = 0
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._sockets = _Sockets()
        self.enabled = FDS.is_dir()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="covey-handshakes", daemon=True)
            self._thread.start()

    def fetch(self) -> None:
        """The certificate-update hook of gRPC, called before each new connection's handshake.

        Notes the peers newly connected to :attr:`port`; returns None (no new
        certificate). Never raises: an exception here would be logged by gRPC as a
        failed certificate update.
        """
        try:
            self._note_new()
        except Exception:  # a hook of gRPC's C core must not raise
            logger.debug("handshake watch: reading the connection table failed", exc_info=True)

    def saw(self, peer: str) -> None:
        """A stream from ``peer`` (a gRPC peer string) reached the service: its handshake passed."""
        found = parse_peer(peer) if self.enabled else None
        if found is not None:
            with self._lock:
                self._streams.add(found)

    def close(self) -> None:
        """Stop the background thread (connections still pending are not reported).

        Called before the server stops: connections it cuts as it stops did not fail
        their handshakes.
        """
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)

    # -- internals ---------------------------------------------------------------------

    def _note_new(self) -> None:
        if not self.enabled or not self.port or self._closed.is_set():
            return
        now = time.monotonic()
        with self._lock:
            self._reads = [(t, d) for t, d in self._reads if now - t < 1.0]
            if sum(d for _, d in self._reads) >= BUDGET:
                self.untraced += 1
                if not self.untraced & (self.untraced - 1):
                    logger.warning(
                        "%d new connections came too fast to trace: failed handshakes "
                        "among them are not recorded",
                        self.untraced,
                    )
                return
        cpu = time.thread_time()
        peers = self._sockets.peers(self.port)
        took = time.thread_time() - cpu
        if peers is None:
            return
        listed = time.monotonic()  # each peer was connected before this
        with self._lock:
            self._reads.append((now, took))
            for peer in peers - self._settled:
                if self._gone.get(peer, -1.0) < now:  # not an old connection, gone since
                    self._pending.setdefault(peer, listed)
        self._wake.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait()
            self._wake.clear()
            pause = POLL
            while not self._closed.wait(pause):
                began = time.thread_time()
                if not self._settle():
                    break
                pause = max(POLL, (time.thread_time() - began) / BUDGET)

    def _settle(self) -> bool:
        """Settle what can be settled; True while connections remain pending."""
        with self._lock:
            if not self._pending:
                self._streams.clear()
                return False
        began = time.monotonic()
        current = self._sockets.peers(self.port) or set()
        live = _channelz_peers()
        failed: list[Peer] = []
        with self._lock:
            now = time.monotonic()
            passed = live | self._streams
            self._streams.clear()
            for peer, noted in list(self._pending.items()):
                if peer in passed:
                    del self._pending[peer]
                    self._settled.add(peer)
                elif peer not in current and noted < began:  # gone, not yet listed
                    del self._pending[peer]
                    failed.append(peer)
            # A closed connection's address may come back: forgotten, and noted as gone.
            self._gone = {p: t for p, t in self._gone.items() if now - t < GONE_KEPT}
            self._gone.update(dict.fromkeys(self._settled - current, now))
            self._settled &= current
            remaining = bool(self._pending)
        if self._closed.is_set():  # the server is stopping: it cut them
            return False
        for peer in failed:
            self._report(peer)
        return remaining

    def _report(self, peer: Peer) -> None:
        host, port = peer
        if self.count is not None:
            try:
                self.count(host)
            except Exception:  # never stop the watch
                logger.debug("handshake watch: counting failed", exc_info=True)
        name = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        if len(self._failures) > MAX_HOSTS:
            self._failures.clear()
        count = self._failures[host] = self._failures.get(host, 0) + 1
        if count > FIRST_REPORTED and count & (count - 1):  # then the 16th, 32nd, 64th...
            return
        detail = f"{FAILED}: {self._why} (peer {name}; failure {count} from {host})"
        logger.warning("refused a connection from %s: %s", name, detail)
        try:
            self.record(name, "refused", detail)
        except Exception:  # the recorder logs its own failures; never stop the watch
            logger.debug("handshake watch: recording failed", exc_info=True)
