"""Deployment: a real federation over gRPC with mutual TLS, resumable server state."""

from covey.deploy._client import client_tls, connect, tls_from_certs
from covey.deploy._server import ServerApp, ServeResult, serve
from covey.deploy._tls import tls_from_dir
from covey.transport.grpc._client import ClientTLS, ConnectResult
from covey.transport.grpc._server import ServerTLS

__all__ = [
    "ClientTLS",
    "ConnectResult",
    "ServeResult",
    "ServerApp",
    "ServerTLS",
    "client_tls",
    "connect",
    "serve",
    "tls_from_certs",
    "tls_from_dir",
]
