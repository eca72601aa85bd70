"""Stragglers deployed: serve() and connect() over gRPC on 127.0.0.1, in this process.

Slowness is made with events, never with sleeps: a straggler's ``fit`` waits
until the test lets it go, after its round has closed. Deadlines are short
only where a round must close without a client; no test asserts a duration.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined, Raw, Served
from covey.core._messages import Reply, Scalar
from covey.server._store import RunStore
from covey.transport.grpc import _client
from covey.transport.grpc._frames import PROTOCOL, server_message
from covey.transport.grpc._registry import Connection, Registry, Sink
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc.proto import covey_pb2 as pb

pytestmark = pytest.mark.slow

FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'

SIZES = {"a": 1, "b": 2, "slow": 3}  # each client's examples, and what it adds to each weight


class Site(covey.Client):
    """Adds ``SIZES[name]`` to every weight on as many examples; ``gate`` holds its fit."""

    def __init__(self, name: str, gate: threading.Event | None = None) -> None:
        self.name = name
        self.gate = gate
        self.rounds: list[int] = []
        self.started = threading.Event()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.rounds.append(int(config.get("round", -1)))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never let the straggler go"
        n = SIZES[self.name]
        return covey.FitResult(weights={k: v + n for k, v in weights.items()}, num_examples=n)


def _strategy(**options: Any) -> covey.Strategy:
    options.setdefault("fraction_evaluate", 0.0)
    return covey.FedAvg(on_fit_config=lambda rnd: {"round": rnd}, **options)


def _events(run_dir: Path) -> list[tuple[str, str, str]]:
    with RunStore.open(run_dir) as store:
        return [(client, event, detail) for _, client, event, detail in store.events()]


def _stopped(served: Served, joined: list[Joined], gate: threading.Event) -> covey.FederationError:
    """The error ``served``'s run stops with; then ``gate`` is opened and the clients joined."""
    try:
        with pytest.raises(covey.FederationError) as caught:
            served.join(60)
    finally:
        gate.set()
        for client in joined:
            client.join(30)
    return caught.value


def test_a_late_reply_is_discarded_and_never_folded_into_a_later_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="covey")
    gate = threading.Event()
    released: list[int] = []

    def on_round(record: covey.core.RoundRecord) -> None:
        if record.round == 1:  # the straggler's round is over: now it may answer
            released.append(1)
            gate.set()

    served = Served(
        _strategy(min_fit_clients=2, min_available_clients=3),
        3,
        round_timeout=1.0,
        run_dir=tmp_path / "run",
        on_round=on_round,
    )
    sites = {name: Site(name, gate if name == "slow" else None) for name in SIZES}
    joined = [Joined(served.port, site, name=name) for name, site in sites.items()]
    result = served.join(60)
    for client in joined:
        client.join(30)
    history = result.history
    ids = {name: cid for cid, name in history.clients.items()}
    first = history[1]
    assert first.fit_participants == sorted([ids["a"], ids["b"]])
    assert [(f.cid, f.name, f.error) for f in first.fit_failures] == [
        (ids["slow"], "slow", "no reply in time")
    ]
    assert first.fit_examples == 3
    # Each round's model is the weighted mean of its participants' updates and of
    # nothing else: the straggler's reply to round 1 (trained on the first model)
    # would change the result if it were folded into a later round.
    w = 0.0
    for record in history.rounds[1:]:
        names = [history.name_of(c) for c in record.fit_participants]
        n = [SIZES[name] for name in names]
        assert record.fit_examples == sum(n)
        w += sum(k * k for k in n) / sum(n)
    np.testing.assert_allclose(result.weights["w"], np.full(8, w))
    assert released == [1]
    assert any(c == "slow" and e == "late-reply" for c, e, _ in _events(tmp_path / "run"))
    # The deadline's warning names the client as every other line does, not by its number.
    assert "still working: ['slow']" in caplog.text


