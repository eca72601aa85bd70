"""A federation at the edges of the network: IPv6 loopback, names of several addresses, churn."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

import covey

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

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
