"""Ctrl-C while the server starts leaves nothing listening."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from covey.transport.grpc import _options
from covey.transport.grpc._server import GrpcServerTransport


class _Interrupt(KeyboardInterrupt):
    """Ctrl-C, as it lands right after gRPC started the server."""


def test_an_interrupt_right_after_the_server_started_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = _options.grpc.server
    ports: list[int] = []

    def server(*args: Any, **kwargs: Any) -> Any:
        real = made(*args, **kwargs)

        class Interrupted:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def add_insecure_port(self, address: str) -> int:
                ports.append(real.add_insecure_port(address))
                return ports[-1]

            def start(self) -> None:
                real.start()
                raise _Interrupt

        return Interrupted()

    monkeypatch.setattr(_options.grpc, "server", server)
    with pytest.raises(_Interrupt):
        GrpcServerTransport("127.0.0.1:0")
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5),
    ):
        pass