def test_a_run_that_cannot_reach_its_minimum_stops_and_records_why(tmp_path: Path) -> None:
    gate = threading.Event()
    served = Served(
        _strategy(min_fit_clients=3, min_available_clients=3),
        3,
        round_timeout=1.0,
        run_dir=tmp_path / "run",
    )
    sites = {name: Site(name, gate if name == "slow" else None) for name in SIZES}
    joined = [Joined(served.port, site, name=name) for name, site in sites.items()]
    error = _stopped(served, joined, gate)
    history = error.history
    assert "fewer than min_fit_clients=3" in str(error)
    # It sampled only min_fit_clients: the slow site alone stopped it, and it says what to set.
    assert str(error).endswith(
        "fewer than min_fit_clients=3; a round sampling no more than min_fit_clients stops at "
        "one straggler: sample more clients (fraction_fit), lower min_fit_clients or allow more "
        "time (round_timeout / --round-timeout); failures: slow: no reply in time"
    )
    assert history.stopped_reason == str(error)
    assert sorted(history.clients.values()) == ["a", "b", "slow"]
    last = history.rounds[-1]
    assert last.round == 1
    assert not last.aggregated
    assert [(f.name, f.error) for f in last.fit_failures] == [("slow", "no reply in time")]
    assert {"wait", "fit", "total"} <= set(last.durations)
    # The run folder says the same: the reason (not a traceback) and who failed.
    stopped = [d for c, e, d in _events(tmp_path / "run") if e == "stopped"]
    assert stopped == [history.stopped_reason]
    saved = covey.History.load(tmp_path / "run" / "history.json")
    assert saved.stopped_reason == history.stopped_reason
    assert saved.clients == history.clients
    assert saved.rounds[-1].fit_failures == last.fit_failures
    # Every client was told why the run stopped.
    assert all(c.result is not None and history.stopped_reason in c.result.reason for c in joined)


def test_a_straggler_still_working_is_not_sent_more_tasks() -> None:
    gate = threading.Event()
    sites = {name: Site(name, gate if name == "slow" else None) for name in SIZES}
    served = Served(_strategy(min_fit_clients=2, min_available_clients=3), 3, round_timeout=1.0)
    joined = [Joined(served.port, site, name=name) for name, site in sites.items()]
    try:
        result = served.join(60)
    finally:
        gate.set()  # only once the run is over
        for client in joined:
            client.join(30)
    history = result.history
    ids = {name: cid for cid, name in history.clients.items()}
    for record in history.rounds[1:]:
        assert record.fit_participants == sorted([ids["a"], ids["b"]])
        (failure,) = record.fit_failures
        assert (failure.cid, failure.name) == (ids["slow"], "slow")
    errors = [r.fit_failures[0].error for r in history.rounds[1:]]
    # Round 1 closed without it; in rounds 2 and 3 it was still working on round 1's
    # task: it was not sent another to queue behind it, and its failure says so.
    assert errors[0] == "no reply in time"
    assert all(e.startswith("busy: still working on its fit task") for e in errors[1:]), errors
    assert sites["slow"].rounds == [1]
    assert joined[-1].result is not None
    assert joined[-1].result.kinds == {"fit": 1}
    # The bytes sent are those of the tasks that left: a held one is not counted.
    model = sum(a.nbytes for a in result.weights.values())
    assert [r.bytes_sent for r in history.rounds[1:]] == [3 * model] + [2 * model] * 2


def test_a_client_whose_session_ends_runs_none_of_its_queued_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received = threading.Semaphore(0)
    control = _client._Session._control

    def counting(self: Any, frame: bytes, result: Any) -> Any:
        out = control(self, frame, result)
        received.release()  # a control frame was read (the welcome, each task header)
        return out

    monkeypatch.setattr(_client._Session, "_control", counting)
    gate = threading.Event()
    slow = Site("slow", gate)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    client = Joined(transport.port, slow, name="slow")
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        for rnd in (1, 2, 3):  # tasks 2 and 3 queue behind the first, which waits
            transport.submit(cid, covey.core.Task("fit", rnd, {"round": rnd}, {"w": np.zeros(2)}))
        assert slow.started.wait(30)
        for _ in range(4):  # the welcome and the three task headers reached the client
            assert received.acquire(timeout=30)
    finally:
        transport.close("the run is over")
        gate.set()
        client.join(30)
    # The tasks still queued when the server said goodbye are dropped, not run.
    assert slow.rounds == [1]
    assert client.result is not None
    assert client.result.reason == "the run is over"


