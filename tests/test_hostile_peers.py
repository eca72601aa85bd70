"""Hostile peers against live servers and clients on 127.0.0.1: refused, and no one else disturbed.

Every test starts its own server (a transport, or ``serve`` on a thread) on a
free port and stops it. The hostile side speaks the wire by hand with grpcio
(``_live.Raw``, or a server written here), the honest side is covey's own
client, and each test checks that the peer is refused with an event naming it
while the honest clients are served.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

import covey
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import WeightsSpec
from covey.deploy._client import tls_from_certs
from covey.deploy.certs import init_federation, issue_client
from covey.server._store import RunStore
from covey.transport.grpc import _wire
from covey.transport.grpc._client import ClientTLS, connect
from covey.transport.grpc._frames import CHUNK_TAG, PROTOCOL, client_message, control, is_chunk
from covey.transport.grpc._options import METHOD
from covey.transport.grpc._refusal import Refused
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc.proto import covey_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent))
from _live import Events, Fit, Joined, Raw, Served, cap_reply, stand_in

pytestmark = pytest.mark.timeout(120)

FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'


class _Parked:
    """Streams that open and never send a frame (the slowloris of the handshake)."""

    def __init__(self, port: int, count: int, tls: ClientTLS | None = None) -> None:
        self.channel = _channel(port, tls)
        self.release = threading.Event()
        self.codes: list[grpc.StatusCode | None] = []
        self.lock = threading.Lock()
        join = self.channel.stream_stream(METHOD)
        self.calls = [join(self._nothing()) for _ in range(count)]
        self.threads = [threading.Thread(target=self._drain, args=(c,)) for c in self.calls]
        for thread in self.threads:
            thread.daemon = True
            thread.start()

    def _nothing(self) -> Iterator[bytes]:
        self.release.wait(60)
        yield from ()

    def _drain(self, call: Any) -> None:
        code: grpc.StatusCode | None = None
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            code = exc.code()
        with self.lock:
            self.codes.append(code)

    def ended(self) -> int:
        with self.lock:
            return len(self.codes)

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()
        self.channel.close()


def _channel(port: int, tls: ClientTLS | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}")
    creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _until(condition: Any, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


# -- streams that never say Hello ------------------------------------------------------------


def _exchange(transport: Any, tasks: Any, timeout: float) -> tuple[threading.Thread, list[Any]]:
    """``transport.exchange(tasks)`` on a started thread; its replies land in the list."""
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.extend(transport.exchange(tasks, timeout=timeout)), daemon=True
    )
    thread.start()
    return thread, replies


class _RoundEnd:
    """Closes an exchange's round when the test says so, not after seconds a loaded machine takes.

    Exchanges are given a far deadline; :meth:`now` moves the transport's clock past
    it and wakes each waiting exchange with a reply no one waits for.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from covey.transport.grpc import _server

        self.ahead = 0.0
        clock = SimpleNamespace(monotonic=lambda: time.monotonic() + self.ahead)
        monkeypatch.setattr(_server, "time", clock)

    def now(self, transport: Any) -> None:
        self.ahead += 3600.0
        sinks: dict[int, Any] = {}
        for conn in list(transport._registry.fleet.values()):
            with conn.lock:
                sinks.update((id(sink), sink) for sink, _ in conn.pending.values())
        for sink in sinks.values():
            sink.replies.put(Reply(-1, "wake"))


def _cid_of(transport: Any, name: str) -> int:
    """The id the server gave the client named ``name``."""
    return next(c for c, conn in transport._registry.fleet.items() if conn.name == name)


def test_streams_that_never_say_hello_do_not_lock_honest_clients_out() -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=1.0, max_clients=100, on_event=events)
    parked = _Parked(transport.port, 100)  # every slot the server has
    honest: Joined | None = None
    try:
        # The server cancels the streams that waited longest, so the slots they held
        # are free again, and an honest client joins at once.
        assert _until(lambda: parked.ended() >= 30)
        honest = Joined(transport.port, name="honest", max_attempts=1)
        assert transport.wait_for_clients(1, 20)
        (reply,) = transport.exchange({0: Task("fit", 1, {}, {"w": np.zeros(4)})}, timeout=20)
        assert reply.ok
        refused = events.of("refused")
        assert refused
        assert any("sent no Hello" in d and "peer ipv4:127.0.0.1:" in d for _, d in refused)
        assert {n for n, _ in refused} == {"ipv4:127.0.0.1"}  # by host, not one name a port
        # A flood of streams is reported once in a while, not once per stream.
        assert len(refused) < 10
    finally:
        parked.close()
        transport.close()
        if honest is not None:
            honest.join(30)


