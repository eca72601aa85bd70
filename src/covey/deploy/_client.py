"""``covey.connect``: run a client next to its data and join a federation over gRPC."""

from __future__ import annotations

from pathlib import Path

# A connected client performs compressed fit tasks: importing the runtime registers them.
import covey.compress._runtime  # noqa: F401
from covey.transport.grpc._client import ClientTLS, connect

__all__ = ["client_tls", "connect", "tls_from_certs"]


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
