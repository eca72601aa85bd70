"""``covey.connect``: run a client next to its data and join a federation over gRPC."""

from __future__ import annotations

from pathlib import Path

from covey.deploy._keymode import warn_if_open
from covey.deploy._pem import (
    check_ca,
    check_common_name,
    check_dates,
    check_pair,
    check_purpose,
    read_pem,
)
from covey.strategies._names import FLOWER_CONNECT, flower_keywords
from covey.transport.grpc._client import ClientTLS
from covey.transport.grpc._client import connect as _connect

__all__ = ["client_tls", "connect", "tls_from_certs"]

# Flower's start_client keywords (server_address=, root_certificates=) get covey's names.
connect = flower_keywords(FLOWER_CONNECT)(_connect)


def client_tls(
    ca: str | Path,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    *,
    server_name: str | None = None,
) -> ClientTLS:
    """Load a client's TLS material from PEM files, checked before any connection.

    A ``key`` file other users can read is warned of (``chmod 600`` fixes it).

    Raises:
        OSError: A file cannot be read (the error names it and what it holds).
        ValueError: ``cert`` is given without ``key`` or the other way round, a file
            is not PEM of the right kind or is over 4 MiB, ``key`` is not the key of
            ``cert``, ``cert`` names no client (no common name), or ``cert`` or ``ca``
            has expired by this machine's clock.
    """
    if (cert is None) != (key is None):
        raise ValueError(
            "a client certificate and its private key go together: give both "
            "(--cert and --key) or neither"
        )
    tls = ClientTLS(
        ca=read_pem(ca, "the CA certificate"),
        cert=read_pem(cert, "the client certificate") if cert is not None else None,
        key=read_pem(key, "the client private key") if key is not None else None,
        server_name=server_name,
    )
    check_ca(tls.ca, str(ca))
    check_dates(
        tls.ca,
        str(ca),
        "no server certificate it signed can be trusted any more: get the federation's "
        "current CA certificate (a federation whose CA expired needs a new one, `covey certs "
        "init`)",
    )
    if tls.cert is not None and tls.key is not None:
        check_pair(tls.cert, tls.key, str(cert), str(key))
        warn_if_open(str(key), "the client's private key")
        check_dates(
            tls.cert,
            str(cert),
            "the server would refuse it: have the federation issue a new one "
            "(`covey certs issue NAME --overwrite`)",
        )
        fix = "give the certificate the federation issued to this client (`covey certs issue NAME`)"
        check_purpose(tls.cert, str(cert), "client", fix)
        check_common_name(tls.cert, str(cert), fix)
    return tls


def tls_from_certs(
    directory: str | Path, client_id: str, *, server_name: str | None = None
) -> ClientTLS:
    """A client's TLS material from a federation folder (``covey certs issue CLIENT_ID``).

    ``server_name`` is the host the server's certificate is checked against when the
    address dialled is not one it names (an IP, a load balancer's name).
    """
    d = Path(directory)
    cert, key = d / "clients" / f"{client_id}.pem", d / "clients" / f"{client_id}.key"
    if not (d / "ca.pem").exists():  # a folder in its place: reading it says so
        raise FileNotFoundError(
            f"{d / 'ca.pem'} not found: give the federation folder made by "
            "`covey certs init` (it holds ca.pem and clients/NAME.pem)"
        )
    for path in (cert, key):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; issue the client's certificate with "
                f"`covey certs issue {client_id} --dir {d}`"
            )
    return client_tls(d / "ca.pem", cert, key, server_name=server_name)
