"""Data connections beside the gRPC stream (``serve(data_port=...)``), on 127.0.0.1.

The arrays of tasks and replies go as raw bytes on two TCP connections per
client; every header, size, checksum and limit stays on the stream. These tests
check that a run is the same with them as without, under TLS too, and that the
data port refuses what the stream refuses: unknown tokens, another client's
certificate, truncated, corrupt, oversized and unannounced bytes.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.deploy._client import client_tls
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc import _lane, _service
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc.proto import covey_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit, Joined, Raw, Served, cap_reply

pytestmark = pytest.mark.timeout(120)

FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'
WEIGHTS = {"w": np.arange(1000, dtype=np.float32)}


class _Spy:
    """Counts the bytes written on data connections (both directions)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self.lock = threading.Lock()
        send = _lane.send

        def counted(sock: Any, *blobs: Any, **kwargs: Any) -> None:
            send(sock, *blobs, **kwargs)
            with self.lock:
                self.bytes += sum(len(b) for b in blobs if b is not None)

        monkeypatch.setattr(_lane, "send", counted)


def _model() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return {"w": rng.normal(size=(700, 900)).astype(np.float32), "b": np.arange(7.0)}


class _Noisy(covey.Client):
    """Returns the weights plus noise of its own (a different update per client)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        rng = np.random.default_rng(self.k * 100 + int(config["round"]))
        update = {n: v + rng.normal(size=v.shape).astype(v.dtype) for n, v in weights.items()}
        return covey.FitResult(weights=update, num_examples=10 + self.k)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(np.mean(weights["w"])), num_examples=1)


class _Scaffolded(_Noisy):
    """SCAFFOLD's client half: tasks and replies carry control variates beside the weights."""

    def __init__(self, k: int) -> None:
        super().__init__(k)
        self.control = covey.clients.ControlVariate()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        correction = self.control.correction(weights, config)
        moved = super().fit(weights, config).weights
        assert moved is not None
        w = {n: moved[n] - 0.01 * correction[n] for n in moved}
        return self.control.fit_result(w, num_examples=10 + self.k, steps=1, lr=0.01)