def test_selection_by_properties_follows_a_client_that_rejoins_with_new_ones() -> None:
    gate = threading.Event()
    joins: list[str] = []

    def on_event(name: str, event: str, detail: str) -> None:
        if event == "join":
            joins.append(name)
            if joins.count("b") == 2:  # b is back, with a GPU now
                gate.set()

    in_round_2 = threading.Event()

    class Gated(Site):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            if config["round"] == 2:
                in_round_2.set()
                assert gate.wait(60)
            return super().fit(weights, config)

    strategy = _strategy(
        min_fit_clients=1, min_available_clients=3, where=lambda props: props["gpu"]
    )
    served = Served(strategy, 3, on_event=on_event)
    a = Gated("a")
    leave = threading.Event()
    joined = [
        Joined(served.port, a, name="a", properties={"gpu": True}),
        Joined(served.port, Site("b"), name="b", properties={"gpu": False}, stop=leave),
        Joined(served.port, Site("slow"), name="slow", properties={}),  # says nothing of a GPU
    ]
    try:
        assert in_round_2.wait(30)
        leave.set()
        joined[1].join(30)
        joined.append(Joined(served.port, Site("b"), name="b", properties={"gpu": True}))
        result = served.join(60)
    finally:
        gate.set()
        for client in joined:
            client.join(30)
    history = result.history
    ids = {name: cid for cid, name in history.clients.items()}
    assert [r.fit_participants for r in history.rounds[1:]] == [
        [ids["a"]],
        [ids["a"]],
        sorted([ids["a"], ids["b"]]),  # asked again after it rejoined
    ]
    assert all(not r.fit_failures for r in history.rounds)


def test_a_client_cut_off_mid_fit_reconnects_only_once_that_fit_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A session that ends waits a moment for its running task; this fit outlasts it.
    monkeypatch.setattr(_client._Session.close, "__defaults__", (0.2,))
    rejoined = threading.Event()
    overlapped: list[bool] = []

    class Long(Site):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            if config["round"] == 1:
                self.started.set()
                # Give a reconnection the time to happen while this fit still runs.
                overlapped.append(rejoined.wait(3.0))
            return super().fit(weights, config)

    def on_event(name: str, event: str, detail: str) -> None:
        if event == "join" and long.started.is_set():
            rejoined.set()

    long = Long("slow")
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=on_event)
    client = Joined(transport.port, long, name="slow")
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        transport.submit(cid, covey.core.Task("fit", 1, {"round": 1}, {"w": np.zeros(2)}))
        assert long.started.wait(30)
        transport._registry.drop(transport._registry.fleet[cid], "cut off by the test")
        lost = transport.next_reply(30)
        assert lost is not None
        assert lost.error == "client cut off by the test"
        assert rejoined.wait(30)
        transport.submit(cid, covey.core.Task("fit", 2, {"round": 2}, {"w": np.zeros(2)}))
        reply = transport.next_reply(30)
        assert reply is not None
        assert reply.ok
    finally:
        transport.close("the run is over")
        client.join(30)
    # The client came back once its fit was over: it never ran two tasks at once.
    assert overlapped == [False]
    assert long.rounds == [1, 2]


def test_a_straggler_that_frees_up_within_the_next_round_takes_part_in_it() -> None:
    gate = threading.Event()

    class SlowToEvaluate(Site):
        def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
            if self.name == "slow" and not gate.is_set():
                assert gate.wait(60)  # misses round 1's evaluation
            return covey.EvaluateResult(loss=1.0, num_examples=SIZES[self.name])

    class Releasing(SlowToEvaluate):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            if config["round"] == 2:  # round 2 sent its tasks: the straggler may finish
                gate.set()
            return super().fit(weights, config)

    strategy = _strategy(
        min_fit_clients=3, min_available_clients=3, fraction_evaluate=1.0, min_evaluate_clients=2
    )
    served = Served(strategy, 2, round_timeout=2.0)
    sites = {"a": Releasing("a"), "b": SlowToEvaluate("b"), "slow": SlowToEvaluate("slow")}
    joined = [Joined(served.port, site, name=name) for name, site in sites.items()]
    try:
        result = served.join(60)
    finally:
        gate.set()
        for client in joined:
            client.join(30)
    history = result.history
    ids = {name: cid for cid, name in history.clients.items()}
    first, second = history.rounds[1:]
    assert [(f.name, f.stage, f.error) for f in first.evaluate_failures] == [
        ("slow", "evaluate", "no reply in time")
    ]
    # Round 2 needs all three: the straggler, busy until its late evaluation was
    # in, was sent its fit task then, within the round's deadline.
    assert second.fit_participants == sorted(ids.values())
    assert sites["slow"].rounds == [1, 2]


