"""A client that hangs up once told the run is over left as the run ended; a dropped one did not."""

from __future__ import annotations

from typing import cast

import grpc
import pytest

from covey.transport.grpc._attempt import INTERRUPTED
from covey.transport.grpc._registry import Connection, Registry

pytestmark = pytest.mark.timeout(60)


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def cancel(self) -> None:
        pass


def _left(goodbye: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Why a client told ``goodbye`` (none: ``""``) left when its stream ended, and the events."""
    events: list[tuple[str, str, str]] = []
    registry = Registry()
    registry.on_event = lambda name, event, detail="": events.append((name, event, detail))
    conn = Connection("site", registry.client_id("site"), cast(grpc.ServicerContext, _Context()))
    registry.join(conn, "replaced")
    conn.goodbye = goodbye
    registry.drop(conn, "disconnected")
    return registry.left[conn.cid][1], events


def test_a_client_that_hangs_up_after_the_goodbye_left_as_the_run_finished() -> None:
    why, events = _left("the run is over")
    assert why == "the run is over"
    assert events[-1] == ("site", "leave", "the run is over")


def test_a_client_told_the_run_stopped_left_as_told() -> None:
    why, _ = _left(INTERRUPTED)
    assert why == f"told {INTERRUPTED}"


def test_a_client_that_drops_before_any_goodbye_is_still_disconnected() -> None:
    why, events = _left("")
    assert why == "disconnected"
    assert events[-1] == ("site", "leave", "disconnected")