def _same(a: Any, b: Any) -> None:
    """Equal to float32 rounding: a deployed round folds replies in the order they arrive."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _run(data_port: int | None, strategy: Any = None, make: Any = _Noisy, **kwargs: Any) -> Any:
    strategy = strategy or covey.FedAvg(min_fit_clients=3, min_available_clients=3)
    served = Served(
        strategy, 3, initial_weights=_model(), data_port=data_port, **kwargs.pop("s", {})
    )
    clients = [Joined(served.port, make(k), name=f"c{k}", **kwargs) for k in range(3)]
    result = served.join(90)
    for joined in clients:
        joined.join(30)
        assert joined.error is None, joined.error
    return result


def test_a_run_with_a_data_port_equals_one_without(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _run(None)
    spy = _Spy(monkeypatch)
    fast = _run(0)
    assert set(fast.weights) == set(plain.weights)
    for name, array in plain.weights.items():
        _same(fast.weights[name], array)
    model = len(_codec.Encoded(_model()))
    # 3 rounds of 3 fit tasks and 3 replies, and 3 evaluate tasks: every model on the data port.
    assert spy.bytes >= 3 * 9 * model
    assert [r.fit_participants for r in fast.history.rounds] == [
        r.fit_participants for r in plain.history.rounds
    ]


def test_extra_arrays_take_the_data_port(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = covey.Scaffold(num_clients=3, min_available_clients=3, fraction_evaluate=0)
    plain = _run(None, strategy, _Scaffolded)
    spy = _Spy(monkeypatch)
    fast = _run(0, strategy, _Scaffolded)
    # Each task carries the server's control variate, each reply the client's change of it.
    assert spy.bytes >= 3 * 6 * 2 * len(_codec.Encoded(_model()))
    for name, array in plain.weights.items():
        _same(fast.weights[name], array)


def test_compressed_updates_take_the_data_port(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = covey.FedAvg(min_fit_clients=3, min_available_clients=3, fraction_evaluate=0)
    plain = _run(None, strategy, s={"compression": "q8"})
    spy = _Spy(monkeypatch)
    fast = _run(0, strategy, s={"compression": "q8"})
    model = len(_codec.Encoded(_model()))
    assert spy.bytes >= 3 * 3 * model  # the models sent; the 8-bit updates come back too
    # The same bytes both ways, counted per round, as on the stream; the stochastic
    # rounding of each update is seeded by a client id that depends on the order of joining.
    assert [(r.bytes_sent, r.bytes_received) for r in fast.history.rounds] == [
        (r.bytes_sent, r.bytes_received) for r in plain.history.rounds
    ]
    for name, array in plain.weights.items():
        np.testing.assert_allclose(fast.weights[name], array, atol=0.2)


def test_mutual_tls_data_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = tmp_path / "fed"
    init_federation(fed, hosts=("127.0.0.1",))
    for k in range(3):
        issue_client(fed, f"c{k}")
    strategy = covey.FedAvg(min_fit_clients=3, min_available_clients=3, fraction_evaluate=0)
    spy = _Spy(monkeypatch)
    served = Served(strategy, 2, initial_weights=_model(), data_port=0, certs=fed, insecure=False)
    clients = [
        Joined(
            served.port,
            _Noisy(k),
            insecure=False,
            tls=client_tls(
                fed / "ca.pem", fed / "clients" / f"c{k}.pem", fed / "clients" / f"c{k}.key"
            ),
        )
        for k in range(3)
    ]
    result = served.join(90)
    for joined in clients:
        joined.join(30)
        assert joined.error is None, joined.error
    assert spy.bytes >= 2 * 6 * len(_codec.Encoded(_model()))
    assert all(np.isfinite(a).all() for a in result.weights.values())
    assert [len(r.fit_participants) for r in result.history.rounds[1:]] == [3, 3]


def test_a_client_that_cannot_reach_the_data_port_uses_the_stream(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plain = _run(None)

    def unreachable(*args: Any, **kwargs: Any) -> socket.socket:
        raise ConnectionRefusedError("refused (test)")

    monkeypatch.setattr(_lane, "open_lane", unreachable)
    spy = _Spy(monkeypatch)
    with caplog.at_level(logging.WARNING, "covey"):
        fallen_back = _run(0)
    assert spy.bytes == 0
    assert "cannot open data connections to 127.0.0.1:" in caplog.text
    for name, array in plain.weights.items():
        _same(fallen_back.weights[name], array)


# -- who may open a data connection ------------------------------------------------------------


def _raw_client(transport: GrpcServerTransport, name: str = "raw") -> tuple[Raw, pb.Welcome]:
    hello = pb.Hello(
        version=covey.__version__, name=name, kinds=["fit"], protocol=PROTOCOL, data_lane=True
    )
    raw = Raw(transport.port, hello)
    welcome = next(raw.messages()).welcome
    assert welcome.data_port == transport.data_port
    assert len(welcome.data_token) == _lane.TOKEN_BYTES
    return raw, welcome


def _open(port: int, direction: int, token: bytes) -> socket.socket:
    return _lane.open_lane("127.0.0.1", port, direction, token, None, None, 30.0)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` without answering (bounded wait)."""
    sock.settimeout(20)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_only_a_live_token_opens_a_data_connection() -> None:
    events: list[tuple[str, str, str]] = []
    transport = GrpcServerTransport(
        "127.0.0.1:0", heartbeat=5.0, data_port=0, on_event=lambda *e: events.append(e)
    )
    raw, welcome = _raw_client(transport)
    port, token = welcome.data_port, welcome.data_token
    try:
        with pytest.raises(ConnectionError):
            _open(port, _lane.DOWN, bytes(_lane.TOKEN_BYTES))  # a token no stream was given
        for first in (bytes([7]) + token, b"GET / HTTP/1.1\r\n\r\n" + bytes(20)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(first)  # a direction that does not exist; not a data connection
                assert _closed_by_server(sock)
        down = _open(port, _lane.DOWN, token)
        with pytest.raises(ConnectionError):
            _open(port, _lane.DOWN, token)  # one connection per direction
        up = _open(port, _lane.UP, token)
        with pytest.raises(ConnectionError):
            _open(port, _lane.UP, token)  # the token is spent
        assert transport._service.data is not None
        assert transport._service.data.listener.refused == 5
        # Recorded as the run's events as they are logged (the 1st, 2nd and 4th), each
        # saying why (they were logged only, all as "no client waits for it").
        refused = [e for e in events if e[1] == "refused"]
        assert [e[0] for e in refused] == ["127.0.0.1"] * 3
        assert "closed: its token is no connected client's (1 so far)" in refused[0][2]
        assert "it asked for direction 7, which does not exist (2 so far)" in refused[1][2]
        assert "its client has that connection already (4 so far)" in refused[2][2]
        down.close()
        up.close()
    finally:
        raw.close()
        transport.close()


def test_silent_and_excess_connections_to_the_data_port_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_lane, "HANDSHAKE_SECONDS", 1.0)
    monkeypatch.setattr(_lane, "MAX_HANDSHAKES", 2)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, data_port=0)
    assert transport.data_port
    try:
        silent = [socket.create_connection(("127.0.0.1", transport.data_port)) for _ in range(3)]
        for sock in silent:  # two time out, the third finds no room at once
            assert _closed_by_server(sock)
            sock.close()
        data = transport._service.data
        assert data is not None
        # Counted by the server just after it closes the connection: wait for it, bounded.
        end = time.monotonic() + 20.0
        while data.listener.refused < 3 and time.monotonic() < end:
            time.sleep(0.05)
        assert data.listener.refused == 3
    finally:
        transport.close()


