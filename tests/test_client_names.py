"""An insecure client's name is capped and holds no control characters.

A server records every name it admits (a row in ``run.sqlite`` per name) and
writes it in its log: a name of megabytes grew both without bound, and one
holding a line break could forge a log line.
"""

from __future__ import annotations

import grpc
import pytest

import covey
from _live import Events, Fit, Joined, Raw
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc._client import connect
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc.proto import covey_pb2 as pb

pytestmark = pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("x" * 5000, "a name of 5000 characters is over the limit of 256"),
        ("site-1\nrefused site-2 from 10.0.0.9", "the name holds the control character '\\n'"),
        ("a\x1b[31mred", "the name holds the control character '\\x1b'"),
    ],
)
def test_a_server_refuses_a_name_too_long_or_holding_control_characters(
    name: str, said: str
) -> None:
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=events)
    hello = pb.Hello(version=covey.__version__, name=name, kinds=["fit"], protocol=PROTOCOL)
    raw = Raw(transport.port, hello)
    honest = Joined(transport.port, name="honest", max_attempts=1)
    try:
        assert raw.ended() == grpc.StatusCode.INVALID_ARGUMENT
        assert transport.wait_for_clients(1, 20)
        assert len(transport.clients()) == 1
        ((who, detail),) = events.of("refused")
        assert name not in who  # the peer's address names it
        assert name not in detail
        assert f"client name: {said}" in detail
    finally:
        raw.close()
        transport.close()
        honest.join(30)


def test_a_client_given_such_a_name_is_refused_before_it_connects() -> None:
    with pytest.raises(ValueError, match="over the limit of 256"):
        connect(Fit(), "127.0.0.1:9", insecure=True, name="y" * 300, max_attempts=1)
    with pytest.raises(ValueError, match="control character"):
        connect(Fit(), "127.0.0.1:9", insecure=True, name="a\tb", max_attempts=1)
