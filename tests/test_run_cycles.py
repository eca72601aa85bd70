"""A finished run lets go of its loop at once, not at the collector's next full pass.

The loop holds the run's last model, its aggregation state (a mean's sums, one
more model) and its transport (a process pool's handles); its round callback
refers back to the run. Were that a reference cycle, a large model's run would
keep two model copies alive after returning, until a full collection that a
long sweep of runs may not trigger for a while.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import covey
from _live import Joined, Raw, Served, stand_in
from covey.core._messages import Reply, Task
from covey.server._async import AsyncLoop
from covey.server._sync import RoundLoop
from covey.transport.grpc._client import connect
from covey.transport.grpc._frames import CHUNK_TAG, PROTOCOL, Download, control
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc._stream import Upload
from covey.transport.grpc.proto import covey_pb2 as pb

FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'


class _AddOne(covey.Client):
    def __init__(self, cid: int = 0) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _loops() -> list[object]:
    """The round loops the collector tracks, reachable or not."""
    return [o for o in gc.get_objects() if type(o) in (RoundLoop, AsyncLoop)]


@pytest.fixture
def no_collection() -> Iterator[None]:
    """Automatic collection off: only reference counts free what the run let go."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _strategy(kind: str) -> covey.Strategy:
    if kind == "fedbuff":
        return covey.FedBuff(buffer_size=2, fraction_evaluate=0.0)
    return covey.FedAvg(fraction_evaluate=0.0)


@pytest.mark.parametrize(
    ("backend", "kind"), [("inline", "fedavg"), ("process", "fedavg"), ("inline", "fedbuff")]
)
def test_simulate_leaves_no_loop_behind(
    no_collection: None, backend: str, kind: str, tmp_path: Path
) -> None:
    before = len(_loops())
    extra: dict[str, Any] = {"backend": backend}
    if backend == "process":
        extra["num_workers"] = 2
    result = covey.simulate(
        _AddOne,
        num_clients=4,
        rounds=2,
        strategy=_strategy(kind),
        initial_weights={"w": np.zeros(3)},
        run_dir=tmp_path / "run",
        **extra,
    )
    assert len(_loops()) == before
    assert result.history.rounds[-1].round == 2


def test_a_failed_simulation_leaves_no_loop_once_its_error_is_gone(no_collection: None) -> None:
    class Broken(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            raise ValueError("no data here")

    before = len(_loops())
    with pytest.raises(covey.FederationError, match="no data here"):
        covey.simulate(
            lambda cid: Broken(),
            num_clients=3,
            rounds=1,
            strategy=covey.FedAvg(fraction_evaluate=0.0),
            initial_weights={"w": np.zeros(3)},
        )
    assert len(_loops()) == before


def test_serve_leaves_no_loop_behind(no_collection: None, tmp_path: Path) -> None:
    before = len(_loops())
    served = Served(
        covey.FedAvg(min_available_clients=2, fraction_evaluate=0.0),
        2,
        run_dir=tmp_path / "run",
        plot=False,  # matplotlib's first import leaves cycles of its own through this frame
    )
    clients = [Joined(served.port, _AddOne(), name=f"site-{k}") for k in range(2)]
    result = served.join(90)
    for client in clients:
        client.join()
    served.result = None
    assert np.array_equal(result.weights["w"], np.full(8, 2.0))
    assert len(_loops()) == before


def test_a_reply_cut_off_by_a_lost_client_is_let_go_with_its_stream(no_collection: None) -> None:
    # gRPC's error for a connection that died sits in a reference cycle (its call's
    # state holds it, and its traceback the frames); the stream's reader was one of
    # those frames, and kept the reply it had been receiving, however large, until the
    # collector's next full pass, though the budget had been given its bytes back.
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    raw = Raw(transport.port, pb.Hello(version=covey.__version__, name="cut", protocol=PROTOCOL))
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        replies: list[Reply] = []
        task = Task("fit", 1, {}, {"w": np.zeros(4 << 20)})  # 32 MB
        exchange = threading.Thread(
            target=lambda: replies.extend(transport.exchange({cid: task}, timeout=60)),
            daemon=True,
        )
        exchange.start()
        header = pb.ReplyHeader(
            task_id=raw.next_task().task_id, kind="fit", result=FIT, weights_size=32 << 20
        )

        def cut() -> Iterator[bytes]:  # what gRPC hands the server of a stream that died
            yield control(pb.ClientMessage(reply=header))
            yield CHUNK_TAG + bytes(1 << 20)
            error = grpc.RpcError()
            error.held = error  # held, as gRPC's own is
            raise error

        transport._service._read(transport._registry.fleet[cid], cut())
        exchange.join(30)
        (reply,) = replies
        assert "in the middle of its reply (1048576 of 33554432 bytes" in (reply.error or "")
        assert [u for u in gc.get_objects() if type(u) is Upload] == []
        assert transport._service.budget.used == 0
    finally:
        raw.close()
        transport.close()


def _half_a_task_then_gone(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    """A server that welcomes a client, sends 1 MB of a 32 MB task, then fails its stream."""
    next(requests)
    welcome = pb.Welcome(cid=0, name="site", heartbeat_interval=5.0, protocol=PROTOCOL)
    yield control(pb.ServerMessage(welcome=welcome))
    task = pb.TaskHeader(task_id=1, kind="fit", round=1, config=b"{}", weights_size=32 << 20)
    yield control(pb.ServerMessage(task=task))
    yield CHUNK_TAG + bytes(1 << 20)
    context.abort(grpc.StatusCode.UNAVAILABLE, "the server went away")


def test_a_task_cut_off_by_a_lost_server_is_let_go_with_its_stream(no_collection: None) -> None:
    # The client's side of the same cycle: its reader kept the half-received model
    # while it reconnected (a second model-sized buffer once the next task came).
    server, port = stand_in(_half_a_task_then_gone)
    try:
        with pytest.raises(ConnectionError, match="went away"):
            connect(_AddOne(), f"127.0.0.1:{port}", insecure=True, max_attempts=1)
    finally:
        server.stop(None)
    assert [d for d in gc.get_objects() if type(d) is Download] == []
