"""How both ends open the ``Federation.Join`` stream: its name, caps, keepalive, TLS, listening.

The method is served and called without (de)serializers: its messages are the
frames of :mod:`._frames`. gRPC caps every frame at :data:`MAX_MESSAGE_BYTES`
in both directions (a chunk frame holds at most 2 MiB of data), so a larger
frame is refused by gRPC before covey sees it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from covey.transport.grpc._service import FederationService

__all__ = [
    "MAX_MESSAGE_BYTES",
    "METHOD",
    "SERVICE",
    "ClientTLS",
    "ServerTLS",
    "grpc_options",
    "open_channel",
    "start_server",
]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SERVICE = "covey.v1.Federation"
METHOD = f"/{SERVICE}/Join"


def grpc_options(max_message: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Channel/server options shared by both sides: message caps and keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class ServerTLS:
    """The server's TLS material; clients must present a certificate chaining to ``ca``.

    Args:
        ca: PEM of the federation CA (verifies client certificates).
        cert: PEM of the server certificate.
        key: PEM of the server's private key.
        is_revoked: ``(client_cert_pem) -> bool``; revoked clients are refused.
    """

    ca: bytes
    cert: bytes
    key: bytes
    is_revoked: Callable[[bytes], bool] | None = None


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
CHUNK_MMAP_THRESHOLD = 1024 * 1024
"""Allocations of at least this many bytes get pages of their own, given back when freed."""


@functools.cache
def fix_mmap_threshold() -> bool:
    """Make glibc give every freed allocation of 1 MiB or more back to the system at once.

    gRPC hands each received frame to Python as a new ``bytes`` of up to 2 MiB.
    glibc serves the first ones with pages of their own, then raises its
    threshold to their size and serves later ones from its heaps, where freed
    frames stay resident: about one model of such memory was measured in a
    server receiving four 400 MB replies at once. A fixed threshold (what the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable does) turns that off.
    Done once per process, on Linux with glibc only; True if it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, CHUNK_MMAP_THRESHOLD))


def start_server(
    address: str, tls: ServerTLS | None, service: FederationService, max_clients: int
) -> tuple[grpc.Server, int]:
    """Listen on ``address`` and serve ``service``; return the running server and its port.

    Args:
        address: ``host:port`` to listen on (port 0 picks a free one).
        tls: TLS material (mutual TLS); None means insecure.
        service: The service whose ``join`` handles each client's stream.
        max_clients: Most streams served at once.

    Returns:
        The started server and the port it listens on.

    Raises:
        OSError: The address cannot be listened on.
    """
    fix_mmap_threshold()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_clients + 8, thread_name_prefix="covey-rpc"),
        options=grpc_options(),
        maximum_concurrent_rpcs=max_clients,
    )
    # No (de)serializers: frames pass through as the bytes gRPC received (see _frames).
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Join": grpc.stream_stream_rpc_method_handler(service.join)}
    )
    server.add_generic_rpc_handlers((handler,))
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        creds = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
        )
        port = server.add_secure_port(address, creds)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port


@dataclass(frozen=True)
class ClientTLS:
    """The client's TLS material.

    Args:
        ca: PEM of the federation CA (verifies the server).
        cert: PEM of this client's certificate (its identity is the certificate's name).
        key: PEM of this client's private key.
        server_name: Expected name in the server certificate, if not the host dialled.
    """

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None


def open_channel(
    address: str, tls: ClientTLS | None, options: list[tuple[str, Any]]
) -> grpc.Channel:
    """A channel to ``address``: insecure without ``tls``, else with the client's TLS."""
    fix_mmap_threshold()
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
    return grpc.secure_channel(address, creds, options=options)
