"""``covey.connect``: run a client next to its data and join a federation over gRPC."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from covey.transport._grpc_client import ClientTLS, ConnectResult
from covey.transport._grpc_client import connect as _connect


def client_tls(
    ca: str | Path,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    *,
    server_name: str | None = None,
) -> ClientTLS:
    """Load a client's TLS material from PEM files."""
    return ClientTLS(
        ca=Path(ca).read_bytes(),
        cert=Path(cert).read_bytes() if cert is not None else None,
        key=Path(key).read_bytes() if key is not None else None,
        server_name=server_name,
    )


def tls_from_certs(directory: str | Path, client_id: str) -> ClientTLS:
    """A client's TLS material from a federation folder (``covey certs issue CLIENT_ID``)."""
    d = Path(directory)
    cert, key = d / "clients" / f"{client_id}.pem", d / "clients" / f"{client_id}.key"
    for path in (d / "ca.pem", cert, key):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; issue the client's certificate with "
                f"`covey certs issue {client_id} --dir {d}`"
            )
    return client_tls(d / "ca.pem", cert, key)


def connect(
    client: Any,
    address: str,
    *,
    tls: ClientTLS | None = None,
    insecure: bool = False,
    name: str = "",
    properties: dict[str, Any] | None = None,
    max_attempts: int | None = None,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    stop: threading.Event | None = None,
) -> ConnectResult:
    """Join the federation at ``address`` with ``client`` and work until the server says goodbye.

    The client is the same :class:`covey.Client` object that runs in
    :func:`covey.simulate`. It dials out (so it works behind NAT and firewalls),
    and reconnects with exponential backoff and jitter when the connection drops.

    Args:
        client: The client.
        address: The server's ``host:port``.
        tls: Mutual-TLS material (see :func:`client_tls`, :func:`tls_from_certs`).
        insecure: Connect without TLS (local experiments only).
        name: The client's name on an insecure server; with TLS its certificate names it.
        properties: Facts the server may select clients by.
        max_attempts: Give up after this many failed attempts in a row (None: never).
        backoff: First reconnection delay in seconds (doubles, with jitter).
        max_backoff: Longest reconnection delay.
        stop: Set this event to leave.

    Returns:
        How participation ended (the server's goodbye, tasks performed, sessions).
    """
    return _connect(
        client,
        address,
        tls=tls,
        insecure=insecure,
        name=name,
        properties=properties,
        max_attempts=max_attempts,
        backoff=backoff,
        max_backoff=max_backoff,
        stop=stop,
    )
