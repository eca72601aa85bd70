"""Issuing leaf certificates: the server's (at federation creation) and each client's."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from covey.core._files import atomic_write
from covey.deploy._pem import read_pem
from covey.deploy.certs._common import (
    BACKDATE,
    CA_CERT,
    CERT_MODE,
    CLIENTS_DIRNAME,
    DIR_MODE,
    KEY_MODE,
    SERVER_COMMON_NAME,
    PrivateKey,
    cert_to_pem,
    check_days,
    existing_federation,
    generate_like,
    key_to_pem,
    key_usage,
    load_ca,
    locked,
    sign,
    utc_now,
    validate_client_id,
)
from covey.deploy.certs._revocation import add_revoked, load_revoked, serial_hex

__all__ = ["ClientPaths", "issue_client", "parse_hosts", "server_certificate"]

_DNS_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
_IPAddress = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True)
class ClientPaths:
    """The files of one client, as :func:`issue_client` wrote them.

    Attributes:
        cert: The client certificate (PEM), common name = client id.
        key: The client private key (PEM, PKCS#8).
        ca: The federation CA certificate the client uses to check the server.
        revoked: The serial of the certificate this one replaced and revoked
            (``overwrite=True``), else None.
    """

    cert: Path
    key: Path
    ca: Path
    revoked: int | None = None


def issue_client(
    directory: str | os.PathLike[str],
    client_id: str,
    *,
    days: int = 825,
    overwrite: bool = False,
) -> ClientPaths:
    """Issue a client certificate signed by the federation CA.

    The certificate's common name is ``client_id`` and its extended key usage
    is CLIENT_AUTH; the key is of the same kind as the CA key.  The files are
    ``DIR/clients/<client_id>.pem`` and ``.key``.  A revoked client id can be
    issued again without ``overwrite``; with ``overwrite=True`` a still valid
    certificate is replaced *and its serial is revoked*, so the old key stops
    working.

    Args:
        directory: The federation directory (made by :func:`init_federation`).
        client_id: 1 to 64 characters of ``[A-Za-z0-9._-]``.
        days: Validity in days (capped at the CA's).
        overwrite: Replace (and revoke) an existing, non-revoked certificate.

    Returns:
        The paths of the client certificate, its key and the CA certificate.

    Raises:
        ValueError: A bad client id or validity.
        FileNotFoundError: The directory or its CA is missing.
        FileExistsError: The client already has a non-revoked certificate and
            ``overwrite`` is false.
    """
    validate_client_id(client_id)
    check_days(days, "days")
    root = existing_federation(directory)
    with locked(root):
        ca_cert, ca_key = load_ca(root)
        clients = root / CLIENTS_DIRNAME
        clients.mkdir(mode=DIR_MODE, exist_ok=True)
        paths = ClientPaths(
            cert=clients / f"{client_id}.pem",
            key=clients / f"{client_id}.key",
            ca=root / CA_CERT,
        )
        old_serial: int | None = None
        if paths.cert.exists():
            try:
                old = x509.load_pem_x509_certificate(read_pem(paths.cert, "the client certificate"))
            except ValueError:
                if not overwrite:
                    raise FileExistsError(
                        f"{paths.cert} exists but is not a readable certificate; "
                        "pass overwrite=True (--overwrite) to replace it."
                    ) from None
                old = None
            if old is not None and old.serial_number not in load_revoked(root):
                if not overwrite:
                    raise FileExistsError(
                        f"client {client_id!r} already has a certificate ({paths.cert}, "
                        f"serial {serial_hex(old.serial_number)}) that is not revoked. Revoke it "
                        "first, or pass overwrite=True (--overwrite) to replace and revoke it."
                    )
                old_serial = old.serial_number

        key = generate_like(ca_key)
        cert = sign(
            leaf_builder(client_id, key, ca_cert, days, utc_now())
            .add_extension(leaf_key_usage(key), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            ),
            ca_key,
        )
        if old_serial is not None:
            add_revoked(root, old_serial, client_id)
        atomic_write(paths.key, key_to_pem(key), mode=KEY_MODE)
        atomic_write(paths.cert, cert_to_pem(cert), mode=CERT_MODE)
    return paths if old_serial is None else dataclasses.replace(paths, revoked=old_serial)


def server_certificate(
    server_key: PrivateKey,
    hosts: list[str | ipaddress.IPv4Address | ipaddress.IPv6Address],
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    days: int,
    now: _dt.datetime,
) -> x509.Certificate:
    """Issue the server certificate for the hosts it is reached at (as :func:`parse_hosts` gives).

    Args:
        server_key: The server's private key.
        hosts: The server's DNS names and IP addresses, for its SubjectAlternativeName.
        ca_cert: The federation CA certificate.
        ca_key: The CA private key that signs.
        days: Validity in days (capped at the CA's).
        now: The issuing time.

    Returns:
        The signed server certificate (common name ``covey-server``, SERVER_AUTH).
    """
    san = x509.SubjectAlternativeName(
        [
            x509.IPAddress(host) if isinstance(host, _IPAddress) else x509.DNSName(host)
            for host in hosts
        ]
    )
    return sign(
        leaf_builder(SERVER_COMMON_NAME, server_key, ca_cert, days, now)
        .add_extension(leaf_key_usage(server_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False),
        ca_key,
    )


def parse_hosts(
    hosts: Iterable[str],
) -> list[str | ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Parse server host names for a certificate's SubjectAlternativeName.

    Args:
        hosts: DNS names (a leading ``*.`` wildcard is allowed) and IP addresses
            (IPv6 optionally in brackets).  A single string is one host.

    Returns:
        The distinct hosts in order: IP addresses as ``ipaddress`` objects,
        DNS names as lower-case strings.

    Raises:
        ValueError: A host is neither a DNS name nor an IP address, or none is given.
    """
    items = [hosts] if isinstance(hosts, str) else list(hosts)
    parsed: list[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in items:
        host = str(raw).strip()
        # "[::1]" is how an IPv6 address appears in a gRPC target.
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        entry: str | ipaddress.IPv4Address | ipaddress.IPv6Address
        try:
            entry = ipaddress.ip_address(bare)
        except ValueError:
            if not host.isascii() or len(host) > 253 or _DNS_NAME.fullmatch(host) is None:
                raise ValueError(
                    f"invalid host {raw!r}: expected a DNS name or an IP address"
                ) from None
            entry = host.rstrip(".").lower()
        if entry not in parsed:
            parsed.append(entry)
    if not parsed:
        raise ValueError("at least one host (DNS name or IP address) is needed")
    return parsed


def leaf_key_usage(key: PrivateKey) -> x509.KeyUsage:
    """The KeyUsage of a server or client certificate for ``key``."""
    # RSA key exchange needs keyEncipherment; (EC)DHE suites only sign.
    return key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey))


def leaf_builder(
    common_name: str,
    key: PrivateKey,
    ca_cert: x509.Certificate,
    days: int,
    now: _dt.datetime,
) -> x509.CertificateBuilder:
    """A builder for a leaf (non-CA) certificate issued by ``ca_cert``."""
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
