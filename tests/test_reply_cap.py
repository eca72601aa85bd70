"""A deployed client refuses to send a reply whose arrays pass the server's cap on them.

A server caps the bytes of arrays in a reply by the model of the task it
answers (about four times the model, 64 MiB for a task without one), and drops
the connection of a client whose reply header declares more. The client did not
know the cap: its reply (a task kind of one's own answering with large arrays,
a fit answering arrays larger than the model) cost it its connection, with no
word of why in the round, and it reconnected only to be dropped again. Each
task's header now states the cap, and the client sends a reply over it as the
task's failure, naming the size and the cap, and stays connected.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import pytest

import covey
from _live import Events, Joined, next_reply
from covey.clients._client import _HANDLERS
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.sim import ProcessTransport, inline_transport
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc import _client as client_module
from covey.transport.grpc._frames import reply_frames
from covey.transport.grpc._server import task_limits
from covey.transport.grpc._wirecheck import NO_MODEL_REPLY_BYTES, reply_bytes_limit
from covey.transport.grpc.proto import covey_pb2 as pb

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")]

#: A model of 8 kB: its replies may take about 1.1 MB of arrays.
MODEL = {"w": np.zeros(1000)}
#: Arrays of 2.4 MB: over that cap.
LARGE = 300_000


def _grow(client: Any, task: Task) -> dict[str, Any]:
    """A task kind of one's own answering with as many zeros as its config says."""
    return {"n": 1, "zeros": np.zeros(int(task.config["size"]))}


class _Widens(covey.Client):
    """A fit answering weights far larger than the model it was sent."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": np.zeros(LARGE)}, num_examples=1)


def _cap() -> int:
    return reply_bytes_limit(MODEL)


def test_the_cap_a_client_computes_is_the_servers() -> None:
    task = Task("fit", 1, {}, MODEL)
    assert reply_bytes_limit(MODEL) == task_limits(task, _codec.Encoded(MODEL))[0]
    assert reply_bytes_limit(None) == NO_MODEL_REPLY_BYTES == task_limits(Task("q", 1), None)[0]
    assert 8000 * 4 < _cap() < 2 * 1024 * 1024 < _codec.encoded_size({"z": np.zeros(LARGE)})


def test_a_reply_of_a_task_kind_over_the_cap_fails_its_task_and_keeps_the_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(_HANDLERS, "grow", _grow)
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    client = Joined(transport.port, name="grower", max_attempts=1)
    try:
        with caplog.at_level(logging.WARNING, logger="covey"):
            assert transport.wait_for_clients(1, 20)
            (cid,) = transport.clients()
            transport.submit(cid, Task("grow", 4, {"size": LARGE}, MODEL))
            reply = next_reply(transport)
            size = _codec.encoded_size({"zeros": np.zeros(LARGE)})
            assert reply.error == (
                f"cannot send the result: its arrays take {size} bytes, more than the limit "
                f"of {_cap()} bytes of arrays in a reply to its grow task (about four times "
                "the task's model, 64 MiB for a task that carries none)"
            )
            # Still connected, on the same connection: a reply within the cap goes through.
            transport.submit(cid, Task("grow", 5, {"size": 1000}, MODEL))
            reply = next_reply(transport)
            assert reply.ok, reply.error
            assert reply.result["zeros"].shape == (1000,)
        assert not events.of("protocol-error")
        assert [n for n, _ in events.of("join")] == ["grower"]
        said = [r.getMessage() for r in caplog.records if "cannot send the result" in r.message]
        assert len(said) == 1
        assert said[0].startswith("the grow task of update 4 failed: cannot send the result: ")
        assert f"its arrays take {size} bytes" in said[0]
    finally:
        transport.close()
        client.join(30)
    assert client.result is not None
    assert client.result.sessions == 1


def test_a_fit_answering_arrays_over_the_cap_fails_alone_and_its_client_stays() -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    client = Joined(transport.port, _Widens(), name="widens", max_attempts=1)
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        replies: list[Reply] = []
        exchange = threading.Thread(
            target=lambda: replies.extend(
                transport.exchange({cid: Task("fit", 2, {}, MODEL)}, timeout=60)
            )
        )
        exchange.start()
        exchange.join(60)
        (reply,) = replies
        assert reply.error is not None
        assert reply.error.startswith("cannot send the result: its arrays take ")
        assert f"more than the limit of {_cap()} bytes of arrays in a reply to its fit task" in (
            reply.error
        )
        assert transport.clients() == [cid]
        assert not events.of("protocol-error")
    finally:
        transport.close()
        client.join(30)
    assert client.result is not None
    assert client.result.sessions == 1


def test_a_task_header_states_the_cap_on_its_reply() -> None:
    """What an older client ignores; an older server's header, without it, caps nothing."""
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    seen: list[int] = []
    original = client_module.server_message

    def spy(frame: bytes) -> Any:
        message = original(frame)
        if message.WhichOneof("body") == "task":
            seen.append(message.task.reply_bytes)
        return message

    client = None
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(client_module, "server_message", spy)
            client = Joined(transport.port, name="plain", max_attempts=1)
            assert transport.wait_for_clients(1, 20)
            (cid,) = transport.clients()
            transport.submit(cid, Task("fit", 1, {}, MODEL))
            assert next_reply(transport).ok
            transport.submit(cid, Task("evaluate", 1, {}, None))
            next_reply(transport)
        assert seen == [_cap(), NO_MODEL_REPLY_BYTES]
    finally:
        transport.close()
        if client is not None:
            client.join(30)
    # A header stating no cap (an older server's): the reply goes as it is.
    result = {"zeros": np.zeros(LARGE)}
    frames = list(reply_frames(1, Reply(0, "grow", result=result)))
    header = pb.ClientMessage.FromString(frames[0])
    assert header.reply.weights_size > _cap()
    assert not header.reply.error


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_simulation_refuses_a_task_kinds_reply_over_the_cap_as_deployed(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_HANDLERS, "grow", _grow)
    tasks = {
        0: Task("grow", 1, {"size": LARGE}, MODEL),
        1: Task("grow", 1, {"size": 1000}, MODEL),
    }
    if backend == "inline":
        replies = list(inline_transport(lambda cid: covey.Client(), 2).exchange(tasks))
    else:
        with ProcessTransport(lambda cid: covey.Client(), 2, num_workers=1) as processes:
            replies = list(processes.exchange(tasks))
    errors = {r.cid: r.error for r in replies}
    size = _codec.encoded_size({"zeros": np.zeros(LARGE)})
    assert errors[0] == (
        f"cannot send the result: its arrays take {size} bytes, more than the limit "
        f"of {_cap()} bytes of arrays in a reply to its grow task (about four times "
        "the task's model, 64 MiB for a task that carries none)"
    )
    assert errors[1] is None