def test_a_token_with_another_clients_certificate_is_refused(tmp_path: Path) -> None:
    from covey.deploy._tls import tls_from_dir

    fed = tmp_path / "fed"
    init_federation(fed, hosts=("127.0.0.1",))
    for name in ("alice", "mallory"):
        issue_client(fed, name)
    events: list[tuple[str, str, str]] = []
    transport = GrpcServerTransport(
        "127.0.0.1:0",
        tls=tls_from_dir(fed),
        heartbeat=5.0,
        data_port=0,
        on_event=lambda *e: events.append(e),
    )
    alice = client_tls(fed / "ca.pem", fed / "clients" / "alice.pem", fed / "clients" / "alice.key")
    tokens: list[bytes] = []
    offer = transport._service.data.offer  # type: ignore[union-attr]

    def kept(conn: Any) -> bytes:
        tokens.append(offer(conn))
        return tokens[-1]

    transport._service.data.offer = kept  # type: ignore[union-attr,method-assign]
    lanes = _lane.open_lane

    tried = threading.Event()

    def never(*args: Any, **kwargs: Any) -> socket.socket:
        tried.set()
        raise OSError("this client opens none (test)")

    try:
        _lane.open_lane = never  # alice's token stays unused
        joined = Joined(transport.port, Fit(), insecure=False, tls=alice)
        assert transport.wait_for_clients(1, 20)
        deadline = time.monotonic() + 20  # the token is offered as alice is welcomed
        while not tokens:
            assert time.monotonic() < deadline, "no data-port token was offered to alice"
            time.sleep(0.01)
        # alice gives up her lanes before the real ones are back: else she might open
        # them with her token herself, and it would be no one's by the test's turn
        assert tried.wait(20), "alice never tried to open her data connections"
        _lane.open_lane = lanes
        mallory = _lane.client_context(
            (fed / "ca.pem").read_bytes(),
            (fed / "clients" / "mallory.pem").read_bytes(),
            (fed / "clients" / "mallory.key").read_bytes(),
        )
        with pytest.raises(OSError, match=r"closed|EOF|reset"):  # no ACK: refused
            _lane.open_lane(
                "127.0.0.1", transport.data_port or 0, _lane.UP, tokens[0], mallory, None, 10
            )
        theirs = _lane.client_context(
            (fed / "ca.pem").read_bytes(),
            (fed / "clients" / "alice.pem").read_bytes(),
            (fed / "clients" / "alice.key").read_bytes(),
        )
        sock = _lane.open_lane(
            "127.0.0.1", transport.data_port or 0, _lane.UP, tokens[0], theirs, None, 10
        )
        sock.close()
        refused = [e[2] for e in events if e[1] == "refused"]
        assert any("it shows another certificate than its client's stream" in d for d in refused)
    finally:
        _lane.open_lane = lanes
        transport.close()
        joined.join(30)


# -- replies on the data port that break the protocol -------------------------------------------