def test_streams_opening_with_junk_are_refused_logged_and_recorded_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of streams whose first frame is no Hello: each ended, a few lines and events."""
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=1.0, on_event=events)
    channel = grpc.insecure_channel(f"127.0.0.1:{transport.port}")
    join = channel.stream_stream(METHOD)
    codes: list[grpc.StatusCode] = []
    try:
        with caplog.at_level("WARNING", logger="covey"):
            for first in [CHUNK_TAG + b"data"] + [b"\xff\x13garbage"] * 200:
                try:
                    for _ in join(iter([first])):
                        pass
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 201
        refused = events.of("refused")
        assert 1 <= len(refused) < 10  # once in a while, with the count since the last
        assert "its first frame was not Hello: a chunk frame (5 bytes)" in refused[0][1]
        lines = [
            r.getMessage() for r in caplog.records if "first frame was not Hello" in r.getMessage()
        ]
        assert 1 <= len(lines) < 10
    finally:
        channel.close()
        transport.close()


def test_a_stream_that_says_nothing_is_ended_after_the_hello_deadline() -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=1.0, on_event=events)
    transport._service.greeting.timeout = 0.5
    parked = _Parked(transport.port, 3)
    try:
        assert _until(lambda: parked.ended() == 3)
        assert parked.codes == [grpc.StatusCode.CANCELLED] * 3
        assert transport._service.greeting.waiting == 0
        # Recorded by the server just after it ends the stream: wait for it, bounded.
        assert _until(lambda: events.of("refused"))
        (_, detail), *_ = events.of("refused")
        assert "sent no Hello within 0.5 s" in detail
    finally:
        parked.close()
        transport.close()


# -- a hostile server against covey's client ------------------------------------------------


class _HostileServer:
    """A server that welcomes a client and then sends the frames ``script(hello)`` yields."""

    def __init__(self, script: Any, heartbeat: float = 0.5, name: str = "victim") -> None:
        self.script = script
        self.heartbeat = heartbeat
        self.name = name
        self.joins = 0
        self.replies: list[pb.ReplyHeader] = []
        self.replied = threading.Condition()
        self.server, self.port = stand_in(self._join, workers=4)

    def _join(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        next(requests)
        self.joins += 1
        welcome = pb.Welcome(
            cid=0, name=self.name, heartbeat_interval=self.heartbeat, protocol=PROTOCOL
        )
        yield control(pb.ServerMessage(welcome=welcome))
        threading.Thread(target=self._read, args=(requests,), daemon=True).start()
        yield from self.script()

    def _read(self, requests: Iterator[bytes]) -> None:
        with contextlib.suppress(grpc.RpcError):
            for frame in requests:
                if not is_chunk(frame):
                    message = client_message(frame)
                    if message.WhichOneof("body") == "reply":
                        with self.replied:
                            self.replies.append(message.reply)
                            self.replied.notify_all()

    def wait_replies(self, count: int) -> None:
        """Wait (bounded) until the client has replied ``count`` times in all."""
        with self.replied:
            assert self.replied.wait_for(lambda: len(self.replies) >= count, 60), self.replies

    def close(self) -> None:
        self.server.stop(0).wait(5)


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def test_a_client_does_not_take_the_memory_a_server_announces() -> None:
    announced = 768 * 1024 * 1024

    def script() -> Iterator[bytes]:
        task = pb.TaskHeader(task_id=1, kind="fit", round=1, config=b"{}", weights_size=announced)
        yield control(pb.ServerMessage(task=task))
        yield CHUNK_TAG + bytes(1024)
        time.sleep(1.0)  # long enough for the client to have taken what it would take
        yield control(pb.ServerMessage(heartbeat=pb.Heartbeat()))

    server = _HostileServer(script)
    peak = [_rss()]
    before = peak[0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(ConnectionError, match="control frame in the middle of a task"):
            connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        done.set()
        watcher.join(5)
        server.close()
    assert peak[0] - before < 128 * 1024 * 1024, (before, peak[0])


def test_a_servers_status_text_is_logged_escaped_and_cut() -> None:
    # Logged raw at each retry: escape sequences and forged log lines from a hostile server.
    from covey.transport.grpc._refusal import details_of

    said = details_of(ValueError("D\x1b[1m\nFAKE ERROR forged\n" * 400))
    assert "\x1b" not in said
    assert "\n" not in said
    assert "\\x1b[1m\\nFAKE" in said
    assert "characters left out" in said
    assert len(said) < 1500  # 1,000 characters of it, each escaped


#: Text a hostile server writes: a terminal's escape sequences, a forged log line, bidi overrides.
_HOSTILE = "\x1b]0;owned\x07\x1b[2J\nERROR forged line\u202e" + "\U000e0001" * 50_000


def _safe(lines: list[str], most: int) -> None:
    """Each line holds no character a terminal acts on, and at most ``most`` characters."""
    for line in lines:
        assert not any(c in line for c in "\x1b\x07\n\u202e\U000e0001"), line[:200]
        assert len(line) <= most, len(line)


def test_a_task_kind_a_server_makes_up_is_logged_escaped_and_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its kind was logged as sent: 50,000 characters of escape sequences per line.
    kind = _HOSTILE

    def script() -> Iterator[bytes]:
        yield control(pb.ServerMessage(task=pb.TaskHeader(task_id=1, kind=kind, round=1)))
        server.wait_replies(1)
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))

    server = _HostileServer(script)
    try:
        with caplog.at_level("DEBUG", logger="covey"):
            connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        server.close()
    (reply,) = server.replies
    assert reply.kind == kind  # answered as the task it was: no handler for it
    assert "unknown task kind" in reply.error
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("task \\x1b]0;owned\\x07") for line in lines), lines
    _safe(lines, 2000)


def test_a_servers_name_and_goodbye_are_logged_escaped_and_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Cut, but logged with their escape sequences and line breaks as sent.
    def script() -> Iterator[bytes]:
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason=_HOSTILE)))

    server = _HostileServer(script, name=_HOSTILE)
    try:
        with caplog.at_level("INFO", logger="covey"):
            done = connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        server.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("connected as \\x1b]0;owned") for line in lines), lines
    assert any("said goodbye: \\x1b]0;owned" in line for line in lines), lines
    _safe(lines, 1200)
    _safe([done.reason], 1100)  # what `covey client` prints


def test_a_client_holds_a_few_tasks_while_one_runs_not_all_a_server_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tasks sent while one ran were all queued: 951 headers of 7 MB configs took 6 GB.
    from covey.clients._client import _HANDLERS
    from covey.transport.grpc import _client
    from covey.transport.grpc._client import QUEUED_TASKS, drop_queued

    running, release = threading.Event(), threading.Event()

    def hold(client: Any, task: Any) -> dict[str, int]:
        running.set()
        release.wait(30)
        return {}

    def ending(tasks: Any) -> None:  # the session ends: what it waits for need run no longer
        drop_queued(tasks)
        release.set()

    monkeypatch.setitem(_HANDLERS, "test.hold", hold)
    monkeypatch.setattr(_client, "drop_queued", ending)
    config = b'{"pad": "' + b"x" * 100_000 + b'"}'

    def script() -> Iterator[bytes]:
        yield control(pb.ServerMessage(task=pb.TaskHeader(task_id=1, kind="test.hold", round=1)))
        assert running.wait(30)
        for task_id in range(2, 2 + 10 * QUEUED_TASKS):
            task = pb.TaskHeader(task_id=task_id, kind="test.hold", round=1, config=config)
            yield control(pb.ServerMessage(task=task))
        time.sleep(5)  # the client has hung up before

    server = _HostileServer(script)
    try:
        with pytest.raises(ConnectionError, match=rf"tasks waited .* at most {QUEUED_TASKS}"):
            connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        release.set()
        server.close()


def test_a_client_gives_up_on_a_server_that_welcomes_it_and_hangs_up_at_once() -> None:
    # Each welcome reset the retry budget: the client reconnected (and logged) for ever.
    stop = threading.Event()

    def script() -> Iterator[bytes]:
        if server.joins >= 40:  # the old client, which never gives up: ended here
            stop.set()
        yield from ()

    server = _HostileServer(script)
    try:
        with pytest.raises(ConnectionError) as gave_up:
            connect(
                Fit(),
                f"127.0.0.1:{server.port}",
                insecure=True,
                max_attempts=5,
                backoff=0.01,
                max_backoff=0.02,
                stop=stop,
            )
    finally:
        stop.set()
        server.close()
    said = str(gave_up.value)
    assert said.startswith(f"could not stay connected to 127.0.0.1:{server.port} after 5 attempt")
    assert said.endswith(
        "the server closed the stream; 5 of those attempts reached a server that welcomed "
        "this client, then ended the connection before it sent a task or 60 s had passed"
    )
    assert server.joins == 5


def test_a_session_that_performs_a_task_resets_the_clients_retry_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that loses each connection after a task, as one restarted under its clients:
    # the client goes on serving it however often that happens.
    from covey.clients._client import _HANDLERS

    monkeypatch.setitem(_HANDLERS, "test.done", lambda client, task: {})

    def script() -> Iterator[bytes]:
        if server.joins > 6:
            yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))
            return
        yield control(pb.ServerMessage(task=pb.TaskHeader(task_id=1, kind="test.done", round=1)))
        server.wait_replies(server.joins)

    server = _HostileServer(script)
    try:
        done = connect(
            Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=2, backoff=0.01
        )
    finally:
        server.close()
    assert (done.reason, done.tasks, done.sessions) == ("over", 6, 7)


def test_a_server_killed_while_its_clients_train_does_not_spend_their_retry_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server restarted while its clients trained: each session had been sent a task but
    # performed none before its connection went, so it counted as a failed attempt and the
    # client gave up after max_attempts restarts (or a retry_for spent on a slow start).
    from covey.clients._client import _HANDLERS
    from covey.transport.grpc import _client as grpc_client
    from covey.transport.grpc import _taskthread

    monkeypatch.setattr(_taskthread, "TASK_WAIT", 0.05)  # the hung fit is not waited for
    monkeypatch.setattr(grpc_client._Session.close, "__defaults__", (0.1,))
    release = threading.Event()
    started = threading.Semaphore(0)

    def train(client: Any, task: Any) -> dict[str, int]:
        started.release()
        release.wait(60)
        return {}

    monkeypatch.setitem(_HANDLERS, "test.train", train)

    def script() -> Iterator[bytes]:
        if server.joins > 4:
            yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))
            return
        header = pb.TaskHeader(task_id=server.joins, kind="test.train", round=1)
        yield control(pb.ServerMessage(task=header))
        if server.joins == 1:  # the first session's task runs (the others wait for it)
            assert started.acquire(timeout=30)
        # and the server is killed in the middle of the round

    server = _HostileServer(script)
    try:
        done = connect(
            Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=2, backoff=0.01
        )
    finally:
        release.set()
        server.close()
    assert (done.reason, done.tasks, done.sessions) == ("over", 0, 5)


def test_a_session_connected_a_minute_resets_the_retry_budget() -> None:
    from covey.transport.grpc._refusal import STEADY_SECONDS, RetryBudget

    budget = RetryBudget(max_attempts=3)
    for _ in range(2):
        budget.attempt_deadline()
        budget.session_ended(STEADY_SECONDS / 2, performed=0)
        assert budget.next_delay() is not None
    assert (budget.failures, budget.dropped) == (2, 2)
    budget.attempt_deadline()
    budget.session_ended(STEADY_SECONDS, performed=0)  # got through: a new budget
    assert (budget.failures, budget.dropped) == (0, 0)
    budget.attempt_deadline()
    budget.session_ended(1.0, performed=1)
    assert budget.next_delay() is not None
    assert budget.failures == 1


def test_the_time_connected_to_a_server_is_not_counted_against_retry_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client started before its server waits 50 s for the other clients, then the server
    # crashes: the client gave up at once, its wait counted as seconds of failure.
    from covey.transport.grpc import _refusal

    clock = [0.0]
    monkeypatch.setattr(_refusal, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    budget = _refusal.RetryBudget(retry_for=8.0)
    budget.attempt_deadline()
    clock[0] = 1.0
    assert budget.next_delay() is not None  # no server yet: failing since 0
    clock[0] = 6.0
    budget.attempt_deadline()  # the server is up and welcomes the client at 6 s
    clock[0] = 56.0
    budget.session_ended(50.0, performed=0)  # and crashes before a round
    assert budget.next_delay() is not None  # 6 s of failure, not 56
    clock[0] = 58.0
    budget.attempt_deadline()
    clock[0] = 59.0
    assert budget.next_delay() is None  # 9 s of failure: given up
    assert (budget.failures, budget.dropped) == (3, 1)


@pytest.mark.parametrize(
    "heartbeat", [float("inf"), 1e300, 1e10, 86400.0, 601.0, 1e-9, -1.0, float("nan")]
)
def test_a_client_refuses_a_welcome_stating_a_heartbeat_no_server_can_keep(
    heartbeat: float,
) -> None:
    # An infinite or huge interval failed every session in the client's request stream
    # (OverflowError, retried for ever); a tiny one made it give up on the server
    # "silent for 0 s" at once and reconnect in a loop. A day was taken: the client
    # then trusted a server silent for up to six days.
    def script() -> Iterator[bytes]:
        time.sleep(3.0)
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))

    server = _HostileServer(script, heartbeat=heartbeat)
    try:
        with pytest.raises(Refused, match="stating a heartbeat interval of") as refused:
            connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, retry_for=10.0, backoff=0.1)
    finally:
        server.close()
    assert "0.01 to 600 s this client accepts" in str(refused.value)


def test_a_server_refuses_a_heartbeat_its_clients_would_refuse() -> None:
    from covey.transport.grpc._checks import welcome_heartbeat

    assert welcome_heartbeat(600.0) == 600.0  # ten minutes: taken
    for heartbeat in (1e10, 3600.0, 0.001):
        with pytest.raises(ValueError, match=r"heartbeat must be between 0\.01 and 600 seconds"):
            GrpcServerTransport("127.0.0.1:0", heartbeat=heartbeat)


# -- replies that start and never finish ----------------------------------------------------


def _raw(port: int, name: str) -> Raw:
    return Raw(
        port, pb.Hello(version=covey.__version__, name=name, kinds=["fit"], protocol=PROTOCOL)
    )


def test_replies_that_stall_hold_neither_memory_nor_budget_past_their_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    end = _RoundEnd(monkeypatch)
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    raws = [_raw(transport.port, f"stall-{k}") for k in range(16)]
    honest = Joined(transport.port, name="honest", max_attempts=1)
    try:
        assert transport.wait_for_clients(17, 20)
        model = {"w": np.zeros(4)}  # one model for all
        tasks = {cid: Task("fit", 1, {}, model) for cid in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 60)
        sent = [raw.next_task() for raw in raws]
        # Raised over the limit of their model (set as each task was handed over).
        declared = 15 * 1024 * 1024  # kept in memory (under the spill size), if taken
        for task in sent:
            cap_reply(transport, task.task_id, declared)
        before = _rss()
        for raw, task in zip(raws, sent, strict=True):
            header = pb.ReplyHeader(
                task_id=task.task_id, kind="fit", result=FIT, weights_size=declared
            )
            raw.send(reply=header)
            raw.send_chunk(bytes(64 * 1024))
        assert _until(lambda: transport._service.budget.used == 16 * 64 * 1024)
        # Sixteen replies of 15 MiB declared, 64 KiB sent each: the memory and the
        # bytes in flight are what came.
        assert _rss() - before < 100 * 1024 * 1024
        assert _until(lambda: len(replies) == 1, 60)  # the honest client's
        end.now(transport)
        exchange.join(30)
        by_cid = {r.cid: r for r in replies}
        assert sum(r.ok for r in by_cid.values()) == 1  # the honest client's
        # Once their round is over, the stalled replies give back their share of the
        # bytes in flight at their next frame, and say so naming each peer.
        for raw in raws:
            raw.send(heartbeat=pb.Heartbeat())
        assert _until(lambda: transport._service.budget.used == 0)
        late = events.of("late-reply")
        assert len(late) == 16
        assert all("65536 of 15728640 bytes" in d and "peer ipv4:127.0.0.1:" in d for _, d in late)
    finally:
        for raw in raws:
            raw.close()
        transport.close()
        honest.join(30)


# -- replies to tasks a client was not given, replays, a second Hello ------------------------


def test_forged_and_replayed_replies_are_skipped_without_flooding_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    a, b = _raw(transport.port, "a"), _raw(transport.port, "b")
    try:
        assert transport.wait_for_clients(2, 20)
        cid_b = _cid_of(transport, "b")
        tasks = {cid: Task("fit", 1, {}, {"w": np.zeros(4)}) for cid in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 20)
        task_a, task_b = a.next_task(), b.next_task()
        blob = bytes(_codec.encode({"w": np.ones(4)}))

        def reply(task_id: int) -> None:
            header = pb.ReplyHeader(task_id=task_id, kind="fit", result=FIT, weights_size=len(blob))
            a.send(reply=header)
            a.send_chunk(blob)

        with caplog.at_level("WARNING", logger="covey"):
            reply(task_b.task_id)  # b's task: not a's to answer
            reply(task_a.task_id)
            reply(task_a.task_id)  # a replay
            reply(10**12)  # never issued
            for _ in range(3000):
                a.send(reply=pb.ReplyHeader(task_id=task_b.task_id, kind="fit", result=FIT))
            a.send_frame(b"\xff\x13garbage")  # dropped once every frame before it is read
            # b says Hello again, as a: refused, and its identity stays its own.
            b.send(hello=pb.Hello(version=covey.__version__, name="a", protocol=PROTOCOL))
            exchange.join(30)
            assert _until(lambda: not transport.clients())
        by_cid = {r.cid: r for r in replies}
        ok = [r for r in by_cid.values() if r.ok]
        assert len(ok) == 1
        assert ok[0].cid != cid_b
        np.testing.assert_array_equal(ok[0].result.weights["w"], np.ones(4))
        assert "unexpected hello" in (by_cid[cid_b].error or "")
        refused = dict(events.of("protocol-error"))
        assert "unexpected hello message (peer ipv4:127.0.0.1:" in refused["b"]
        assert "malformed client control frame" in refused["a"]
        stray = [r for r in caplog.records if "which is not pending" in r.getMessage()]
        assert 1 <= len(stray) <= 16, len(stray)
        assert "3003 such replies" not in stray[-1].getMessage()
    finally:
        a.close()
        b.close()
        transport.close()


def test_a_clients_error_text_is_cut_to_its_start_and_end() -> None:
    # A client's 7 MB error was kept whole: twice (error and traceback) in the run's
    # history.json and run.sqlite every round, and logged, so a few rounds took the
    # history past what the dashboard reads.
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    raw = _raw(transport.port, "loud")
    try:
        assert transport.wait_for_clients(1, 20)
        tasks = {cid: Task("fit", 1, {}, {"w": np.zeros(4)}) for cid in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 20)
        task = raw.next_task()
        text = "Traceback (most recent call last):\n" + "x" * 7_000_000 + "\nValueError: bad"
        raw.send(reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", error=text))
        exchange.join(30)
        (reply,) = replies
        assert reply.error is not None
        assert len(reply.error) < 17_000
        assert reply.error.startswith("Traceback (most recent call last):")
        assert reply.error.endswith("\nValueError: bad")
        assert "characters left out" in reply.error
    finally:
        raw.close()
        transport.close()


@pytest.mark.parametrize(
    "result",
    [
        b'{"type":"fit","form":"' + b"x" * 1_000_000 + b'","num_examples":1,"metrics":{}}',
        b'{"type":"fit","form":"weights","num_examples":"' + b"x" * 1_000_000 + b'"}',
        b'{"type":"' + b"x" * 1_000_000 + b'"}',
    ],
    ids=["form", "examples", "type"],
)
def test_a_malformed_reply_is_refused_quoting_at_most_a_thousand_characters(
    result: bytes,
) -> None:
    # The refusal quoted the peer's megabyte string whole: in the round's failure,
    # the protocol-error event and the log.
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    raw = _raw(transport.port, "verbose")
    try:
        assert transport.wait_for_clients(1, 20)
        tasks = {cid: Task("fit", 1, {}, {"w": np.zeros(4)}) for cid in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 20)
        task = raw.next_task()
        blob = bytes(_codec.encode({"w": np.ones(4)}))
        header = pb.ReplyHeader(
            task_id=task.task_id, kind="fit", result=result, weights_size=len(blob)
        )
        raw.send(reply=header)
        raw.send_chunk(blob)
        exchange.join(30)
        (reply,) = replies
        assert (reply.error or "").startswith("malformed reply: ")
        assert len(reply.error or "") < 1100
        assert _until(lambda: bool(events.of("protocol-error")))
        (refused,) = events.of("protocol-error")
        assert len(refused[1]) < 1200
    finally:
        raw.close()
        transport.close()


# -- the bytes in flight over all connections ------------------------------------------------


def test_declared_sizes_do_not_use_up_the_bytes_in_flight_of_honest_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    end = _RoundEnd(monkeypatch)
    declared = 4 * 1024 * 1024
    events = Events()
    transport = GrpcServerTransport(
        "127.0.0.1:0", heartbeat=5.0, on_event=events, max_inflight=3 * declared
    )
    raws = [_raw(transport.port, f"hoard-{k}") for k in range(3)]
    honest = Joined(transport.port, Fit(delay=1.0), name="honest", max_attempts=1)
    try:
        assert transport.wait_for_clients(4, 20)
        cid = _cid_of(transport, "honest")
        model = {"w": np.zeros(4)}  # one model for all
        tasks = {c: Task("fit", 1, {}, model) for c in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 60)
        sent = [raw.next_task() for raw in raws]
        for task in sent:  # raised over the limit of their model
            cap_reply(transport, task.task_id, declared)
        for raw, task in zip(raws, sent, strict=True):
            header = pb.ReplyHeader(
                task_id=task.task_id, kind="fit", result=FIT, weights_size=declared
            )
            raw.send(reply=header)
            raw.send_chunk(bytes(64 * 1024))
        assert _until(lambda: cid in {r.cid for r in replies}, 60)
        end.now(transport)
        exchange.join(30)
        by_cid = {r.cid: r for r in replies}
        # Three peers declared the whole budget and sent 64 KiB each: the honest
        # client, replying a second later, is served all the same.
        assert by_cid[cid].ok, by_cid[cid].error
        assert not events.of("protocol-error")
    finally:
        for raw in raws:
            raw.close()
        transport.close()
        honest.join(30)


def test_a_reply_past_the_bytes_in_flight_fails_its_task_and_keeps_its_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    end = _RoundEnd(monkeypatch)
    mib = 1024 * 1024
    events = Events()
    transport = GrpcServerTransport(
        "127.0.0.1:0", heartbeat=5.0, on_event=events, max_inflight=3 * mib
    )
    hoard, big = _raw(transport.port, "hoard"), _raw(transport.port, "big")
    try:
        assert transport.wait_for_clients(2, 20)
        names = {conn.name: c for c, conn in transport._registry.fleet.items()}
        model = {"w": np.zeros(4)}  # one model for all
        tasks = {c: Task("fit", 1, {}, model) for c in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 60)
        task = hoard.next_task()
        cap_reply(transport, task.task_id, 4 * mib)  # raised over the limit of its model
        hoard.send(
            reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", result=FIT, weights_size=3 * mib)
        )
        hoard.send_chunk(bytes(2 * mib))
        assert _until(lambda: transport._service.budget.used == 2 * mib)
        task = big.next_task()
        cap_reply(transport, task.task_id, 4 * mib)
        big.send(
            reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", result=FIT, weights_size=2 * mib)
        )
        big.send_chunk(bytes(2 * mib))
        assert _until(lambda: names["big"] in {r.cid for r in replies}, 60)
        end.now(transport)
        exchange.join(30)
        error = {r.cid: r.error or "" for r in replies}[names["big"]]
        assert "limit of 3145728 bytes of replies at once" in error
        assert "was not kept" in error
        # Not the client's fault: it stays connected, and nothing it sent stays reserved.
        big.send(heartbeat=pb.Heartbeat())
        hoard.send(heartbeat=pb.Heartbeat())
        assert _until(lambda: transport._service.budget.used == 0)
        assert sorted(transport.clients()) == sorted(names.values())
        assert not events.of("protocol-error")
    finally:
        hoard.close()
        big.close()
        transport.close()


# -- a certificate holder that misbehaves in a served run ------------------------------------


def _secure_raw(port: int, tls: ClientTLS, hello: pb.Hello) -> Raw:
    """A hand-driven stream over mutual TLS (``Raw`` dials without TLS)."""
    raw = Raw.__new__(Raw)
    raw.channel = _channel(port, tls)
    raw.out = queue.Queue()
    raw.send(hello=hello)
    raw.call = raw.channel.stream_stream(METHOD)(raw._requests())
    return raw


def _hang_up_at_goodbye(raw: Raw) -> None:
    """Read on; at the goodbye hang up, as a client does (the server's end need not wait 5 s)."""
    with contextlib.suppress(grpc.RpcError):
        for message in raw.messages():
            if message.WhichOneof("body") == "goodbye":
                raw.close()
                return


@pytest.mark.slow
def test_a_certificate_holder_that_parks_streams_poses_and_never_answers(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)
    for name in ("c0", "c1", "mallory"):
        issue_client(fed, name)
    mallory = tls_from_certs(fed, "mallory")
    strategy = covey.FedAvg(min_available_clients=3, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(
        strategy, 3, certs=fed, run_dir=tmp_path / "run", round_timeout=1.5, max_clients=70
    )  # every round waits out its deadline for mallory: keep it short
    parked = _Parked(served.port, 80, mallory)  # more than the server's slots
    honest: list[Joined] = []
    raw: Raw | None = None
    try:
        assert _until(lambda: parked.ended() >= 16)
        honest = [Joined(served.port, Fit(), tls=tls_from_certs(fed, n)) for n in ("c0", "c1")]
        # Mallory says Hello as c0: the server goes by its certificate, and it takes
        # its tasks without ever answering them.
        hello = pb.Hello(version=covey.__version__, name="c0", kinds=["fit"], protocol=PROTOCOL)
        raw = _secure_raw(served.port, mallory, hello)
        welcome = next(raw.messages()).welcome
        assert welcome.name == "mallory"
        threading.Thread(target=_hang_up_at_goodbye, args=(raw,), daemon=True).start()

        def beat() -> None:  # alive as far as the server can tell
            while served.thread.is_alive():
                raw.send(heartbeat=pb.Heartbeat())
                time.sleep(0.2)

        threading.Thread(target=beat, daemon=True).start()
        result = served.join(90)
    finally:
        parked.close()
        if raw is not None:
            raw.close()
        for client in honest:
            client.join(30)
    rounds = result.history.rounds[1:]
    assert len(rounds) == 3
    for record in rounds:
        assert len(record.fit_participants) == 2
        assert [f.name for f in record.fit_failures] == ["mallory"]
    # It missed round 1; still "working" on that task, it is sent no other.
    assert rounds[0].fit_failures[0].error == "no reply in time"
    assert all(r.fit_failures[0].error.startswith("busy: ") for r in rounds[1:])
    for client in honest:
        assert client.result is not None
        assert client.result.tasks == 3
    with RunStore.open(tmp_path / "run") as store:
        events = [(c, e, d) for _, c, e, d in store.events()]
    refused = [d for c, e, d in events if c == "mallory" and e == "refused"]
    assert any("streams of the same certificate" in d for d in refused), refused


class _Recording(covey.Client):
    """Records the weights each fit is called with."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.seen.append(dict(weights))
        return covey.FitResult(weights=dict(weights), num_examples=1)


@pytest.mark.parametrize(
    "sent",
    [
        {"w": np.zeros(4, dtype=np.float16)},  # another dtype
        {"w": np.zeros(5, dtype=np.float32)},  # another shape
        {"w": np.zeros(4, dtype=np.float32), "x": np.zeros(1, dtype=np.float32)},
        {"w": np.array([0, np.nan, 0, 0], dtype=np.float32)},
    ],
    ids=["dtype", "shape", "names", "nan"],
)
def test_a_client_given_the_model_refuses_weights_of_another_layout(sent: Any) -> None:
    blob = bytes(_codec.encode(sent))

    def script() -> Iterator[bytes]:
        task = pb.TaskHeader(task_id=1, kind="fit", round=1, config=b"{}", weights_size=len(blob))
        yield control(pb.ServerMessage(task=task))
        yield CHUNK_TAG + blob
        server.wait_replies(1)  # the client hangs up at the goodbye: its reply first
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))

    server = _HostileServer(script)
    client = _Recording()
    spec = WeightsSpec.of({"w": np.zeros(4, dtype=np.float32)})
    try:
        connect(client, f"127.0.0.1:{server.port}", insecure=True, spec=spec, max_attempts=1)
    finally:
        server.close()
    assert client.seen == []
    (reply,) = server.replies
    assert "the weights of the server's fit task" in reply.error


def _secagg_setup(session: bytes, length: int) -> dict[str, Any]:
    """A well-formed SecAgg+ advertisement request for client 0 of three."""
    return {
        "session": session,
        "cid": 0,
        "x": 1,
        "neighbors": {"1": 2, "2": 3},
        "threshold": 2,
        "length": length,
        "bits": 32,
        "bound": 100,
    }


def _secagg_errors(steps: list[tuple[str, dict[str, Any]]]) -> dict[int, str | None]:
    """Send ``steps`` as tasks, each once the last is answered; each task's error by id."""

    def script() -> Iterator[bytes]:
        for task_id, (kind, payload) in enumerate(steps, 1):
            header = pb.TaskHeader(
                task_id=task_id, kind=kind, round=1, config=b"{}", payload=_wire.dumps(payload)
            )
            yield control(pb.ServerMessage(task=header))
            server.wait_replies(task_id)  # each reply in before the next task, and the goodbye
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))

    server = _HostileServer(script)
    try:
        connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        server.close()
    return {r.task_id: r.error for r in server.replies}


