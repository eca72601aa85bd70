"""The gRPC transport: one bidirectional stream per client, mutual TLS, chunked bulk data.

The server side (:class:`GrpcServerTransport`) keeps the registry of connected
clients and implements the :class:`~covey.transport.Transport` seam; the client
side (:func:`connect`) dials the server and runs tasks with the client runtime.
"""

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
