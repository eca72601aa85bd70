"""Failed TLS handshakes are logged with the peer's address and stored as run events."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import covey
from covey.deploy import tls_from_dir
from covey.deploy._client import tls_from_certs
from covey.deploy.certs import init_federation, issue_client
from covey.server._store import RunStore
from covey.transport.grpc._handshakes import FDS, HandshakeWatch, _Sockets, parse_peer
from covey.transport.grpc._server import GrpcServerTransport

sys.path.insert(0, str(Path(__file__).parent))
from _live import Events, Fit, Joined, Served

pytestmark = pytest.mark.timeout(120)


@pytest.mark.skipif(not FDS.is_dir(), reason="needs /proc/self/fd")
def test_the_process_sockets_give_the_peers_of_each_connection_to_a_port() -> None:
    sockets = _Sockets()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                # The listener and the client's own end are not connections to the port.
                assert sockets.peers(port) == {("127.0.0.1", client.getsockname()[1])}
                assert sockets.peers(port) == {("127.0.0.1", client.getsockname()[1])}  # cached
            assert sockets.peers(port) == set()


@pytest.mark.skipif(not FDS.is_dir(), reason="needs /proc/self/fd")
def test_ipv6_peers_are_named_by_their_ipv6_address() -> None:
    sockets = _Sockets()
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("::1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert sockets.peers(port) == {("::1", client.getsockname()[1])}


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:50342", ("127.0.0.1", 50342)),
        ("ipv6:[::1]:443", ("::1", 443)),
        ("ipv6:%5B::1%5D:443", ("::1", 443)),
        ("ipv6:[::ffff:127.0.0.1]:9", ("127.0.0.1", 9)),
        ("unix:/tmp/socket", None),
        ("ipv4:127.0.0.1", None),
    ],
)
def test_grpc_peer_strings_parse_to_addresses(peer: str, expected: object) -> None:
    assert parse_peer(peer) == expected


def _no_certificate(port: int, ca: Path) -> int:
    """A TLS client that trusts the server but shows no certificate; its local port."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    return _handshake(port, context)


def _foreign_certificate(port: int, ca: Path, other: Path) -> int:
    """A TLS client with a certificate from another federation's CA; its local port."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    context.load_cert_chain(other / "clients" / "x.pem", other / "clients" / "x.key")
    return _handshake(port, context)


def _handshake(port: int, context: ssl.SSLContext) -> int:
    """Try a TLS handshake (TLS 1.3: a refusal comes after it); the client's local port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        local = int(raw.getsockname()[1])
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    return local


