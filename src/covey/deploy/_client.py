"""``covey.connect``: run a client next to its data and join a federation over gRPC."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from covey.deploy._keymode import warn_if_open
from covey.deploy._pem import (
    check_ca,
    check_common_name,
    check_dates,
    check_issued,
    check_pair,
    check_purpose,
    read_pem,
)
from covey.transport.grpc._client import ClientTLS, connect

__all__ = ["client_tls", "connect", "file_name_problem", "tls_from_certs", "warn_without_tls"]

logger = logging.getLogger("covey")


def warn_without_tls(address: str, what: str = "the model") -> None:
    """Warn that a client connects to ``address`` without TLS, as a server serving without it does.

    ``what`` names what travels in the clear (an analytics site sends answers, not a model).
    Logged (to standard error under ``covey client``), never printed on standard output.
    """
    said = "connecting WITHOUT TLS: anyone on the way to %s can see %s and pose as the server"
    logger.warning(said, address, what)


def client_tls(
    ca: str | Path,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    *,
    server_name: str | None = None,
) -> ClientTLS:
    """Load a client's TLS material from PEM files, checked before any connection.

    A ``key`` file other users can read is warned of (``chmod 600`` fixes it).

    Args:
        ca: The federation's CA certificate (PEM), which the server's must be signed by.
        cert: The client's certificate (PEM), for a server that requires one (mutual
            TLS); None connects without a client certificate.
        key: The private key of ``cert`` (PEM); given exactly when ``cert`` is.
        server_name: The host name the server's certificate is checked against when
            the address dialled is not one it names (an IP, a load balancer's
            name); None checks the address's host.

    Raises:
        OSError: A file cannot be read (the error names it and what it holds).
        ValueError: ``cert`` is given without ``key`` or the other way round, a file
            is not PEM of the right kind or is over 4 MiB, ``key`` is not the key of
            ``cert``, ``cert`` names no client (no common name), ``cert`` was not
            issued by a CA of ``ca`` (nor by an intermediate in its own file), or
            ``cert`` or ``ca`` has expired by this machine's clock.
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
        check_issued(
            tls.cert,
            tls.ca,
            str(cert),
            str(ca),
            "give the client the certificate its federation issued to it, or that "
            "federation's ca.pem (while a federation moves to a new CA, one holding both)",
        )
    return tls


def file_name_problem(client_id: object) -> str | None:
    """Why ``client_id`` cannot name the files ``clients/CLIENT_ID.pem`` and ``.key``, or None.

    A name holding a path separator (``../x``, ``/etc/x``) would reach outside the
    folder's ``clients/``; an empty one, ``.`` or ``..`` names no file of its own.
    """
    if not isinstance(client_id, str):
        return f"a client id is text, not {type(client_id).__name__}"
    fix = "give the name its certificate was issued to (`covey certs list` shows them)"
    if client_id in ("", ".", ".."):
        return f"it names no certificate of its own in the federation folder's clients/; {fix}"
    bad = next((c for c in ("/", "\\") if c in client_id), None)
    if bad is not None:
        return (
            f"it holds the path separator {bad!r}: a name is no path, and this one could "
            f"name a file outside the federation folder's clients/; {fix}"
        )
    return None


def _issue_command(client_id: str, directory: Path) -> str:
    """``covey certs issue CLIENT_ID --dir DIR``, quoted for a shell (``--`` before a ``-name``)."""
    name = shlex.quote(client_id)
    if client_id.startswith("-"):  # read as an option otherwise
        return f"covey certs issue --dir {shlex.quote(str(directory))} -- {name}"
    return f"covey certs issue {name} --dir {shlex.quote(str(directory))}"


def tls_from_certs(
    directory: str | Path, client_id: str, *, server_name: str | None = None
) -> ClientTLS:
    """A client's TLS material from a federation folder (``covey certs issue CLIENT_ID``).

    ``server_name`` is the host the server's certificate is checked against when the
    address dialled is not one it names (an IP, a load balancer's name).

    Args:
        directory: The federation folder (``covey certs init``), holding ``ca.pem``
            and ``clients/CLIENT_ID.pem`` and ``.key``.
        client_id: The name the client's certificate was issued to.
        server_name: The host the server's certificate is checked against (None: the
            address's host).

    Raises:
        ValueError: ``client_id`` is no file name: empty, ``.`` or ``..``, or holding a
            path separator (it names ``clients/CLIENT_ID.pem`` inside ``directory``).
        OSError: A file is missing or cannot be read (a folder in its place).
    """
    d = Path(directory)
    why = file_name_problem(client_id)
    if why is not None:
        raise ValueError(f"client id {client_id!r}: {why}")
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
                f"`{_issue_command(client_id, d)}`"
            )
    return client_tls(d / "ca.pem", cert, key, server_name=server_name)