class _LiveLanes:
    """A server with a data port, a raw client holding data connections and a good client."""

    def __init__(self, *, up: bool = True) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.transport = GrpcServerTransport(
            "127.0.0.1:0", heartbeat=5.0, data_port=0, on_event=lambda *e: self.events.append(e)
        )
        self.raw, welcome = _raw_client(self.transport)
        self.raw_cid = welcome.cid
        self.down = _open(welcome.data_port, _lane.DOWN, welcome.data_token)
        self.up = _open(welcome.data_port, _lane.UP, welcome.data_token) if up else None
        self.raw.send(heartbeat=pb.Heartbeat(data_ready=True))  # tasks may come now
        self.good = Joined(self.transport.port, name="good", max_attempts=1)
        assert self.transport.wait_for_clients(2, 20)
        self.replies: list[Reply] = []
        tasks = {cid: Task("fit", 1, {}, WEIGHTS) for cid in self.transport.clients()}
        self.thread = threading.Thread(
            target=lambda: self.replies.extend(self.transport.exchange(tasks, timeout=30)),
            daemon=True,
        )
        self.thread.start()
        self.task = self.raw.next_task()
        assert self.task.data_lane
        got = bytearray(self.task.weights_size)
        _lane.receive(self.down, memoryview(got))  # the task's arrays, on the data connection
        assert _codec.decode(bytes(got))["w"].tolist() == WEIGHTS["w"].tolist()

    def reply(self, size: int, data: bytes = b"") -> None:
        header = pb.ReplyHeader(
            task_id=self.task.task_id, kind="fit", result=FIT, weights_size=size, data_lane=True
        )
        self.raw.send(reply=header)
        if self.up is not None and data:
            self.up.sendall(data)

    def outcome(self) -> dict[int, Reply]:
        self.thread.join(40)
        assert not self.thread.is_alive(), "the exchange did not end"
        return {r.cid: r for r in self.replies}

    def close(self) -> None:
        for sock in (self.down, self.up):
            if sock is not None:
                sock.close()
        self.raw.close()
        self.transport.close()
        self.good.join(30)


def _encoded_reply() -> bytes:
    return bytes(_codec.encode({"w": WEIGHTS["w"] + 1}))


def _corrupt(live: _LiveLanes) -> None:
    blob = bytearray(_encoded_reply())
    blob[-10] ^= 0x40
    live.reply(len(blob), bytes(blob))


def _truncated(live: _LiveLanes) -> None:
    live.reply(1000, bytes(500))
    assert live.up is not None
    live.up.close()


def _oversized(live: _LiveLanes) -> None:
    cap_reply(live.transport, live.task.task_id, 4096)
    live.reply(8192, bytes(8192))


def _unopened(live: _LiveLanes) -> None:
    live.reply(1000)


LANE_CASES: dict[str, tuple[Any, str, str, bool]] = {
    "corrupt checksum": (_corrupt, "protocol-error", "checksum mismatch", True),
    "truncated": (_truncated, "leave", "in the middle of its reply (500 of 1000 bytes", True),
    "oversized": (_oversized, "protocol-error", "exceeds the limit of 4096", True),
    "no data connection": (_unopened, "protocol-error", "it has not opened", False),
}


@pytest.mark.parametrize("spill", [False, True], ids=["memory", "spilled"])
@pytest.mark.parametrize("case", list(LANE_CASES))
def test_a_bad_reply_on_the_data_port_drops_only_its_peer(
    case: str, spill: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if spill:
        monkeypatch.setattr(_service, "SPILL_BYTES", 0)
    act, event, expected, up = LANE_CASES[case]
    live = _LiveLanes(up=up)
    try:
        act(live)
        replies = live.outcome()
        assert live.transport._service.budget.used == 0
        details = [d for n, e, d in live.events if n == "raw" and e == event]
        assert any(expected in d for d in details), live.events
        assert replies[live.raw_cid].error is not None
        good = [r for cid, r in replies.items() if cid != live.raw_cid]
        assert len(good) == 1
        assert good[0].ok
        np.testing.assert_array_equal(good[0].result.weights["w"], WEIGHTS["w"] + 1)
        assert live.transport.clients() == [c for c in replies if c != live.raw_cid]
    finally:
        live.close()


def test_a_good_reply_on_the_data_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    live = _LiveLanes()
    try:
        blob = _encoded_reply()
        live.reply(len(blob), blob)
        replies = live.outcome()
        assert replies[live.raw_cid].ok
        np.testing.assert_array_equal(replies[live.raw_cid].result.weights["w"], WEIGHTS["w"] + 1)
        assert live.transport._service.budget.used == 0
    finally:
        live.close()


def test_a_data_connection_closed_under_a_task_drops_the_client() -> None:
    events: list[tuple[str, str, str]] = []
    transport = GrpcServerTransport(
        "127.0.0.1:0", heartbeat=5.0, data_port=0, on_event=lambda *e: events.append(e)
    )
    raw, welcome = _raw_client(transport)
    down = _open(welcome.data_port, _lane.DOWN, welcome.data_token)
    raw.send(heartbeat=pb.Heartbeat(data_ready=True))
    try:
        assert transport.wait_for_clients(1, 20)
        down.close()  # the client's end goes before the server writes a 40 MB task on it
        big = {"w": np.zeros(10_000_000, np.float32)}
        replies = list(transport.exchange({welcome.cid: Task("fit", 1, {}, big)}, timeout=30))
        assert len(replies) == 1
        assert not replies[0].ok
        assert transport.clients() == []
        assert any(e == "leave" and "data connection" in d for _, e, d in events), events
    finally:
        raw.close()
        transport.close()


def test_the_data_port_is_checked() -> None:
    for bad in (-1, 65536, True, 1.5, "0"):
        with pytest.raises(ValueError, match="data_port must be a port number"):
            GrpcServerTransport("127.0.0.1:0", data_port=bad)  # type: ignore[arg-type]
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError, match="cannot listen for data connections"):
            GrpcServerTransport("127.0.0.1:0", data_port=taken.getsockname()[1])
    finally:
        taken.close()