def _garbage(port: int) -> int:
    """Not TLS at all; its local port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        local = int(raw.getsockname()[1])
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(10)
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass
    return local


def _joined(run: Path, name: str) -> bool:
    with RunStore.open(run) as store:
        return any(client == name and event == "join" for _, client, event, _ in store.events())


def _refusals(run: Path) -> list[tuple[str, str]]:
    with RunStore.open(run) as store:
        return [
            (client, detail) for _, client, event, detail in store.events() if event == "refused"
        ]


def _until_recorded(run: Path, dial: Callable[[], int], deadline: float) -> list[str]:
    """Peers of the connections ``dial`` made (it returns their local ports) until one is refused.

    It dials until one of them is recorded as refused, or ``deadline`` (monotonic) passes.
    The watch traces a connection only if it is still open when gRPC asks for credentials,
    and within its CPU budget: on a busy machine one may go untraced, so this dials again.
    """
    peers: list[str] = []
    while not set(peers) & set(dict(_refusals(run))) and time.monotonic() < deadline:
        peers.append(f"ipv4:127.0.0.1:{dial()}")
        settled = time.monotonic() + 10
        while time.monotonic() < settled and peers[-1] not in dict(_refusals(run)):
            time.sleep(0.1)
    return peers


@pytest.mark.skipif(not FDS.is_dir(), reason="needs /proc/self/fd")
def test_failed_handshakes_are_events_naming_the_peer(tmp_path: Path) -> None:
    fed, other = tmp_path / "fed", tmp_path / "other"
    init_federation(fed)
    init_federation(other)
    issue_client(fed, "c0")
    issue_client(other, "x")
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    run = tmp_path / "run"
    served = Served(strategy, 3, certs=fed, run_dir=run, round_timeout=20, wait_timeout=180)
    ca = fed / "ca.pem"
    deadline = time.monotonic() + 75
    strangers = {
        "no certificate": _until_recorded(run, lambda: _no_certificate(served.port, ca), deadline),
        "a foreign certificate": _until_recorded(
            run, lambda: _foreign_certificate(served.port, ca, other), deadline
        ),
        "not TLS": _until_recorded(run, lambda: _garbage(served.port), deadline),
    }
    honest = Joined(served.port, Fit(), tls=tls_from_certs(fed, "c0"))
    result = served.join(60)
    honest.join()
    assert honest.error is None
    assert len(result.history.rounds) == 4
    refusals = _refusals(run)
    recorded = {client for client, _ in refusals}
    # Only the strangers' connections, each kind named by its address; the honest client is not.
    assert recorded <= {peer for peers in strangers.values() for peer in peers}, refusals
    for kind, peers in strangers.items():
        assert recorded & set(peers), f"no connection with {kind} was recorded: {refusals}"
    for client, detail in refusals:
        assert "TLS handshake failed" in detail
        assert f"peer {client}" in detail


@pytest.mark.skipif(not FDS.is_dir(), reason="needs /proc/self/fd")
def test_a_client_refusing_the_servers_host_name_is_not_blamed_for_its_certificate(
    tmp_path: Path,
) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)  # the server certificate lists localhost and 127.0.0.1
    issue_client(fed, "c0")
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    run = tmp_path / "run"
    served = Served(strategy, 1, certs=fed, run_dir=run, round_timeout=20, wait_timeout=180)
    # A client with a good certificate that dials a name the server certificate lacks.
    context = ssl.create_default_context(cafile=str(fed / "ca.pem"))
    context.load_cert_chain(fed / "clients" / "c0.pem", fed / "clients" / "c0.key")

    def refusing() -> int:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
            local = int(raw.getsockname()[1])
            with pytest.raises(ssl.SSLCertVerificationError):
                context.wrap_socket(raw, server_hostname="elsewhere.example.org")
        return local

    peers = _until_recorded(run, refusing, time.monotonic() + 90)
    honest = Joined(served.port, Fit(), tls=tls_from_certs(fed, "c0"))
    served.join(60)
    honest.join()
    refused = dict(_refusals(run))
    detail = next(refused[peer] for peer in peers if peer in refused)
    assert "the client refused this server's certificate" in detail
    assert "host name the certificate does not list; it lists localhost, 127.0.0.1" in detail


def test_one_hosts_failures_are_reported_each_then_at_powers_of_two() -> None:
    from covey.transport.grpc._handshakes import HandshakeWatch

    seen: list[tuple[str, str, str]] = []
    watch = HandshakeWatch(lambda *event: seen.append(event))
    try:
        for port in range(40):
            watch._report(("192.0.2.7", 1000 + port))
        watch._report(("::1", 5))
    finally:
        watch.close()
    counts = [int(detail.rsplit("failure ", 1)[1].split()[0]) for _, _, detail in seen[:-1]]
    assert counts == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32]
    assert seen[-1][0] == "ipv6:[::1]:5"


def test_connections_past_the_reading_budget_are_counted_not_traced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from covey.transport.grpc import _handshakes

    monkeypatch.setattr(_handshakes, "BUDGET", 0.0)
    watch = _handshakes.HandshakeWatch(lambda *event: None)
    watch.port = 1
    try:
        with caplog.at_level("WARNING", logger="covey"):
            for _ in range(5):
                watch.fetch()
    finally:
        watch.close()
    assert watch.untraced == (5 if watch.enabled else 0)
    if watch.enabled:
        assert [r.getMessage().split()[0] for r in caplog.records] == ["1", "2", "4"]


@pytest.mark.skipif(not FDS.is_dir(), reason="needs /proc/self/fd")
def test_a_client_turned_away_by_a_full_server_is_not_reported_as_a_failed_handshake(
    tmp_path: Path,
) -> None:
    # Its first knock was recorded as "the server is full"; each retry after it (while
    # the full server's report was rate-limited) as a failed TLS handshake, blaming
    # certificates that were fine.
    fed = tmp_path / "fed"
    init_federation(fed)
    for name in ("c0", "c1"):
        issue_client(fed, name)
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    run = tmp_path / "run"
    served = Served(strategy, 1, certs=fed, run_dir=run, round_timeout=20, max_clients=1)
    first = Joined(served.port, Fit(delay=1.0), tls=tls_from_certs(fed, "c0"))
    stop = threading.Event()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _joined(run, "c0"):  # it takes the one slot
        time.sleep(0.05)
    second = Joined(
        served.port, Fit(), tls=tls_from_certs(fed, "c1"), backoff=0.05, max_backoff=0.1, stop=stop
    )
    served.join(60)
    stop.set()
    first.join()
    second.join()
    refusals = _refusals(run)
    assert any("the server is full" in detail for _, detail in refusals), refusals
    assert not [d for _, d in refusals if "TLS handshake failed" in d], refusals


class _Listings:
    """A stand-in for the watch's socket table: each listing's peers, and what happens during it."""

    def __init__(self) -> None:
        self.script: list[tuple[set[tuple[str, int]], Callable[[], object] | None]] = []

    def peers(self, port: int) -> set[tuple[str, int]]:
        peers, meanwhile = self.script.pop(0)
        if meanwhile is not None:
            meanwhile()
        return peers


def _scripted_watch(
    monkeypatch: pytest.MonkeyPatch, seen: list[tuple[str, str, str]]
) -> tuple[HandshakeWatch, _Listings]:
    """A watch without its thread (the test settles), reading a scripted socket table."""
    from covey.transport.grpc import _handshakes

    monkeypatch.setattr(_handshakes, "FDS", Path("/nonexistent/fd"))  # no thread started
    monkeypatch.setattr(_handshakes, "_channelz_peers", set)
    watch = HandshakeWatch(lambda *event: seen.append(event))
    listings = _Listings()
    watch.enabled, watch.port, watch._sockets = True, 1, listings  # type: ignore[assignment]
    return watch, listings


def test_a_connection_made_while_the_watch_lists_the_sockets_is_not_taken_for_a_failed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The settling listing was taken before it connected; it was judged by it, as gone.
    seen: list[tuple[str, str, str]] = []
    watch, listings = _scripted_watch(monkeypatch, seen)
    old, new = ("127.0.0.1", 5000), ("127.0.0.1", 5001)
    listings.script.append(({old}, None))
    watch._note_new()
    listings.script += [({old}, watch._note_new), ({old, new}, None)]  # it connects meanwhile
    assert watch._settle()
    listings.script.append(({old, new}, None))
    watch.saw("ipv4:127.0.0.1:5001")
    watch._settle()
    assert seen == []


def test_a_connection_that_closes_while_a_listing_runs_is_not_taken_for_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A listing begun while it was open noted it again once it had gone: a failure.
    seen: list[tuple[str, str, str]] = []
    watch, listings = _scripted_watch(monkeypatch, seen)
    done, waiting, new = ("127.0.0.1", 5000), ("127.0.0.1", 5001), ("127.0.0.1", 5002)
    listings.script += [({done, waiting}, None), ({done, waiting}, None)]
    watch._note_new()
    watch.saw("ipv4:127.0.0.1:5000")
    watch._settle()  # its call came: passed
    # A new connection's listing sees it still open; it closes, and the watch settles.
    listings.script += [({done, waiting, new}, watch._settle), ({waiting}, None)]
    watch._note_new()
    listings.script.append(({waiting, new}, None))
    watch.saw("ipv4:127.0.0.1:5002")
    watch._settle()
    assert seen == []


@pytest.mark.skipif(not FDS.is_dir(), reason="needs /proc/self/fd")
def test_a_connection_the_stopping_server_cuts_is_not_reported_as_a_failed_handshake(
    tmp_path: Path,
) -> None:
    init_federation(tmp_path / "fed")
    events = Events()
    transport = GrpcServerTransport(
        "127.0.0.1:0", tls=tls_from_dir(tmp_path / "fed"), on_event=events
    )
    watch = transport._service.handshakes
    assert watch is not None
    assert watch._thread is not None
    thread = watch._thread
    with socket.create_connection(("127.0.0.1", transport.port), timeout=30) as raw:
        peer = ("127.0.0.1", raw.getsockname()[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and peer not in watch._pending:  # in its handshake
            time.sleep(0.01)
        assert peer in watch._pending
        stop = transport._server.stop

        def stopping(grace: float | None) -> threading.Event:
            # The server cuts the connection; the watch, if still on, has it settled.
            stopped = stop(grace)
            assert raw.recv(1) == b""
            end = time.monotonic() + 30
            while time.monotonic() < end and watch._pending and thread.is_alive():
                time.sleep(0.01)
            return stopped

        transport._server.stop = stopping
        transport.close()
    assert events.of("refused") == []