@pytest.mark.parametrize("stream_end_drops_first", [False, True])
def test_a_client_cut_off_mid_upload_fails_naming_what_it_sent(
    stream_end_drops_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    if stream_end_drops_first:
        # gRPC's end-of-stream callback may drop the connection while its reader is
        # still reporting the protocol break: the reply must still be named.
        from covey.transport.grpc import _service

        logged = _service.logger

        class EndFirst:
            def __getattr__(self, name: str) -> Any:
                return getattr(logged, name)

            def warning(self, message: str, *args: Any) -> None:
                if "broke the protocol" in message:
                    for conn in list(transport._service.registry.fleet.values()):
                        transport._service.registry.drop(conn, "disconnected")
                logged.warning(message, *args)

        monkeypatch.setattr(_service, "logger", EndFirst())
    hello = pb.Hello(version=covey.__version__, name="flaky", kinds=["fit"], protocol=PROTOCOL)
    raw = Raw(transport.port, hello)
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        transport.submit(cid, covey.core.Task("fit", 1, {}, {"w": np.zeros(4)}))
        task = raw.next_task()
        raw.send(
            reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", result=FIT, weights_size=4096)
        )
        raw.send_chunk(bytes(1000))
        received = threading.Event()
        conn = transport._registry.fleet[cid]
        for _ in range(1200):  # bounded: until the server holds the chunk
            # What a drop reports; the bytes in flight are reserved before they are written.
            if conn.upload is not None and conn.upload.filled == 1000:
                received.set()
                break
            received.wait(0.05)
        assert received.is_set()
        if stream_end_drops_first:
            raw.finish()  # ended in order: its reader reports the protocol break
        else:
            raw.call.cancel()  # the connection is lost, not closed in order
            raw.channel.close()
        reply = transport.next_reply(30)
    finally:
        transport.close()
    assert reply is not None
    # A lost connection reads as such; one whose stream gRPC ended in order (it
    # may, for a cancelled call) as a reply cut short. Either names what came.
    assert reply.error in (
        "client disconnected in the middle of its reply (1000 of 4096 bytes received)",
        "client disconnected: it broke the protocol (its stream ended in the middle of a "
        "reply to task 1 (1000 of 4096 bytes received))",
    )


def test_a_client_joining_mid_run_is_sampled_from_the_next_round_on() -> None:
    joined_late = threading.Event()
    in_round_2 = threading.Event()

    class Waiting(Site):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            if config["round"] == 2:  # round 2 is sampled: let the third client in now
                in_round_2.set()
                assert joined_late.wait(60)
            return super().fit(weights, config)

    def on_event(name: str, event: str, detail: str) -> None:
        if name == "slow" and event == "join":
            joined_late.set()

    served = Served(_strategy(min_fit_clients=2, min_available_clients=2), 3, on_event=on_event)
    joined = [Joined(served.port, Waiting("a"), name="a"), Joined(served.port, Site("b"), name="b")]
    try:
        assert in_round_2.wait(30)
        joined.append(Joined(served.port, Site("slow"), name="slow"))
        result = served.join(60)
    finally:
        joined_late.set()
        for client in joined:
            client.join(30)
    history = result.history
    ids = {name: cid for cid, name in history.clients.items()}
    first_two = sorted([ids["a"], ids["b"]])
    assert [r.fit_participants for r in history.rounds[1:]] == [
        first_two,
        first_two,
        sorted(ids.values()),
    ]


class Evaluating(Site):
    """Evaluates to loss ``SIZES[name]`` on ``10 * SIZES[name]`` examples; "b" fails once."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.evaluations = 0

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        self.evaluations += 1
        if self.name == "b" and self.evaluations == 1:
            raise OSError("the test set is not mounted")
        n = SIZES[self.name]
        metrics: dict[str, Scalar] = {"acc": n / 10, f"only_{self.name}": 1.0}
        return covey.EvaluateResult(loss=float(n), num_examples=10 * n, metrics=metrics)


def test_federated_evaluation_deployed_is_weighted_by_examples_and_records_failures() -> None:
    strategy = _strategy(
        min_fit_clients=3, min_available_clients=3, fraction_evaluate=1.0, min_evaluate_clients=2
    )
    served = Served(strategy, 2)
    joined = [Joined(served.port, Evaluating(name), name=name) for name in SIZES]
    result = served.join(60)
    for client in joined:
        client.join(30)
    history = result.history
    for record in history.rounds[1:]:
        names = [history.name_of(c) for c in record.evaluate_participants]
        failed = [(f.name, f.stage, f.error) for f in record.evaluate_failures]
        if record.round == 1:
            assert failed == [("b", "evaluate", "OSError: the test set is not mounted")]
        else:
            assert failed == []
        assert sorted(names) == sorted(set(SIZES) - {f[0] for f in failed})
        n = {name: 10 * SIZES[name] for name in names}
        assert record.evaluate_examples == sum(n.values())
        total = sum(n.values())
        assert record.evaluate_loss == pytest.approx(
            sum(SIZES[k] * v for k, v in n.items()) / total
        )
        assert record.evaluate_metrics["acc"] == pytest.approx(
            sum(SIZES[k] / 10 * v for k, v in n.items()) / total
        )
        assert {k for k in record.evaluate_metrics if k.startswith("only_")} == {
            f"only_{name}" for name in names
        }


def test_an_asynchronous_run_queues_no_tasks_behind_a_straggler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tasks: list[int] = []  # the task headers the slow site received
    received: dict[str, int] = {}  # tasks each site received
    control = _client._Session._control

    def counting(self: Any, frame: bytes, result: Any) -> Any:
        if server_message(frame).WhichOneof("body") == "task":
            received[self.hello.name] = received.get(self.hello.name, 0) + 1
            if self.hello.name == "slow":
                tasks.append(server_message(frame).task.task_id)
        return control(self, frame, result)

    monkeypatch.setattr(_client._Session, "_control", counting)
    gate = threading.Event()
    strategy = covey.FedBuff(
        buffer_size=2, concurrency=3, min_available_clients=3, on_fit_config=lambda r: {"round": r}
    )
    # Many quick updates by "a" and "b": "slow" times out (0.1 s) and is given a new
    # task again and again while it still works on its first.
    served = Served(strategy, 300, round_timeout=0.1)
    slow = Site("slow", gate)
    joined = [Joined(served.port, Site(n), name=n) for n in ("a", "b")]
    joined.append(Joined(served.port, slow, name="slow"))
    try:
        result = served.join(60)
    finally:
        gate.set()  # only once the run is over
        for client in joined:
            client.join(30)
    failures = [f for r in result.history.rounds for f in r.fit_failures if f.name == "slow"]
    assert len(failures) >= 2
    # The first was sent and timed out; each later one waited on the server, never sent.
    assert failures[0].error == "no reply in time"
    assert all(f.error.startswith("busy: still working on an earlier") for f in failures[1:])
    # The slow site was given its first task and, while it worked on it, no other:
    # each later one waited on the server until its deadline.
    assert slow.rounds == [1]
    assert len(tasks) == 1
    # Bytes sent: the tasks that left, not the ones held (before: every one of them).
    # A task sent as the run closes may not be read by its client: at most 2 (a, b).
    model = sum(a.nbytes for a in result.weights.values())
    sent = sum(r.bytes_sent or 0 for r in result.history.rounds)
    assert model * sum(received.values()) <= sent <= model * (sum(received.values()) + 2)


class _Context:
    """The part of a gRPC servicer context a dropped connection uses."""

    def cancel(self) -> None:
        """Nothing to cancel."""


def test_a_connection_lost_mid_reply_fails_its_task_naming_the_bytes_that_came() -> None:
    events: list[tuple[str, str, str]] = []
    registry = Registry(on_event=lambda *event: events.append(event))
    conn = Connection("flaky", 0, _Context())
    registry.add(conn)
    sink = Sink()
    conn.pending[7] = (sink, "fit")
    conn.upload = SimpleNamespace(filled=1000, size=4096)  # as the reader left it
    registry.drop(conn, "disconnected")  # gRPC saw the connection go first
    why = "disconnected in the middle of its reply (1000 of 4096 bytes received)"
    assert sink.replies.get_nowait().error == f"client {why}"
    assert events == [("flaky", "leave", why)]


def test_a_reply_cut_off_by_the_end_of_the_run_is_told_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A task still in flight as a run ends is expected (FedBuff keeps clients busy to
    # the last update); it was logged as a WARNING, as a round closing on it is.
    registry = Registry(None, None)
    conn = SimpleNamespace(name="site-2", peer="ipv4:127.0.0.1:1")
    with caplog.at_level(logging.INFO, logger="covey"):
        registry.abandoned(conn, 41, 0, 1024)  # type: ignore[arg-type]
        registry.close()
        registry.abandoned(conn, 42, 0, 1024)  # type: ignore[arg-type]
    levels = [r.levelno for r in caplog.records if "closed (its round or the run)" in r.message]
    assert levels == [logging.WARNING, logging.INFO]


def test_a_client_busy_with_an_earlier_task_fails_its_evaluation_at_once() -> None:
    # Its fit of round 1 missed a short deadline and still runs; the evaluation that
    # follows has a deadline far longer than the test's bound. Waiting for the busy
    # client until that deadline (as the server did) would cost all of it for nothing.
    gate = threading.Event()
    sites = {name: Evaluating(name) for name in ("a", "slow")}
    sites["slow"].gate = gate
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    joined = [Joined(transport.port, site, name=name) for name, site in sites.items()]
    weights = {"w": np.zeros(2)}
    try:
        assert transport.wait_for_clients(2, 30)
        ids = {transport.client_name(cid): cid for cid in transport.clients()}
        fit = covey.core.Task("fit", 1, {"round": 1}, weights)
        replies = list(transport.exchange({cid: fit for cid in ids.values()}, timeout=0.5))
        assert [r.cid for r in replies] == [ids["a"]]  # the slow one's fit still runs
        assert sites["slow"].started.wait(30)
        evaluate = covey.core.Task("evaluate", 1, {}, weights)
        tasks = {cid: evaluate for cid in ids.values()}
        got: list[Reply] = []
        worker = threading.Thread(
            target=lambda: got.extend(transport.exchange(tasks, timeout=300.0)), daemon=True
        )
        worker.start()
        worker.join(30)  # shorter than the straggler's gate holds it (Site.fit)
        assert not worker.is_alive(), "the evaluation waited for the busy client"
        assert not gate.is_set()
        answered = {r.cid: r for r in got}
        assert answered[ids["a"]].ok, answered[ids["a"]].error
        busy = answered[ids["slow"]]
        assert (busy.kind, busy.error) == (
            "evaluate",
            "busy: still working on its fit task, whose time ran out, when this evaluation "
            "began, so it was not asked to evaluate (a client runs one task at a time)",
        )
        assert not transport.reached(ids["slow"])  # never sent: its bytes do not count
        assert transport.reached(ids["a"])
    finally:
        gate.set()
        transport.close("the run is over")
        for client in joined:
            client.join(30)
    assert sites["slow"].evaluations == 0  # it was never sent the evaluation
    assert sites["a"].evaluations == 1


def test_a_served_run_records_a_straggler_busy_for_the_evaluation_of_its_round() -> None:
    gate = threading.Event()
    strategy = _strategy(
        min_fit_clients=2, min_available_clients=3, fraction_evaluate=1.0, min_evaluate_clients=2
    )
    served = Served(strategy, 1, round_timeout=1.0)
    sites = {name: Evaluating(name) for name in SIZES}  # "b" fails its evaluation
    sites["slow"].gate = gate
    joined = [Joined(served.port, site, name=name) for name, site in sites.items()]
    try:
        result = served.join(60)
        assert not gate.is_set()  # the run ended with the straggler still in its fit
    finally:
        gate.set()
        for client in joined:
            client.join(30)
    (record,) = result.history.rounds[1:]
    assert [(f.name, f.stage, f.error) for f in record.fit_failures] == [
        ("slow", "fit", "no reply in time")
    ]
    failed = sorted((f.name, f.stage, f.error) for f in record.evaluate_failures)
    assert failed == [
        ("b", "evaluate", "OSError: the test set is not mounted"),
        (
            "slow",
            "evaluate",
            "busy: still working on its fit task, whose time ran out, when this evaluation "
            "began, so it was not asked to evaluate (a client runs one task at a time)",
        ),
    ]
    assert [result.history.name_of(c) for c in record.evaluate_participants] == ["a"]
    assert sites["slow"].evaluations == 0


def test_a_fedbuff_run_whose_clients_all_miss_the_timeout_names_it() -> None:
    # It stopped with "update 1: 17 replies in a row failed; last: busy: ..." and named
    # no setting: every client worked past --round-timeout.
    gate = threading.Event()
    strategy = covey.FedBuff(buffer_size=2, concurrency=3, min_available_clients=3)
    served = Served(strategy, 1, round_timeout=0.2)
    joined = [Joined(served.port, Site(n, gate), name=n) for n in SIZES]
    said = str(_stopped(served, joined, gate))
    assert "replies in a row failed" in said
    assert said.endswith(
        "no client replied within the round timeout of 0.2 s: allow more time "
        "(round_timeout / --round-timeout)"
    ), said
