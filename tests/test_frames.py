"""The raw-frame wire over a live server on 127.0.0.1: bad frames, handshakes, lazy replies."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import covey
from covey.core import _codec
from covey.core._messages import DeferredReply, Reply, Task
from covey.server._sync import RoundLoop
from covey.transport.grpc import _service, _stream
from covey.transport.grpc._frames import (
    CHUNK_TAG,
    PROTOCOL,
    FrameError,
    chunk_data,
    client_message,
    control,
    is_chunk,
)
from covey.transport.grpc._refusal import Refused
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc._stream import CHUNK_BYTES, Spill
from covey.transport.grpc.proto import covey_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit, Joined, Raw, cap_reply, stand_in

pytestmark = pytest.mark.timeout(120)

WEIGHTS = {"w": np.arange(1000, dtype=np.float32)}
FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'


# -- frames, in one process ------------------------------------------------------------------


def test_chunk_and_control_frames_cannot_be_confused() -> None:
    for message in (
        pb.ClientMessage(heartbeat=pb.Heartbeat()),
        pb.ClientMessage(hello=pb.Hello()),
        pb.ClientMessage(reply=pb.ReplyHeader()),
    ):
        frame = control(message)
        assert not is_chunk(frame)
        assert client_message(frame) == message
    assert is_chunk(CHUNK_TAG + b"data")
    assert bytes(chunk_data(CHUNK_TAG + b"data")) == b"data"
    with pytest.raises(FrameError, match="exceeds the chunk size"):
        chunk_data(CHUNK_TAG + bytes(CHUNK_BYTES + 1))
    for junk in (b"", b"\xff\x13garbage", b"\x2a\x00"):
        with pytest.raises(FrameError):
            client_message(junk)


def test_a_chunk_frame_is_the_tag_and_one_copy_of_the_data() -> None:
    blob = _codec.Encoded({"a": np.arange(700_000.0), "b": np.arange(5.0)})
    whole = b"".join(bytes(memoryview(s).cast("B")) for s in blob.segments)
    frames = list(_stream.chunks(blob, prefix=CHUNK_TAG))
    assert all(f[:1] == CHUNK_TAG and len(f) <= CHUNK_BYTES + 1 for f in frames)
    assert b"".join(f[1:] for f in frames) == whole


# -- malformed frames against a live server ----------------------------------------------------


class _Live:
    """A server transport, a raw client and a well-behaved client in one exchange."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        # The raw client sends no heartbeats: a long interval keeps a loaded machine
        # from dropping it as silent before its malformed frame arrives.
        self.transport = GrpcServerTransport(
            "127.0.0.1:0", heartbeat=5.0, on_event=lambda *e: self.events.append(e)
        )
        self.raw = Raw(
            self.transport.port,
            pb.Hello(version=covey.__version__, name="raw", protocol=PROTOCOL, kinds=["fit"]),
        )
        self.raw_cid = next(self.raw.messages()).welcome.cid
        self.good = Joined(self.transport.port, name="good", max_attempts=1)
        assert self.transport.wait_for_clients(2, 20)
        self.replies: list[Reply] = []
        cids = self.transport.clients()
        tasks = {cid: Task("fit", 1, {}, WEIGHTS) for cid in cids}
        self.thread = threading.Thread(
            target=lambda: self.replies.extend(self.transport.exchange(tasks, timeout=30)),
            daemon=True,
        )
        self.thread.start()
        self.task = self.raw.next_task()

    def outcome(self) -> dict[int, Reply]:
        self.thread.join(40)
        assert not self.thread.is_alive(), "the exchange did not end"
        return {r.cid: r for r in self.replies}

    def close(self) -> None:
        self.raw.close()
        self.transport.close()
        self.good.join(30)


def _header(task_id: int, size: int) -> dict[str, Any]:
    return {"reply": pb.ReplyHeader(task_id=task_id, kind="fit", result=FIT, weights_size=size)}


