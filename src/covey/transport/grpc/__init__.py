"""The gRPC transport: one bidirectional stream per client, mutual TLS, chunked bulk data.

The server side (:class:`GrpcServerTransport`) keeps the registry of connected
clients and implements the :class:`~covey.transport.Transport` seam; the client
side (:func:`connect`) dials the server and runs tasks with the client runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: the process backend's wire format needs no gRPC
    from covey.transport.grpc._checks import AddressError
    from covey.transport.grpc._client import ClientTLS, ConnectResult, connect
    from covey.transport.grpc._refusal import Refused
    from covey.transport.grpc._server import GrpcServerTransport, ServerTLS
    from covey.transport.grpc._wire import WireError, WireLimits

__all__ = [
    "AddressError",
    "ClientTLS",
    "ConnectResult",
    "GrpcServerTransport",
    "Refused",
    "ServerTLS",
    "WireError",
    "WireLimits",
    "connect",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "AddressError": "_checks",
            "ClientTLS": "_client",
            "ConnectResult": "_client",
            "GrpcServerTransport": "_server",
            "Refused": "_refusal",
            "ServerTLS": "_server",
            "WireError": "_wire",
            "WireLimits": "_wire",
            "connect": "_client",
        },
        ["proto"],
    )
