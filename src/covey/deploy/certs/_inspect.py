"""Reading certificates back: identity, chain check, the clients a federation has issued."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from covey.deploy._pem import read_pem
from covey.deploy.certs._common import (
    CA_CERT,
    CLIENTS_DIRNAME,
    existing_federation,
    load_cert,
    subject_common_name,
    utc_now,
)
from covey.deploy.certs._revocation import load_revoked, serial_hex

__all__ = ["IssuedClient", "identity_from_cert", "list_clients", "serial_hex", "verify_chain"]


@dataclass(frozen=True)
class IssuedClient:
    """One client certificate found in a federation directory.

    Attributes:
        client_id: The file's client id (the name without ``.pem``).
        common_name: The certificate's common name, or ``None`` if it has none
            or could not be read.
        serial: The certificate serial number, or ``None`` if unreadable.
        not_after: End of validity (UTC), or ``None`` if unreadable.
        revoked: Whether the serial is in ``revoked.json``.
        status: ``"valid"``, ``"revoked"``, ``"expired"``, ``"not yet valid"``,
            ``"foreign CA"`` (does not chain to this directory's CA) or
            ``"unreadable"``.
        path: The certificate file.
    """

    client_id: str
    common_name: str | None
    serial: int | None
    not_after: _dt.datetime | None
    revoked: bool
    status: str
    path: Path


def identity_from_cert(pem_or_der: bytes) -> str:
    """Get the identity (the subject common name) of a certificate.

    Args:
        pem_or_der: The certificate, PEM or DER encoded.

    Returns:
        The subject common name, i.e. the client id (``"covey-server"`` for the
        server certificate).

    Raises:
        ValueError: The certificate cannot be parsed, or it does not have
            exactly one common name.
    """
    cn = subject_common_name(load_cert(pem_or_der))
    if cn is None:
        raise ValueError("the certificate does not have exactly one subject common name")
    return cn


def verify_chain(
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    at: _dt.datetime | None = None,
) -> bool:
    """Check that a certificate was issued by a CA and is within its validity period.

    Checks that the certificate's issuer is the CA's subject, that its
    signature verifies with the CA public key, that the CA certificate is a CA
    (BasicConstraints ``ca=True``), and that both certificates are valid at
    ``at``.  Revocation is not checked here; see :func:`is_revoked`.

    Args:
        cert_pem: The certificate to check, PEM or DER.
        ca_pem: The CA certificate, PEM or DER.
        at: The time to check validity at (default: now); a naive datetime is
            taken as UTC.

    Returns:
        Whether the certificate chains to the CA and is currently valid.  An
        unparseable certificate gives ``False``.

    Raises:
        ValueError: The CA certificate cannot be parsed.
    """
    ca = load_cert(ca_pem)
    try:
        cert = load_cert(cert_pem)
    except ValueError:
        return False
    when = utc_now() if at is None else at
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return all(c.not_valid_before_utc <= when <= c.not_valid_after_utc for c in (cert, ca))


def list_clients(directory: str | os.PathLike[str]) -> list[IssuedClient]:
    """List the client certificates in a federation's ``clients/`` folder.

    Args:
        directory: The federation directory.

    Returns:
        One entry per ``clients/*.pem`` file, sorted by client id.

    Raises:
        FileNotFoundError: The directory or its CA is missing.
    """
    root = existing_federation(directory)
    ca_pem = read_pem(root / CA_CERT, "the CA certificate")
    revoked = load_revoked(root)
    now = utc_now()
    found: list[IssuedClient] = []
    clients = root / CLIENTS_DIRNAME
    paths = sorted(clients.glob("*.pem")) if clients.is_dir() else []
    for path in paths:
        client_id = path.name[: -len(".pem")]
        try:
            data = read_pem(path, "a client certificate")
            cert = x509.load_pem_x509_certificate(data)
        except (OSError, ValueError):
            found.append(IssuedClient(client_id, None, None, None, False, "unreadable", path))
            continue
        serial = cert.serial_number
        is_rev = serial in revoked
        if is_rev:
            status = "revoked"
        elif not verify_chain(data, ca_pem, at=cert.not_valid_before_utc):
            status = "foreign CA"
        elif now < cert.not_valid_before_utc:
            status = "not yet valid"
        elif now > cert.not_valid_after_utc:
            status = "expired"
        else:
            status = "valid"
        found.append(
            IssuedClient(
                client_id=client_id,
                common_name=subject_common_name(cert),
                serial=serial,
                not_after=cert.not_valid_after_utc,
                revoked=is_rev,
                status=status,
                path=path,
            )
        )
    return found