def _past(live: _Live) -> None:
    live.raw.send(**_header(live.task.task_id, 100))
    live.raw.send_chunk(bytes(200))


def _unexpected(live: _Live) -> None:
    live.raw.send_chunk(bytes(64))


def _oversized(live: _Live) -> None:
    cap_reply(live.transport, live.task.task_id, 8 * CHUNK_BYTES)
    live.raw.send(**_header(live.task.task_id, 4 * CHUNK_BYTES))
    live.raw.send_chunk(bytes(CHUNK_BYTES + 1))


def _malformed(live: _Live) -> None:
    live.raw.send_frame(b"\xff\x13garbage")


def _truncated(live: _Live) -> None:
    live.raw.send(**_header(live.task.task_id, 1000))
    live.raw.send_chunk(bytes(500))
    live.raw.finish()


def _corrupt(live: _Live) -> None:
    blob = bytearray(_codec.encode({"w": np.arange(1000, dtype=np.float32) + 1}))
    blob[-10] ^= 0x40
    live.raw.send(**_header(live.task.task_id, len(blob)))
    live.raw.send_chunk(bytes(blob))


CASES: dict[str, tuple[Callable[[_Live], None], str]] = {
    "past the announced size": (_past, "more than the 100 bytes it announced"),
    "unexpected raw frame": (_unexpected, "arrived with no reply in progress"),
    "oversized frame": (_oversized, "exceeds the chunk size"),
    "malformed control frame": (_malformed, "malformed client control frame"),
    "truncated upload": (_truncated, "ended in the middle of a reply"),
    "corrupt checksum": (_corrupt, "checksum mismatch"),
}


