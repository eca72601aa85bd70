"""A reply is read against its own task: the model it was sent, and the kind it was given.

Each test starts its own server transport on 127.0.0.1 and drives clients by hand
(``_live.Raw``), so the order of tasks and replies is the test's own.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core import _codec
from covey.core._messages import Task
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc._stream import CHUNK_BYTES
from covey.transport.grpc.proto import covey_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent))
from _live import Events, Fit, Joined, Raw, next_reply

pytestmark = pytest.mark.timeout(120)

FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'
SMALL = {"w": np.zeros(4)}  # a reply to it may declare about 1 MiB
LARGE = {"w": np.zeros(300_000)}  # 2.4 MB: a reply to it may declare about 10 MiB


def _raw(port: int, name: str) -> Raw:
    hello = pb.Hello(version=covey.__version__, name=name, kinds=["fit"], protocol=PROTOCOL)
    return Raw(port, hello)


def _cids(transport: GrpcServerTransport, count: int) -> dict[str, int]:
    assert transport.wait_for_clients(count, 20)
    return {conn.name: cid for cid, conn in transport._registry.fleet.items()}


def _send_reply(raw: Raw, task_id: int, blob: bytes) -> None:
    header = pb.ReplyHeader(task_id=task_id, kind="fit", result=FIT, weights_size=len(blob))
    raw.send(reply=header)
    for start in range(0, len(blob), CHUNK_BYTES):
        raw.send_chunk(blob[start : start + CHUNK_BYTES])


def test_a_reply_past_the_limit_of_its_own_task_is_refused_whatever_was_sent_since() -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    small, large = _raw(transport.port, "small"), _raw(transport.port, "large")
    try:
        cids = _cids(transport, 2)
        transport.submit(cids["small"], Task("fit", 1, {}, SMALL))
        task = small.next_task()
        transport.submit(cids["large"], Task("fit", 1, {}, LARGE))  # the last model sent
        large.next_task()
        # 3 MB is within the limit of the large model's replies, not of its own task's.
        declared = 3_000_000
        small.send(
            reply=pb.ReplyHeader(
                task_id=task.task_id, kind="fit", result=FIT, weights_size=declared
            )
        )
        reply = next_reply(transport)
        assert reply.cid == cids["small"]
        assert not reply.ok
        assert f"reply of {declared} bytes to task {task.task_id} exceeds the limit of" in (
            reply.error or ""
        )
        (refused,) = events.of("protocol-error")
        assert refused[0] == "small"
        assert "for that task" in refused[1]
        assert transport.clients() == [cids["large"]]  # the other client is served on
    finally:
        small.close()
        large.close()
        transport.close()


def test_a_reply_sized_for_its_own_task_is_taken_after_a_smaller_model_was_sent() -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    large, small = _raw(transport.port, "large"), _raw(transport.port, "small")
    try:
        cids = _cids(transport, 2)
        transport.submit(cids["large"], Task("fit", 1, {}, LARGE))
        task = large.next_task()
        # An asynchronous run sends another model (here a smaller one) before it replies.
        transport.submit(cids["small"], Task("fit", 2, {}, SMALL))
        small.next_task()
        blob = bytes(_codec.encode({"w": LARGE["w"] + 1}))
        assert len(blob) > 2_000_000  # over the limit of the small model's replies
        _send_reply(large, task.task_id, blob)
        reply = next_reply(transport)
        assert reply.cid == cids["large"]
        assert reply.ok, reply.error
        np.testing.assert_array_equal(reply.result.weights["w"], LARGE["w"] + 1)
        assert not events.of("protocol-error")
    finally:
        large.close()
        small.close()
        transport.close()


def test_personal_models_of_one_exchange_each_bound_their_own_reply() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    first, second = _raw(transport.port, "first"), _raw(transport.port, "second")
    try:
        cids = _cids(transport, 2)
        # The larger model goes to the lower id: the smaller one is encoded after it.
        models = {min(cids.values()): LARGE, max(cids.values()): SMALL}
        tasks = {cid: Task("fit", 1, {}, model) for cid, model in models.items()}
        replies: list[Any] = []
        exchange = threading.Thread(
            target=lambda: replies.extend(transport.exchange(tasks, timeout=60)), daemon=True
        )
        exchange.start()
        raws = {cids["first"]: first, cids["second"]: second}
        for cid, raw in raws.items():
            task = raw.next_task()
            _send_reply(raw, task.task_id, bytes(_codec.encode({"w": models[cid]["w"] + 1})))
        exchange.join(60)
        got = {reply.cid: reply for reply in replies}
        assert all(reply.ok for reply in got.values()), [r.error for r in got.values()]
        assert sorted(got) == sorted(models)
    finally:
        first.close()
        second.close()
        transport.close()


# -- a reply of another kind than its task's ---------------------------------------------------


@pytest.mark.parametrize("error", ["", "it failed"], ids=["result", "failure"])
def test_a_reply_of_another_kind_than_its_task_is_refused_naming_both(error: str) -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    raw = _raw(transport.port, "mislabels")
    honest = Joined(transport.port, Fit(), name="honest", max_attempts=1)
    try:
        cids = _cids(transport, 2)
        tasks = {cid: Task("fit", 1, {}, SMALL) for cid in cids.values()}
        replies: list[Any] = []
        exchange = threading.Thread(
            target=lambda: replies.extend(transport.exchange(tasks, timeout=60)), daemon=True
        )
        exchange.start()
        task = raw.next_task()
        blob = b"" if error else bytes(_codec.encode({"w": SMALL["w"] + 1}))
        header = pb.ReplyHeader(
            task_id=task.task_id,
            kind="evaluate",
            result=b"" if error else FIT,
            error=error,
            weights_size=len(blob),
        )
        raw.send(reply=header)
        if blob:
            raw.send_chunk(blob)
        exchange.join(60)
        got = {reply.cid: reply for reply in replies}
        said = f"refused a reply of kind 'evaluate' to task {task.task_id}, a 'fit' task"
        assert said in (got[cids["mislabels"]].error or "")
        assert got[cids["mislabels"]].kind == "fit"
        assert got[cids["honest"]].ok, got[cids["honest"]].error  # the round goes on
        (refused,) = events.of("protocol-error")
        assert refused[0] == "mislabels"
        assert said in refused[1]
        assert transport.clients() == [cids["honest"]]  # the server serves on
    finally:
        raw.close()
        transport.close()
        honest.join(30)
