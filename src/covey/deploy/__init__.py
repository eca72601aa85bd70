"""Deployment: a real federation over gRPC with mutual TLS, resumable server state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: gRPC and cryptography are slow to import
    from covey.deploy._app import ServerApp, ServeResult
    from covey.deploy._client import client_tls, connect, tls_from_certs
    from covey.deploy._server import serve
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

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "ClientTLS": "covey.transport.grpc._client",
            "ConnectResult": "covey.transport.grpc._client",
            "ServeResult": "_app",
            "ServerApp": "_app",
            "ServerTLS": "covey.transport.grpc._server",
            "client_tls": "_client",
            "connect": "_client",
            "serve": "_server",
            "tls_from_certs": "_client",
            "tls_from_dir": "_tls",
        },
    )
