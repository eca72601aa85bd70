"""The task kinds a client's ``Hello`` lists are capped in number and length.

A server keeps each connection's kinds, and names them in the failure of a task
of another kind, which it records and prints every round: a million kinds held
about 100 MiB per connection, and one kind of 64 Ki characters made a failure
line that took the server's console minutes to print.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import covey
from _live import Events, Joined, Raw
from covey.core._messages import Task
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc._checks import MAX_KINDS, MAX_NAME
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc.proto import covey_pb2 as pb

pytestmark = pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")


@pytest.mark.parametrize(
    ("kinds", "said"),
    [
        (["k" * 65536], "a task kind of 65536 characters ('kkkk"),
        (["fit", "x" * (MAX_NAME + 1)], f"is over the limit of {MAX_NAME}"),
        ([f"k{i}" for i in range(MAX_KINDS + 1)], f"task kinds are over the limit of {MAX_KINDS}"),
    ],
)
def test_a_server_refuses_a_hello_listing_too_many_or_too_long_task_kinds(
    kinds: list[str], said: str
) -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    hello = pb.Hello(version=covey.__version__, name="many", kinds=kinds, protocol=PROTOCOL)
    raw = Raw(transport.port, hello)
    honest = Joined(transport.port, name="honest", max_attempts=1)
    try:
        assert raw.ended() == grpc.StatusCode.INVALID_ARGUMENT
        assert transport.wait_for_clients(1, 20)
        assert len(transport.clients()) == 1
        ((who, detail),) = events.of("refused")
        assert who == "many"
        assert said in detail
        assert len(detail) < 1000
    finally:
        raw.close()
        transport.close()
        honest.join(30)


def test_the_failure_of_a_task_a_client_does_not_perform_names_a_few_of_its_kinds() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    kinds = [f"{i:03d}" + "k" * (MAX_NAME - 3) for i in range(MAX_KINDS)]
    hello = pb.Hello(version=covey.__version__, name="other", kinds=kinds, protocol=PROTOCOL)
    raw = Raw(transport.port, hello)
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        task = Task("fit", 1, weights={"w": np.zeros(2, np.float32)})
        (reply,) = transport.exchange({cid: task}, timeout=20)
        assert reply.error is not None
        assert reply.error.startswith("client other does not perform 'fit' tasks (it performs: 000")
        assert reply.error.endswith(f" and {MAX_KINDS - 10} more)")
        assert len(reply.error) < 11 * MAX_NAME
    finally:
        raw.close()
        transport.close()