@pytest.mark.parametrize("spill", [False, True], ids=["memory", "spilled"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_frame_drops_only_its_peer(
    case: str, spill: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if spill:
        monkeypatch.setattr(_service, "SPILL_BYTES", 0)
    act, expected = CASES[case]
    live = _Live()
    try:
        act(live)
        replies = live.outcome()
        assert live.transport._service.budget.used == 0
        refused = [d for n, e, d in live.events if n == "raw" and e == "protocol-error"]
        assert refused, live.events
        assert expected in refused[0]
        assert "peer ipv4:127.0.0.1:" in refused[0]
        assert replies[live.raw_cid].error is not None
        # The well-behaved client in the same exchange is untouched.
        good = [r for cid, r in replies.items() if cid != live.raw_cid]
        assert len(good) == 1
        assert good[0].ok
        np.testing.assert_array_equal(good[0].result.weights["w"], WEIGHTS["w"] + 1)
        assert len(live.transport.clients()) == 1
    finally:
        live.close()


def test_a_frame_over_grpcs_cap_ends_the_stream() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    raw = Raw(transport.port)
    try:
        assert transport.wait_for_clients(1, 10)
        raw.send_frame(CHUNK_TAG + bytes(9 * 1024 * 1024))
        assert raw.ended() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert transport._service.budget.used == 0
    finally:
        raw.close()
        transport.close()


# -- the protocol handshake, both ways ---------------------------------------------------------


def test_a_client_of_the_chunk_message_protocol_is_refused() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    try:
        raw = Raw(transport.port, pb.Hello(version=covey.__version__, name="old", kinds=["fit"]))
        with pytest.raises(grpc.RpcError) as info:
            next(raw.messages())
        raw.close()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "wire protocol" in info.value.details()
        assert transport.clients() == []
    finally:
        transport.close()


def _welcomed_by(welcome: pb.Welcome, attempts: int = 1, joins: list[int] | None = None) -> Any:
    """What a client making ``attempts`` attempts ends with, welcomed by a stand-in server so.

    Each stream the stand-in serves adds one to ``joins``.
    """

    def join(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        if joins is not None:
            joins.append(1)
        next(requests)
        yield control(pb.ServerMessage(welcome=welcome))
        context.abort(grpc.StatusCode.UNAVAILABLE, "should not get here")

    server, port = stand_in(join, workers=4)
    try:
        client = Joined(port, name="new", max_attempts=attempts, backoff=0.01)
        client.join(30)
        return client.error
    finally:
        server.stop(0).wait(5)


def test_a_client_refuses_a_server_of_the_chunk_message_protocol() -> None:
    """A stand-in for an old server: it welcomes without stating a protocol nor a version."""
    error = _welcomed_by(pb.Welcome(cid=1, name="x", heartbeat_interval=1))
    assert isinstance(error, Refused)
    assert "a server of an older covey (it states no version) speaks wire protocol 1" in str(error)
    assert f"this client (covey {covey.__version__}) speaks {PROTOCOL}" in str(error)


def test_a_client_refusing_a_server_of_another_protocol_names_its_version() -> None:
    welcome = pb.Welcome(cid=1, name="x", heartbeat_interval=1, protocol=3, version="0.9.0")
    error = _welcomed_by(welcome)
    assert isinstance(error, Refused)
    assert "a server of covey 0.9.0 speaks wire protocol 3" in str(error)


def test_a_client_refuses_a_welcome_stating_an_overlong_version_at_once() -> None:
    """No covey states such a version: not retried as if the frame were damaged in transit."""
    welcome = pb.Welcome(cid=1, name="x", protocol=PROTOCOL, version="9." + "x" * 99)
    joins: list[int] = []
    error = _welcomed_by(welcome, attempts=3, joins=joins)
    assert isinstance(error, Refused), error
    assert len(joins) == 1  # one attempt, not three
    assert "a covey version of 101 characters (at most 40): 9.xxx" in str(error)
    assert "check that the address is a covey server's" in str(error)


def test_the_servers_welcome_states_its_version_and_the_client_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="covey")
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    client = Joined(transport.port, name="site-a")
    raw = Raw(transport.port)
    try:
        welcome = next(raw.messages()).welcome
        assert (welcome.protocol, welcome.version) == (PROTOCOL, covey.__version__)
        assert transport.wait_for_clients(2, 20)
        for _ in range(200):  # the client logs once it reads its Welcome
            if any(m.startswith("connected") for m in caplog.messages):
                break
            time.sleep(0.05)
    finally:
        raw.close()
        transport.close()
        client.join(30)
    (line,) = [m for m in caplog.messages if m.startswith("connected")]
    assert line.startswith("connected as site-a (id ")
    assert line.endswith(f") to a server of covey {covey.__version__}")


# -- spilled replies are mapped only while they are folded --------------------------------------


def test_a_spilled_reply_is_mapped_only_while_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_service, "SPILL_BYTES", 0)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    client = Joined(transport.port, client=Fit(), name="c")
    try:
        assert transport.wait_for_clients(1, 20)
        (reply,) = transport.exchange({0: Task("fit", 1, {}, WEIGHTS)}, timeout=30)
        assert isinstance(reply, DeferredReply)
        spill = reply._unload.__self__  # type: ignore[attr-defined]
        assert isinstance(spill, Spill)
        assert not spill.mapped
        np.testing.assert_array_equal(reply.result.weights["w"], WEIGHTS["w"] + 1)
        assert spill.mapped
        reply.release()
        assert not spill.mapped
    finally:
        transport.close()
        client.join(30)


def test_the_round_loop_maps_one_spilled_reply_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_service, "SPILL_BYTES", 0)
    log: list[tuple[str, int]] = []
    loop_thread = threading.current_thread()
    real_map, real_unmap = Spill.map, Spill.unmap

    def spy_map(self: Spill) -> Any:
        if threading.current_thread() is loop_thread:
            log.append(("map", id(self)))
        return real_map(self)

    def spy_unmap(self: Spill) -> None:
        if threading.current_thread() is loop_thread and self.mapped:
            log.append(("unmap", id(self)))
        real_unmap(self)

    monkeypatch.setattr(Spill, "map", spy_map)
    monkeypatch.setattr(Spill, "unmap", spy_unmap)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    clients = [Joined(transport.port, client=Fit(delay=0.05 * k), name=f"c{k}") for k in range(3)]
    try:
        assert transport.wait_for_clients(3, 20)
        strategy = covey.FedAvg(min_available_clients=3, min_fit_clients=3, fraction_evaluate=0.0)
        history = RoundLoop(strategy, transport, dict(WEIGHTS), round_timeout=30).run(2)
        assert [len(r.fit_participants) for r in history.rounds[1:]] == [3, 3]
    finally:
        transport.close()
        for client in clients:
            client.join(30)
    # Each reply mapped when folded and unmapped before the next one is mapped.
    assert len(log) == 2 * 3 * 2
    for k in range(0, len(log), 2):
        assert log[k][0] == "map"
        assert log[k + 1] == ("unmap", log[k][1])


def test_spill_files_are_written_over_and_stale_bytes_never_read() -> None:
    files = _stream.SpillFiles(keep=1)
    long = _codec.encode({"w": np.arange(5000, dtype=np.float32)})
    short = _codec.encode({"w": np.arange(10, dtype=np.float32)})
    first = _stream.Upload(len(long), 0, spill=files)
    assert first.write(bytes(long))
    spill = first.spill()
    file = spill.file
    weights, _ = spill.map()
    assert weights is not None
    assert weights["w"][-1] == 4999
    del weights
    spill.close()
    assert not file.closed  # kept for the next message
    second = _stream.Upload(len(short), 0, spill=files)
    assert second.file is file
    assert second.write(bytes(short))
    spill = second.spill()
    weights, _ = spill.map()  # the file is longer than the message: mapped up to its size
    assert weights is not None
    np.testing.assert_array_equal(weights["w"], np.arange(10, dtype=np.float32))
    del weights
    spill.close()
    files.close()
    assert file.closed
    late = _stream.Upload(len(short), 0, spill=files)
    late.discard()  # given back to a closed pool: closed
    assert late.file is None


def test_a_refusal_is_recorded_before_the_round_sees_the_failed_reply() -> None:
    """Whoever reads the failed reply also finds its protocol-error event.

    A slow log handler (a console on a loaded machine) widens the window between
    the server logging the refusal and recording it.
    """

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "broke the protocol" in record.getMessage():
                time.sleep(0.5)

    handler = Slow()
    logger = logging.getLogger("covey")
    logger.addHandler(handler)
    live = _Live()
    try:
        _corrupt(live)
        replies = live.outcome()
        assert replies[live.raw_cid].error is not None
        refused = [d for n, e, d in live.events if n == "raw" and e == "protocol-error"]
        assert refused, live.events
        assert "checksum mismatch" in refused[0]
    finally:
        logger.removeHandler(handler)
        live.close()


def test_a_malformed_reply_drops_its_client_before_the_round_sees_the_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whoever reads the failed reply finds the client gone, not still taking tasks."""
    from covey.transport.grpc import _registry

    route = _registry.Registry.route
    connected: list[list[int]] = []  # who was connected as each failed reply went out

    def recording(self: Any, sink: Any, reply: Reply, name: str) -> None:
        if reply.error is not None:
            connected.append(sorted(c for c, conn in self.fleet.items() if conn.alive))
        route(self, sink, reply, name)

    monkeypatch.setattr(_registry.Registry, "route", recording)
    live = _Live()
    try:
        _corrupt(live)
        replies = live.outcome()
        assert "malformed reply" in (replies[live.raw_cid].error or "")
        assert connected
        assert all(live.raw_cid not in cids for cids in connected), connected
        assert live.transport.clients() == [c for c in replies if c != live.raw_cid]
    finally:
        live.close()
