"""A client reconnecting: one identity without a name, and a bounded log while it waits."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import pytest

from _live import Joined
from covey.transport.grpc import _client
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


def test_a_client_cut_off_reads_as_left_before_it_rejoins_however_late_that_is_reported() -> None:
    """The console and the dashboard go by the order of a client's events: last "leave" is gone."""
    events: list[str] = []
    back = threading.Event()

    def on_event(name: str, event: str, detail: str) -> None:
        if event == "leave":
            back.wait(2.0)  # reported slowly (a loaded machine): the client may come back meanwhile
        events.append(event)
        if event in ("join", "rejoin") and len(events) > 1:
            back.set()

    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=on_event)
    client = Joined(transport.port, name="site")
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        transport._registry.drop(transport._registry.fleet[cid], "cut off by the test")
        assert back.wait(30)
        assert transport.wait_for_clients(1, 30)
        assert events == ["join", "leave", "join"]
    finally:
        transport.close("the run is over")
        client.join(30)


def test_a_client_waiting_for_its_server_logs_a_bounded_number_of_warnings(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A day of waiting at the longest backoff is about 2,900 attempts.
    monkeypatch.setattr(_client, "_session", lambda *args: "StatusCode.UNAVAILABLE: no server")
    monkeypatch.setattr(_client, "open_channel", lambda *args: None)
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", lambda delay: None)
    with (
        caplog.at_level(logging.DEBUG, logger="covey"),
        pytest.raises(ConnectionError, match="after 2900 attempt"),
    ):
        _client.connect(
            object(),  # type: ignore[arg-type]  # no session starts: any object will do
            "127.0.0.1:9",
            insecure=True,
            max_attempts=2900,
            retry_for=None,
            stop=stop,
        )
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2899
    warned = [r.getMessage() for r in retries if r.levelno == logging.WARNING]
    # The first five, then 8, 16, ..., 2048: 14 lines, the rest at DEBUG.
    assert len(warned) == 14
    assert "(2048 failed attempts in a row" in warned[-1]


class _StuckCall:
    """A call that never started: gRPC reads none of its requests, so no beat checks it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_a_call_stuck_before_the_server_says_anything_is_cancelled_after_the_silence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A site whose new connection met a server shutting down (a GOAWAY) waited in that
    # call for ever: only the request stream checked for silence, and it was never read.
    limits = _client.TaskLimits.of(None, 1 << 20)
    session = _client._Session(object(), "site", {}, 0.05, limits)
    session.call = _StuckCall()
    stop, ended = threading.Event(), threading.Event()
    watcher = threading.Thread(target=session._watch, args=(stop, ended), daemon=True)
    with caplog.at_level(logging.WARNING, logger="covey"):
        watcher.start()
        assert session.call.cancelled.wait(30), "the stuck call was never cancelled"
        ended.set()  # the cancelled call ends: the watch is over
        watcher.join(30)
    assert not watcher.is_alive()
    assert "no word from the server for 0 s; reconnecting" in caplog.text
    assert not stop.is_set()


class _DeafCall(_StuckCall):
    """A call whose reading never ends, cancelled or not.

    gRPC waits for its core to finish the read under way, which a connection torn down by a
    GOAWAY may never do.
    """

    def __init__(self, released: threading.Event) -> None:
        super().__init__()
        self.released = released

    def __iter__(self) -> _DeafCall:
        return self

    def __next__(self) -> bytes:
        self.released.wait()  # the test lets go of it at its end
        raise StopIteration


class _DeafChannel:
    def __init__(self) -> None:
        self.released = threading.Event()
        self.calls: list[_DeafCall] = []
        self.closed = 0

    def stream_stream(self, method: str) -> Any:
        def join(requests: Any) -> _DeafCall:
            self.calls.append(_DeafCall(self.released))
            return self.calls[-1]

        return join

    def close(self) -> None:
        self.closed += 1


def test_a_cancelled_call_that_never_ends_is_given_up_and_the_client_reconnects(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A site whose call was cancelled for the server's silence (its server shutting down)
    # waited for that call to end for ever, and never joined the server started after it.
    channel = _DeafChannel()
    monkeypatch.setattr(_client, "open_channel", lambda *args: channel)
    monkeypatch.setattr(_client, "CANCEL_GRACE", 0.2, raising=False)
    joined = Joined(9, heartbeat=0.05, retry_for=None, max_attempts=2, backoff=0.01)
    try:
        with caplog.at_level(logging.WARNING, logger="covey"):
            joined.thread.join(60)
            assert not joined.thread.is_alive(), "the client waited for its cancelled call"
    finally:
        channel.released.set()
    assert isinstance(joined.error, ConnectionError)
    assert "after 2 attempt(s): the call cancelled 0 s ago did not end" in str(joined.error)
    assert len(channel.calls) == 2  # it reconnected once, then gave up as max_attempts says
    assert all(call.cancelled.is_set() for call in channel.calls)
    assert channel.closed == 2
    assert caplog.text.count("no word from the server") == 2


class _RacedSession(_client._Session):
    """A session whose check-then-set of ``gone`` is raced on purpose.

    Its ``gone`` holds the first two threads that read it False until both have (or the
    second is kept out, for a second).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.meeting = threading.Barrier(2, timeout=1.0)

    @property
    def gone(self) -> bool:
        value = bool(self.__dict__.get("gone_value", False))
        if not value:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.meeting.wait()
        return value

    @gone.setter
    def gone(self, value: bool) -> None:
        self.__dict__["gone_value"] = value


class _CountedCall:
    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> None:
        self.cancels += 1


def test_silence_seen_by_two_threads_at_once_cancels_the_call_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = _client.TaskLimits.of(None, 1 << 20)
    session = _RacedSession(object(), "site", {}, 0.05, limits)
    session.call = _CountedCall()
    session.last_heard -= 10.0  # silent for long enough
    seen: list[bool] = []
    threads = [threading.Thread(target=lambda: seen.append(session._gone())) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="covey"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert seen == [True, True]  # both threads see the call cancelled: both stop
    assert session.call.cancels == 1
    assert caplog.text.count("no word from the server") == 1
