"""A server at its client limit, and clients that cannot reach one: what each side says.

A client turned away by a full server retried under gRPC's bare ``Concurrent
RPC limit exceeded!`` while the server logged and recorded nothing; a client
that never reached its server said its connection was "lost".
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from covey.transport.grpc._capacity import Capacity
from covey.transport.grpc._client import connect
from covey.transport.grpc._refusal import transient_text
from covey.transport.grpc._server import GrpcServerTransport

sys.path.insert(0, str(Path(__file__).parent))
from _live import Events, Fit, Joined
from _ports import unused_port

pytestmark = pytest.mark.timeout(120)


def _until(condition: object, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_full_server_logs_records_and_tells_the_client_it_is_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=1.0, max_clients=1, on_event=events)
    first = second = None
    stop = threading.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="covey"):
            first = Joined(transport.port, name="first")
            assert transport.wait_for_clients(1, 30)
            second = Joined(transport.port, name="second", backoff=0.05, max_backoff=0.1, stop=stop)
            assert _until(lambda: sum("is full" in r.getMessage() for r in caplog.records) >= 3)
        refused = events.of("refused")
        assert refused, events.items
        assert all("the server is full" in d and "at most 1 client" in d for _, d in refused)
        assert any("peer ipv4:127.0.0.1:" in d for _, d in refused)
        assert {n for n, _ in refused} == {"ipv4:127.0.0.1"}  # by host: one name, not one a port
        lines = [r.getMessage() for r in caplog.records]
        server_lines = [m for m in lines if m.startswith("refused")]
        assert server_lines
        assert all("the server is full" in m for m in server_lines)
        # Rate-limited: one report for a client knocking many times in a few seconds.
        assert len(refused) < 3
        client_lines = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert client_lines
        assert all(m.startswith("could not connect to 127.0.0.1:") for m in client_lines)
        assert all("RESOURCE_EXHAUSTED" in m and "server is full" in m for m in client_lines)
    finally:
        stop.set()
        transport.close()
        for joined in (first, second):
            if joined is not None:
                joined.join(30)


def test_capacity_reports_at_most_once_per_period_with_the_count_in_between() -> None:
    events = Events()
    capacity = Capacity(1, events)

    class _Context:
        def peer(self) -> str:
            return "ipv4:10.0.0.1:5000"

        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

    context = _Context()
    assert capacity.take(context)
    assert not any(capacity.take(context) for _ in range(50))
    assert len(events.of("refused")) == 1
    capacity._last -= 3600  # the period is over: the next refusal is reported, with the count
    assert not capacity.take(context)
    (_, _first), (_, second) = events.of("refused")
    assert "49 more refused since the last report" in second
    capacity.give_back()
    assert capacity.take(context)


def test_grpcs_own_limit_reads_as_a_full_server() -> None:
    class _Exhausted(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "Concurrent RPC limit exceeded!"

    text = transient_text(_Exhausted())
    assert "the server is full" in text
    assert "Concurrent RPC limit exceeded!" in text


def test_a_client_that_never_reached_its_server_says_it_could_not_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = unused_port()  # a port no one listens on
    with (
        caplog.at_level(logging.WARNING, logger="covey"),
        pytest.raises(ConnectionError) as gave_up,
    ):
        connect(Fit(), f"127.0.0.1:{port}", insecure=True, max_attempts=3, backoff=0.01)
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert all(m.startswith(f"could not connect to 127.0.0.1:{port} (") for m in retries), retries
    assert not any("lost" in m for m in retries)
    assert str(gave_up.value).startswith(f"could not connect to 127.0.0.1:{port} after 3 attempt")