def test_secure_aggregation_messages_out_of_order_are_refused_by_the_client() -> None:
    import covey.secagg  # noqa: F401 - teaches the client runtime the SecAgg+ task kinds

    session = bytes(range(32))
    # A length of 10**12 allocates nothing: the input must have this length.
    setup = _secagg_setup(session, 10**12)
    errors = _secagg_errors(
        [
            ("secagg.share", {"session": session, "keys": {}}),  # before advertising
            ("secagg.advertise", {**setup, "threshold": 7}),  # more than the neighbours
            ("secagg.advertise", setup),
            ("secagg.unmask", {"session": session, "alive": [0, 1, 2], "dropped": []}),
            ("secagg.mask", {"session": bytes(32), "input_kind": "x", "shares": {}}),
        ]
    )
    assert "no secure-aggregation run in progress" in str(errors[1])
    assert "threshold 7 is not in [2, 3]" in str(errors[2])
    assert not errors[3]  # a well-formed advertisement is answered
    assert "unmasking request in stage advertised" in str(errors[4])
    assert "no secure-aggregation run in progress" in str(errors[5])  # the state was dropped


def test_hostile_consistency_requests_are_refused_by_the_client() -> None:
    import covey.secagg  # noqa: F401 - teaches the client runtime the SecAgg+ task kinds

    session = bytes(range(32))
    setup = _secagg_setup(session, 4)
    lists = {"session": session, "alive": [0, 1, 2], "dropped": []}
    errors = _secagg_errors(
        [
            ("secagg.advertise", setup),
            ("secagg.consistency", {**lists, "alive": [0, True]}),  # a bool is no client id
            ("secagg.advertise", setup),
            ("secagg.consistency", lists),  # before the masked input
            ("secagg.advertise", setup),
            ("secagg.unmask", {**lists, "signatures": [b"x" * 64]}),
        ]
    )
    assert "the consistency-check request lists True, which is not a client id" in str(errors[2])
    assert "consistency-check request in stage advertised" in str(errors[4])
    assert "the survivor-list signatures is not a mapping" in str(errors[6])


