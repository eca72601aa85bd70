"""A federation at the edges of the network: IPv6 loopback, names of several addresses, churn."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

import covey
from covey.deploy import serve
from covey.deploy._client import tls_from_certs
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc._registry import Connection, Registry, Sink

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served, initial
from _ports import unused_port

pytestmark = pytest.mark.timeout(120)


def _ipv6_loopback() -> None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def test_ipv6_peers_are_recorded_with_brackets_not_percent_escapes() -> None:
    _ipv6_loopback()
    events: list[tuple[str, str, str]] = []
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, address="[::1]:0", on_event=lambda *e: events.append(e))
    client = Joined(served.port, host="[::1]", name="six")
    served.join()
    client.join()
    assert client.error is None
    joins = [detail for name, event, detail in events if event == "join"]
    assert len(joins) == 1
    assert joins[0].startswith("ipv6:[::1]:"), joins


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def cancel(self) -> None:
        pass


def test_a_straggler_that_leaves_is_not_logged_as_sending_a_late_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[tuple[str, str, str]] = []
    registry = Registry(on_event=lambda *e: events.append(e))
    conn = Connection("slow", registry.client_id("slow"), cast(grpc.ServicerContext, _Context()))
    registry.add(conn)
    closed, current = Sink(), Sink()
    closed.open = False  # its round gave up on the task: the client is a straggler
    conn.pending[1] = (closed, "fit")
    conn.pending[2] = (current, "evaluate")
    with caplog.at_level(logging.INFO, logger="covey"):
        registry.drop(conn, "disconnected")
    assert [e for _, e, _ in events] == ["leave"]  # no late-reply: nothing came
    assert not any("late" in r.getMessage() for r in caplog.records)
    failed = current.replies.get_nowait()  # the open exchange learns it left
    assert (failed.kind, failed.error) == ("evaluate", "client disconnected")
    assert closed.replies.empty()


def test_a_wait_for_clients_longer_than_the_os_takes_is_waited_out_in_turns() -> None:
    registry = Registry()
    waited: list[object] = []

    def wait() -> None:
        try:
            waited.append(registry.wait_for(1, 1e10))  # above threading.TIMEOUT_MAX
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            waited.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    conn = Connection("late", registry.client_id("late"), cast(grpc.ServicerContext, _Context()))
    registry.add(conn)
    waiter.join(30)
    assert waited == [True]


def test_attempts_that_found_no_server_are_not_counted_as_sessions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = unused_port()  # a port no one listens on, for now
    with caplog.at_level(logging.WARNING, logger="covey"):
        client = Joined(port, name="early", backoff=0.05)
        deadline = time.monotonic() + 30
        while sum("could not connect to" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "the client never tried to connect"
            time.sleep(0.05)
        strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
        served = Served(strategy, 1, address=f"127.0.0.1:{port}")
        served.join()
        client.join()
    assert client.error is None
    assert client.result is not None
    assert (client.result.reason, client.result.tasks) == ("the run is over", 1)
    assert client.result.sessions == 1  # not one per refused attempt


def test_a_name_whose_address_is_taken_is_refused_not_half_bound(tmp_path: Path) -> None:
    # localhost is 127.0.0.1 and ::1: gRPC alone would listen on ::1 only and run, and
    # clients dialling 127.0.0.1 would reach the process holding it.
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port} is in use"):
            serve(
                covey.FedAvg(),
                1,
                initial(),
                f"localhost:{port}",
                insecure=True,
                run_dir=tmp_path / "run",
                wait_timeout=1.0,  # half bound, it would wait for clients, then stop
            )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])  # noqa: S104
def test_an_ip_address_whose_port_is_taken_is_refused_naming_the_cause(
    tmp_path: Path, host: str
) -> None:
    # gRPC's own error for it ("Failed to bind to address ...; set GRPC_VERBOSITY=debug")
    # names no cause and no way out.
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(OSError, match=f"{port} is in use .*choose another port"):
            serve(
                covey.FedAvg(),
                1,
                initial(),
                f"{host}:{port}",
                insecure=True,
                run_dir=tmp_path / "run",
                wait_timeout=1.0,
            )
    assert not (tmp_path / "run").exists()


def test_a_server_given_localhost_listens_on_each_of_its_addresses() -> None:
    _ipv6_loopback()
    transport = GrpcServerTransport("localhost:0")
    try:
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, transport.port), timeout=10):
                pass
    finally:
        transport.close()


def test_port_0_taken_on_the_other_loopback_meanwhile_picks_another_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # localhost:0: 127.0.0.1 gets a free port, which another process holds on ::1
    # (it takes it between the two binds here). The server must not refuse to start
    # for a port it chose itself: it picks another one, the same on both addresses.
    _ipv6_loopback()
    import covey.transport.grpc._options as options

    real = options.bind_all
    held: list[socket.socket] = []

    def clashing(address: str, add_port: Any) -> int:
        def add(target: str) -> int:
            got = int(add_port(target))
            if not held and target.startswith("127.0.0.1:"):
                other = socket.socket(socket.AF_INET6)
                other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                other.bind(("::1", got))
                other.listen()
                held.append(other)
            return got

        return int(real(address, add))

    monkeypatch.setattr(options, "bind_all", clashing)
    try:
        transport = GrpcServerTransport("localhost:0")
        try:
            assert transport.port != held[0].getsockname()[1]
            for host in ("127.0.0.1", "::1"):
                with socket.create_connection((host, transport.port), timeout=10):
                    pass
        finally:
            transport.close()
    finally:
        for sock in held:
            sock.close()


def test_a_client_names_an_ipv6_server_it_cannot_reach_with_brackets() -> None:
    _ipv6_loopback()
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as probe:
        port = probe.getsockname()[1]  # closed below: no one listens there
    client = Joined(port, host="[::1]", name="six", max_attempts=1)
    client.join(60)
    assert isinstance(client.error, ConnectionError)
    assert f"ipv6:[::1]:{port}" in str(client.error), client.error
    assert "%5B" not in str(client.error)


def test_a_tls_server_given_localhost_takes_clients_on_both_loopbacks(tmp_path: Path) -> None:
    _ipv6_loopback()
    fed = tmp_path / "fed"
    init_federation(fed, hosts=("localhost", "127.0.0.1", "::1"))
    for name in ("four", "six"):
        issue_client(fed, name)
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 1, certs=fed, address="localhost:0")
    clients = [
        Joined(served.port, host=host, tls=tls_from_certs(fed, name))
        for host, name in (("127.0.0.1", "four"), ("[::1]", "six"))
    ]
    result = served.join()
    for client in clients:
        client.join()
        assert client.error is None
    assert sorted(result.history.clients.values()) == ["four", "six"]