def test_a_client_that_never_says_it_is_ready_gets_its_tasks_on_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_lane, "READY_WAIT", 0.5)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, data_port=0)
    raw, welcome = _raw_client(transport)  # offered a data port; opens nothing, says nothing
    try:
        assert transport.wait_for_clients(1, 20)
        thread = threading.Thread(
            target=lambda: list(
                transport.exchange({welcome.cid: Task("fit", 1, {}, WEIGHTS)}, timeout=20)
            ),
            daemon=True,
        )
        thread.start()
        task = raw.next_task()  # after the wait, as chunk frames on the stream
        assert not task.data_lane
        assert task.weights_size == len(_codec.Encoded(WEIGHTS))
        # Waited for once: its later tasks go at once.
        assert transport._registry.fleet[welcome.cid].data_ready.is_set()
    finally:
        raw.close()
        transport.close()


def test_covey_server_takes_a_data_port_and_keeps_it_in_the_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from covey.cli import app
    from covey.deploy import _cli

    seen: dict[str, Any] = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setenv("COLUMNS", "250")
    base = ["server", "--app", "tiny_app:server_app", "--insecure", "--run-dir", "run"]
    monkeypatch.setattr(_cli, "_serve", lambda app, s, flags: seen.update(flags))
    result = CliRunner().invoke(app, [*base, "--data-port", "9093"])
    assert result.exit_code == 0, result.output
    assert seen["data_port"] == 9093
    assert "--data-port 9093" in seen["resume_hint"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, [*base, "--data-port", "-1"])
    assert result.exit_code == 2, result.output
    assert "--data-port must be a whole number 0 or more" in result.output
    result = CliRunner().invoke(app, [*base, "--data-port", "70000", "--wait-timeout", "1"])
    assert result.exit_code == 2, result.output  # refused before it listens
    # It was refused as `data_port must be ...` after the WITHOUT TLS warning.
    assert "--data-port must be a port number, 0 to 65535 (0: a free one), got 70000" in (
        result.output
    )
    assert "WITHOUT TLS" not in result.output
    assert not (tmp_path / "run" / "run.sqlite").exists()
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, [*base, "--address", "127.0.0.1:0", "--data-port", port])
    finally:
        taken.close()
    assert result.exit_code == 2, result.output
    assert "--data-port: cannot listen for data connections on 127.0.0.1:" in result.output


def test_a_peer_trickling_its_token_loses_its_slot_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The handshake's time was per read: a byte every few seconds kept a slot for ever.
    monkeypatch.setattr(_lane, "HANDSHAKE_SECONDS", 1.0)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, data_port=0)
    assert transport.data_port
    try:
        sock = socket.create_connection(("127.0.0.1", transport.data_port), timeout=20)
        closed = False
        for _ in range(30):  # a byte every 0.5 s, never the 33 of a whole token
            try:
                sock.sendall(b"\x01")
                sock.settimeout(0.5)
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "the trickling peer kept its connection"
        sock.close()
    finally:
        transport.close()


def test_a_client_opening_slow_data_connections_is_not_taken_for_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Opening them blocks the thread that reads the stream; with a short heartbeat the
    # client took the server's silence for a death, reconnected, and never trained.
    lanes = _lane.open_lane

    def slow(*args: Any, **kwargs: Any) -> socket.socket:
        threading.Event().wait(1.5)  # more than six heartbeats of 0.1 s
        return lanes(*args, **kwargs)

    monkeypatch.setattr(_lane, "open_lane", slow)
    strategy = covey.FedAvg(min_fit_clients=2, min_available_clients=2, fraction_evaluate=0)
    served = Served(strategy, 2, initial_weights=WEIGHTS, data_port=0, heartbeat=0.1)
    clients = [Joined(served.port, Fit(), name=f"c{k}") for k in range(2)]
    result = served.join(90)
    for joined in clients:
        joined.join(30)
        assert joined.error is None, joined.error
        assert joined.result is not None
        assert joined.result.sessions == 1
    np.testing.assert_array_equal(result.weights["w"], WEIGHTS["w"] + 2)
