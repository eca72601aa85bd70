"""How both ends open the ``Federation.Join`` stream: its name, caps, keepalive, TLS, listening.

The method is served and called without (de)serializers: its messages are the
frames of :mod:`._frames`. gRPC caps every frame at :data:`MAX_MESSAGE_BYTES`
in both directions (a chunk frame holds at most 2 MiB of data), so a larger
frame is refused by gRPC before covey sees it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from covey.transport.grpc._capacity import SPARE, Capacity
from covey.transport.grpc._handshakes import HandshakeWatch, certificate_hosts
from covey.transport.grpc._listen import ListenError, PortTaken, bind_all

if TYPE_CHECKING:
    from covey.transport.grpc._service import FederationService

logger = logging.getLogger("covey")

__all__ = [
    "MAX_MESSAGE_BYTES",
    "METHOD",
    "SERVICE",
    "ClientTLS",
    "ServerTLS",
    "client_security",
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
        ListenError: The address cannot be listened on (an OSError).
    """
    # covey refuses streams past max_clients in words (logged, recorded, the client told
    # the server is full); gRPC's own cap, a few streams above, refuses without a word.
    service.capacity = Capacity(max_clients, service.registry.event)
    for attempt in range(_ATTEMPTS):
        try:
            return _start(address, tls, service, max_clients)
        except PortTaken as exc:
            # Port 0 on a name of several addresses: the port the first one got is taken
            # on another. A new server gets another port (gRPC cannot unbind one).
            if attempt == _ATTEMPTS - 1:
                raise ListenError(
                    f"cannot listen on {address}: the port each try got for its first "
                    f"address was in use on another ({exc})"
                ) from None
            logger.info("%s; choosing another port for %s", exc, address)
    raise AssertionError("unreachable")  # pragma: no cover


_ATTEMPTS = 5


def _start(
    address: str, tls: ServerTLS | None, service: FederationService, max_clients: int
) -> tuple[grpc.Server, int]:
    """One try of :func:`start_server`: a new gRPC server, bound and started."""
    most = max_clients + SPARE
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=most + 8, thread_name_prefix="covey-rpc"),
        # Without SO_REUSEPORT a port held by another server is refused, not shared with it.
        options=[*grpc_options(), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=most,
    )
    # No (de)serializers: frames pass through as the bytes gRPC received (see _frames).
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Join": grpc.stream_stream_rpc_method_handler(service.join)}
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        port = _bind(server, address, tls, service)
        server.start()
    except BaseException:  # a refused address, or Ctrl-C while starting: nothing left listening
        server.stop(None)
        if service.handshakes is not None:
            service.handshakes.close()
        raise
    return server, port


def _bind(
    server: grpc.Server, address: str, tls: ServerTLS | None, service: FederationService
) -> int:
    """Add the listening port (under TLS, with the handshake watch); its number."""
    if tls is None:
        port = bind_all(address, server.add_insecure_port)
    else:
        # Dynamic credentials only for their per-connection hook: the watch notes who
        # connects, so that failed handshakes are reported with the peer's address.
        hosts = certificate_hosts(tls.cert)
        watch = HandshakeWatch(service.registry.event, hosts, service.admission.note_handshake)
        service.handshakes = watch

        def add(target: str) -> int:
            # Credentials of their own for each address: a second port given the same
            # dynamic credentials finds their initial certificate taken, and fails.
            creds = grpc.dynamic_ssl_server_credentials(
                grpc.ssl_server_certificate_configuration([(tls.key, tls.cert)], tls.ca),
                watch.fetch,
                require_client_authentication=True,
            )
            return int(server.add_secure_port(target, creds))

        port = watch.port = bind_all(address, add)
    return port


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
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
    return grpc.secure_channel(address, creds, options=options)


def client_security(
    tls: ClientTLS | None, insecure: bool, server_name: str | None
) -> ClientTLS | None:
    """``connect``'s TLS material, with ``server_name`` in it; or an error naming the mistake."""
    if tls is None and not insecure:
        raise ValueError("connect() needs tls=ClientTLS(...) or insecure=True")
    if tls is not None and insecure:
        raise ValueError("give tls= or insecure=True, not both")
    if server_name is None:
        return tls
    if tls is None:
        raise ValueError("server_name needs TLS: it names the host of the server's certificate")
    if not isinstance(server_name, str) or not server_name.strip():
        raise ValueError(f"server_name must be a host name, got {server_name!r}")
    return dataclasses.replace(tls, server_name=server_name.strip())