@pytest.mark.parametrize(
    ("kind", "config", "refusal"),
    [
        ("fit", b'{"lr":{"__float__":"nan"}}', "the server's config holds NaN at lr"),
        ("fit", b'{"opt":{"betas":[0.9,{"__float__":"nan"}]}}', "NaN at opt.betas[1]"),
        ("fit", b'{"m":{"__array__":[1.0,NaN],"dtype":"<f8"}}', "NaN at m"),  # a bare NaN
        ("fit", b"[1, 2]", "the server's config is a list, not an object"),
        ("fit", b'{"n":' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels"),
        ("format.disk", b"{}", "unknown task kind 'format.disk'"),
    ],
    ids=["nan", "nested-nan", "array-nan", "list", "deep", "kind"],
)
def test_a_client_refuses_hostile_task_configs_clearly(
    kind: str, config: bytes, refusal: str
) -> None:
    blob = bytes(_codec.encode({"w": np.zeros(4)}))

    def script() -> Iterator[bytes]:
        header = pb.TaskHeader(task_id=1, kind=kind, round=1, config=config, weights_size=len(blob))
        yield control(pb.ServerMessage(task=header))
        yield CHUNK_TAG + blob
        server.wait_replies(1)  # the client hangs up at the goodbye: its reply first
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason="over")))

    server = _HostileServer(script)
    client = _Recording()
    try:
        connect(client, f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        server.close()
    assert client.seen == []
    (reply,) = server.replies
    assert refusal in reply.error


def test_a_second_reply_interleaved_into_the_first_drops_only_its_client() -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    raw = _raw(transport.port, "weave")
    honest = Joined(transport.port, name="honest", max_attempts=1)
    try:
        assert transport.wait_for_clients(2, 20)
        names = {conn.name: c for c, conn in transport._registry.fleet.items()}
        tasks = {c: Task("fit", 1, {}, {"w": np.zeros(4)}) for c in transport.clients()}
        exchange, replies = _exchange(transport, tasks, 20)
        task = raw.next_task()
        blob = bytes(_codec.encode({"w": np.ones(4)}))
        header = pb.ReplyHeader(
            task_id=task.task_id, kind="fit", result=FIT, weights_size=len(blob)
        )
        raw.send(reply=header)
        raw.send_chunk(blob[:40])
        raw.send(reply=header)  # a second reply woven into the first
        raw.send_chunk(blob[40:])
        exchange.join(30)
        by_cid = {r.cid: r for r in replies}
        assert by_cid[names["honest"]].ok
        assert "a new reply started before the reply to task" in (
            by_cid[names["weave"]].error or ""
        )
        (name, detail), *_ = events.of("protocol-error")
        assert name == "weave"
        assert "(40 of 128 bytes received)" in detail
        assert transport._service.budget.used == 0
    finally:
        raw.close()
        transport.close()
        honest.join(30)


def test_a_reply_cut_off_by_a_lost_connection_is_logged_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A client process killed in the middle of its upload: gRPC's error on the server
    # (a bare RpcError) says nothing, and the warning ended in ": " with no reason.
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    raw = _raw(transport.port, "cut")
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        exchange, replies = _exchange(transport, {cid: Task("fit", 1, {}, {"w": np.zeros(4)})}, 20)
        task = raw.next_task()
        blob = bytes(_codec.encode({"w": np.ones(4)}))
        header = pb.ReplyHeader(
            task_id=task.task_id, kind="fit", result=FIT, weights_size=len(blob)
        )

        def cut() -> Iterator[bytes]:  # what gRPC hands the server of that stream
            yield control(pb.ClientMessage(reply=header))
            yield CHUNK_TAG + blob[:40]
            raise grpc.RpcError()

        with caplog.at_level("WARNING", logger="covey"):
            transport._service._read(transport._registry.fleet[cid], cut())
        exchange.join(30)
        assert not replies[0].ok
        said = [r.getMessage() for r in caplog.records if "in the middle of a reply" in r.message]
        assert len(said) == 1, said
        assert "(40 of 128 bytes received): the connection ended without" in said[0]
    finally:
        raw.close()
        transport.close()


#: A client that joins, starts its reply to its first task, then waits to be killed.
_HALF_A_REPLY = """
import sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np, covey
from _live import Raw
from covey.core import _codec
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc.proto import covey_pb2 as pb
raw = Raw(int(sys.argv[1]), pb.Hello(version=covey.__version__, name=sys.argv[3],
                                    kinds=["fit"], protocol=PROTOCOL))
task = raw.next_task()
blob = bytes(_codec.encode({"w": np.ones(4)}))
result = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'
raw.send(reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", result=result,
                              weights_size=len(blob)))
raw.send_chunk(blob[:40])
time.sleep(120)
"""


def test_a_client_killed_in_the_middle_of_its_reply_did_not_break_the_protocol() -> None:
    # gRPC may end the stream of a connection that died before it marks the call
    # cancelled: the killed client was then recorded as breaking the protocol.
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    try:
        for attempt in range(3):  # the race goes either way: try it a few times
            name = f"killed-{attempt}"
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _HALF_A_REPLY,
                    str(transport.port),
                    str(Path(__file__).parent),
                    name,
                ]
            )
            try:
                assert _until(lambda: len(transport.clients()) == 1, 60)
                (cid,) = transport.clients()
                tasks = {cid: Task("fit", 1, {}, {"w": np.zeros(4)})}
                exchange, replies = _exchange(transport, tasks, 60)
                conn = transport._registry.fleet[cid]
                assert _until(lambda: getattr(conn.upload, "filled", 0) == 40)  # noqa: B023
                child.kill()  # its kernel closes the connection: no end of stream was sent
                exchange.join(30)
            finally:
                child.kill()
                child.wait(30)
            (reply,) = replies
            assert reply.error == (
                "client disconnected in the middle of its reply (40 of 128 bytes received)"
            )
            assert _until(lambda: not transport.clients())
        assert events.of("protocol-error") == []
    finally:
        transport.close()


