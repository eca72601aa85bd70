"""The server's TLS material: loaded from a federation folder, or checked as given."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from covey.deploy._keymode import warn_if_open
from covey.deploy._pem import (
    check_ca,
    check_dates,
    check_issued,
    check_pair,
    check_purpose,
    read_pem,
    server_folder,
)
from covey.deploy._revoked import RevocationList
from covey.transport.grpc._server import ServerTLS

__all__ = ["server_tls", "tls_from_dir", "warn_serving_without_tls"]

logger = logging.getLogger("covey")


def tls_from_dir(directory: str | Path) -> ServerTLS:
    """Load the server's TLS material from a federation folder made by ``covey certs init``.

    The files are checked before the server listens: the CA and the server's
    certificate must be PEM, the key must be the certificate's, and the
    revocation list must be readable. A key file other users can read is
    warned of (``chmod 600`` fixes it).

    Args:
        directory: The federation folder, holding ``ca.pem``, ``server.pem`` and
            ``server.key`` (and ``revoked.json``, the revoked client certificates, if any).

    Raises:
        FileNotFoundError: A file of the federation is missing.
        ValueError: A file is damaged, ``server.key`` is not the key of ``server.pem``,
            ``server.pem`` was not issued by ``ca.pem``, or the CA or server
            certificate has expired.
    """
    from covey.deploy.certs import load_revoked

    d = server_folder(directory)
    tls = ServerTLS(
        ca=read_pem(d / "ca.pem", "the CA certificate"),
        cert=read_pem(d / "server.pem", "the server certificate"),
        key=read_pem(d / "server.key", "the server private key"),
        is_revoked=RevocationList(d),
    )
    check_ca(tls.ca, str(d / "ca.pem"))
    check_pair(tls.cert, tls.key, str(d / "server.pem"), str(d / "server.key"))
    check_dates(tls.ca, str(d / "ca.pem"), "the federation needs a new CA (`covey certs init`)")
    check_dates(
        tls.cert,
        str(d / "server.pem"),
        "no client would accept it; renew it "
        f"with `covey certs renew-server --dir {shlex.quote(str(d))}` (where ca.key is)",
    )
    check_purpose(
        tls.cert,
        str(d / "server.pem"),
        "server",
        f"renew it with `covey certs renew-server --dir {shlex.quote(str(d))}` (where ca.key is)",
    )
    check_issued(
        tls.cert,
        tls.ca,
        str(d / "server.pem"),
        str(d / "ca.pem"),
        "give the server the server.pem and server.key of this federation, or a new pair "
        f"with `covey certs renew-server --dir {shlex.quote(str(d))}` (where ca.key is)",
    )
    load_revoked(d)  # a damaged list refuses the start, not every client that joins
    warn_if_open(d / "server.key", "the server's private key")
    return tls


def server_tls(
    tls: ServerTLS | None, certs: str | Path | None, insecure: bool, address: str
) -> ServerTLS | None:
    """The TLS material ``serve`` was given, checked for consistency."""
    if certs is not None:
        if tls is not None:
            raise ValueError("give tls= or certs=, not both")
        tls = tls_from_dir(certs)
    if tls is None and not insecure:
        raise ValueError(
            "serve() needs TLS (certs=DIR from `covey certs init`, or tls=ServerTLS(...)) "
            "or insecure=True for a local experiment"
        )
    if tls is not None and insecure:
        raise ValueError("give TLS material or insecure=True, not both")
    if insecure:
        warn_serving_without_tls(address)
    return tls


def warn_serving_without_tls(address: str, what: str = "the model") -> None:
    """Warn that a server listens at ``address`` without TLS (a port 0 is logged once chosen).

    ``what`` names what a stranger who joins sees (a query server sends queries, not a model).
    """
    said = "serving WITHOUT TLS: anyone who can reach %s can join and see %s"
    logger.warning(said, address.removesuffix(":0"), what)