#: A model of 2.4 MB: a fit's update and extras may take about 10.6 MB of arrays.
BIG_MODEL = {"w": np.zeros(LARGE)}


class _Extras(covey.Client):
    """A fit answering its update with model-sized extras: five for client 0, one for others.

    An update and five extras, 14.4 MB, pass the cap; an update and one extra (as
    SCAFFOLD sends) do not. Odd clients report a metric too.
    """

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        delta = {"w": np.zeros_like(weights["w"])}
        extras = {f"extra{i}": delta for i in range(5 if self.cid in (0, 1) else 1)}
        metrics = {"loss": 0.5} if self.cid % 2 else {}
        return covey.FitResult(delta=delta, num_examples=1, metrics=metrics, extras=extras)


def _deployed_error(result: covey.FitResult) -> str:
    """The failure a deployed client sends for ``result`` instead of its arrays."""
    most = reply_bytes_limit(BIG_MODEL)
    frames = reply_frames(1, Reply(0, "fit", result=result), most=most, task="fit task")
    header = pb.ClientMessage.FromString(next(frames))
    return header.reply.error


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_simulation_refuses_a_fits_extras_over_the_cap_as_deployed(backend: str) -> None:
    # A fit result's update and extras were not held to the cap in simulation: a
    # client sending a few model-sized extras trained there and failed deployed.
    run = covey.simulate(
        _Extras,
        4,
        1,
        covey.FedAvg(fraction_evaluate=0.0),
        BIG_MODEL,
        backend=backend,  # type: ignore[arg-type]
        num_workers=1 if backend == "process" else None,
    )
    (record,) = run.history.rounds[1:]
    assert record.fit_participants == [2, 3]
    errors = {f.cid: f.error for f in record.fit_failures}
    for cid in (0, 1):
        expected = _deployed_error(_Extras(cid).fit(BIG_MODEL, {}))
        assert expected.startswith("cannot send the result: its arrays take "), expected
        assert errors[cid] == expected


def test_an_inline_exchange_refuses_a_fits_extras_over_the_cap_as_deployed() -> None:
    tasks = {cid: Task("fit", 1, {}, BIG_MODEL) for cid in range(3)}
    replies = {r.cid: r for r in inline_transport(_Extras, 3).exchange(tasks)}
    for cid in (0, 1):
        assert replies[cid].error == _deployed_error(_Extras(cid).fit(BIG_MODEL, {}))
    assert replies[2].ok