def test_a_hostile_servers_goodbye_reason_is_kept_cut_to_its_start_and_end() -> None:
    # 4 MB of reason were logged and returned whole.
    reason = "over: " + "x" * (4 << 20) + " the end"

    def script() -> Iterator[bytes]:
        yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason=reason)))

    server = _HostileServer(script)
    try:
        result = connect(Fit(), f"127.0.0.1:{server.port}", insecure=True, max_attempts=1)
    finally:
        server.close()
    assert len(result.reason) < 1200
    assert result.reason.startswith("over: x")
    assert result.reason.endswith("x the end")
    assert "characters left out" in result.reason


def test_a_malformed_complete_reply_gives_its_bytes_back_once() -> None:
    # A reply whose bytes all came but whose checksum is bad was given back to the
    # budget twice (when complete, and again as the reader cleaned up after the
    # refusal), taking another reply's reservation with it: the cap could be passed.
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    slow, bad = _raw(transport.port, "slow"), _raw(transport.port, "bad")
    try:
        assert transport.wait_for_clients(2, 20)
        cids = {name: cid for cid, name in _names(transport).items()}
        tasks = {cid: Task("fit", 1, {}, {"w": np.zeros(4)}) for cid in cids.values()}
        exchange, replies = _exchange(transport, tasks, 30)
        slow_task, bad_task = slow.next_task(), bad.next_task()
        slow.send(
            reply=pb.ReplyHeader(
                task_id=slow_task.task_id, kind="fit", result=FIT, weights_size=1000
            )
        )
        slow.send_chunk(bytes(500))  # half a reply, held
        _wait(lambda: transport._service.budget.used == 500, "the held half")
        blob = bytearray(_codec.encode({"w": np.ones(4)}))
        blob[-3] ^= 0x40
        bad.send(
            reply=pb.ReplyHeader(
                task_id=bad_task.task_id, kind="fit", result=FIT, weights_size=len(blob)
            )
        )
        bad.send_chunk(bytes(blob))
        _wait(lambda: cids["bad"] not in transport.clients(), "the malformed reply's refusal")
        assert transport._service.budget.used == 500  # the held half, still reserved
        slow.send_chunk(bytes(500))
        exchange.join(30)
        assert {r.cid: r.ok for r in replies} == {cids["slow"]: False, cids["bad"]: False}
        assert transport._service.budget.used == 0
    finally:
        slow.close()
        bad.close()
        transport.close()


def _names(transport: GrpcServerTransport) -> dict[int, str]:
    with transport._registry.lock:
        return {cid: conn.name for cid, conn in transport._registry.fleet.items()}


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
