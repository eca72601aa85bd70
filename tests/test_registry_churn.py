"""A deployed fleet whose clients come and go for weeks: the registry keeps only the latest gone."""

from __future__ import annotations

from typing import cast

import grpc
import pytest

from covey.analytics._exchange import Federation
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc._registry import LEFT_KEPT, Connection, Registry

pytestmark = pytest.mark.timeout(120)

CONNECTED = 5  # clients connected at any time
CYCLES = 3 * LEFT_KEPT  # phones that join once and leave, never to come back


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def cancel(self) -> None:
        pass


def _join(registry: Registry, name: str) -> Connection:
    conn = Connection(name, registry.client_id(name), cast(grpc.ServicerContext, _Context()))
    registry.join(conn, "replaced")
    return conn


def _churn(registry: Registry, cycles: int) -> list[Connection]:
    """``cycles`` phones join, each one leaving as the next joins; the last ``CONNECTED`` stay."""
    connected = [_join(registry, f"steady-{k}") for k in range(CONNECTED)]
    for k in range(cycles):
        phone = _join(registry, f"phone-{k}")
        registry.drop(phone, f"disconnected (phone {k})")
    return connected


def test_many_joins_and_leaves_keep_the_registry_bounded() -> None:
    registry = Registry()
    connected = _churn(registry, CYCLES)
    assert registry.clients() == sorted(c.cid for c in connected)
    assert len(registry.left) == LEFT_KEPT
    assert len(registry.joins) <= LEFT_KEPT + CONNECTED
    # The latest to leave are still named, with why, oldest first; the first ones are forgotten.
    latest = CYCLES - 1
    assert list(registry.left.values())[-1] == (f"phone-{latest}", f"disconnected (phone {latest})")
    assert next(iter(registry.left.values()))[0] == f"phone-{CYCLES - LEFT_KEPT}"
    assert registry.client_id("phone-0") not in registry.left


def test_a_client_forgotten_and_back_is_never_taken_for_its_old_session() -> None:
    registry = Registry()
    first = _join(registry, "site")
    session = registry.joins[first.cid]
    registry.drop(first, "disconnected")
    _churn(registry, LEFT_KEPT)  # enough departures after it that it is forgotten
    assert first.cid not in registry.left
    assert first.cid not in registry.joins
    again = _join(registry, "site")  # a server that kept its properties asks it again
    assert again.cid == first.cid
    assert registry.joins[again.cid] != session
    assert first.cid not in registry.left


def test_a_query_names_the_sites_that_left_lately() -> None:
    transport = GrpcServerTransport("127.0.0.1:0")
    try:
        registry = transport._registry
        _churn(registry, LEFT_KEPT + 10)
        gone = transport.left_clients()
        assert len(gone) == LEFT_KEPT
        latest = LEFT_KEPT + 9
        refused = Federation(transport)._left()
        assert refused[f"phone-{latest}"] == (
            f"the site left before the query (disconnected (phone {latest}))"
        )
        assert "phone-0" not in refused
    finally:
        transport.close("the run is over")
