"""An insecure client without a name keeps one identity across its reconnections."""

from __future__ import annotations

import threading

from _live import Joined
from covey.transport.grpc._server import GrpcServerTransport


def test_an_unnamed_insecure_client_rejoins_under_the_same_id() -> None:
    events: list[tuple[str, str]] = []
    joined = threading.Event()

    def on_event(name: str, event: str, detail: str) -> None:
        events.append((name, event))
        if event in ("join", "rejoin") and len(events) > 2:
            joined.set()

    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=on_event)
    client = Joined(transport.port)  # insecure, no name
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        registry = transport._registry
        first = registry.fleet[cid]
        registry.drop(first, "cut off by the test")
        assert joined.wait(30)
        assert transport.wait_for_clients(1, 30)
        # The same client, not a new one per connection (its address changes each time).
        assert transport.clients() == [cid]
        assert registry.joins[cid] == 2
        names = {name for name, _ in events}
        assert len(names) == 1, events
        (name,) = names
        assert name.startswith("anonymous-")
        assert sorted(event for _, event in events) == ["join", "join", "leave"]
    finally:
        transport.close("the run is over")
        client.join(30)
