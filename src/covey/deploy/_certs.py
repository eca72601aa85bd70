"""Certificate tooling for a deployed federation (mutual TLS).

A federation directory holds one private certificate authority (CA), the
server's certificate, one certificate per client and a revocation list::

    DIR/
      ca.pem          CA certificate (public, give it to every party)      0644
      ca.key          CA private key (keep it offline and secret)          0600
      server.pem      server certificate, signed by the CA                  0644
      server.key      server private key                                   0600
      revoked.json    serials of revoked client certificates               0644
      clients/        <client_id>.pem and <client_id>.key per client       0700

Every file is written atomically (temporary file + ``os.replace``) and every
private key is created with mode 0600 from the start, so it is never readable
by others, not even for an instant.  Everything is done with the
``cryptography`` library; no ``openssl`` process is run.

The gRPC server authenticates clients with the TLS handshake
(``require_client_auth=True``, ``root_certificates=ca.pem``) and then reads the
peer certificate from ``context.auth_context()["x509_pem_cert"]``:
:func:`identity_from_cert` gives the client id, :func:`is_revoked` tells
whether it has been revoked and :func:`verify_chain` re-checks the chain.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import json
import os
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from covey.core._files import atomic_write

__all__ = [
    "CLIENTS_DIRNAME",
    "ClientPaths",
    "FederationPaths",
    "IssuedClient",
    "KeyType",
    "identity_from_cert",
    "init_federation",
    "is_revoked",
    "issue_client",
    "list_clients",
    "load_revoked",
    "parse_hosts",
    "revoke",
    "validate_client_id",
    "verify_chain",
]

KeyType: TypeAlias = Literal["ec", "rsa", "ed25519"]
"""Kinds of key :func:`init_federation` can make.

gRPC (BoringSSL) supports ``"ec"`` (P-256, the default) and ``"rsa"`` for TLS;
``"ed25519"`` certificates are valid X.509 but gRPC cannot use them.
"""

_PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
REVOKED = "revoked.json"
CLIENTS_DIRNAME = "clients"
SERVER_COMMON_NAME = "covey-server"

_LOCK = ".covey-certs.lock"
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700
_RSA_BITS = (2048, 3072, 4096)
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DNS_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
# Certificates start a few minutes in the past so that a peer whose clock is
# slightly behind does not reject a freshly issued certificate.
_BACKDATE = _dt.timedelta(minutes=5)
_IPAddress = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True)
class FederationPaths:
    """The files :func:`init_federation` wrote.

    Attributes:
        directory: The federation directory.
        ca_cert: The CA certificate (PEM), to give to every server and client.
        ca_key: The CA private key (PEM, PKCS#8); keep it offline and secret.
        server_cert: The server certificate (PEM), signed by the CA.
        server_key: The server private key (PEM, PKCS#8).
        revoked: The revocation list (JSON).
        clients_dir: The folder client certificates are issued into.
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    revoked: Path
    clients_dir: Path


@dataclass(frozen=True)
class ClientPaths:
    """The files of one client, as :func:`issue_client` wrote them.

    Attributes:
        cert: The client certificate (PEM), common name = client id.
        key: The client private key (PEM, PKCS#8).
        ca: The federation CA certificate the client uses to check the server.
    """

    cert: Path
    key: Path
    ca: Path


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


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def init_federation(
    directory: str | os.PathLike[str],
    *,
    hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    name: str = "covey federation",
    days: int = 3650,
    server_days: int = 825,
    key_type: KeyType = "ec",
    rsa_bits: int = 3072,
    overwrite: bool = False,
) -> FederationPaths:
    """Create a federation directory: a CA, a server certificate, an empty revocation list.

    The directory (and its parents) is created if needed; a new directory gets
    mode 0700 because it holds private keys.  With ``overwrite=True`` an
    existing federation is replaced: the CA and server certificate are new, the
    revocation list is emptied, and client certificates issued by the old CA no
    longer verify (``list_clients`` reports them as ``"foreign CA"``).

    Args:
        directory: The federation directory.
        hosts: DNS names and IP addresses the server is reached at; they go in
            the server certificate's SubjectAlternativeName, and a client must
            connect with one of them.  A single string is one host.
        name: Common name of the CA.
        days: Validity of the CA certificate, in days.
        server_days: Validity of the server certificate, in days (capped at
            the CA's).
        key_type: ``"ec"`` (ECDSA P-256, default), ``"rsa"`` or ``"ed25519"``.
            Client keys are later made of the same kind as the CA key.  gRPC
            supports only ``"ec"`` and ``"rsa"``.
        rsa_bits: RSA key size (2048, 3072 or 4096) when ``key_type="rsa"``.
        overwrite: Replace an existing federation (one with a ``ca.key``).

    Returns:
        The paths of the files written.

    Raises:
        FileExistsError: ``ca.key`` already exists and ``overwrite`` is false.
        ValueError: A bad host, name, validity, key type or RSA size.
    """
    root = Path(directory)
    host_list = parse_hosts(hosts)
    if not name.strip():
        raise ValueError("the CA name must not be empty")
    _check_days(days, "days")
    _check_days(server_days, "server_days")
    if key_type not in ("ec", "rsa", "ed25519"):
        raise ValueError(f"key_type must be 'ec', 'rsa' or 'ed25519', not {key_type!r}")
    if key_type == "rsa" and rsa_bits not in _RSA_BITS:
        raise ValueError(f"rsa_bits must be one of {_RSA_BITS}, not {rsa_bits!r}")

    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a directory")
    root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    with _locked(root):
        if (root / CA_KEY).exists() and not overwrite:
            raise FileExistsError(
                f"{root / CA_KEY} already exists: {root} already holds a federation CA. "
                "Pass overwrite=True (--overwrite) to replace it; every client "
                "certificate issued by the old CA will stop working."
            )
        clients = root / CLIENTS_DIRNAME
        clients.mkdir(mode=_DIR_MODE, exist_ok=True)

        now = _now()
        ca_key = _generate_key(key_type, rsa_bits)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = _sign(
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(key_cert_sign=True, crl_sign=True),
                critical=True,
            )
            .add_extension(ca_ski, critical=False),
            ca_key,
        )

        server_key = _generate_key(key_type, rsa_bits)
        san = x509.SubjectAlternativeName(
            [
                x509.IPAddress(host) if isinstance(host, _IPAddress) else x509.DNSName(host)
                for host in host_list
            ]
        )
        server_cert = _sign(
            _leaf_builder(SERVER_COMMON_NAME, server_key, ca_cert, server_days, now)
            .add_extension(_leaf_key_usage(server_key), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(san, critical=False),
            ca_key,
        )

        paths = FederationPaths(
            directory=root,
            ca_cert=root / CA_CERT,
            ca_key=root / CA_KEY,
            server_cert=root / SERVER_CERT,
            server_key=root / SERVER_KEY,
            revoked=root / REVOKED,
            clients_dir=clients,
        )
        # Keys first: a crash part-way leaves no certificate without its key.
        atomic_write(paths.ca_key, _key_pem(ca_key), mode=_KEY_MODE)
        atomic_write(paths.server_key, _key_pem(server_key), mode=_KEY_MODE)
        atomic_write(paths.server_cert, _cert_pem(server_cert), mode=_CERT_MODE)
        _write_revoked(root, [])
        atomic_write(paths.ca_cert, _cert_pem(ca_cert), mode=_CERT_MODE)
    return paths


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
    _check_days(days, "days")
    root = _existing_federation(directory)
    with _locked(root):
        ca_cert, ca_key = _load_ca(root)
        clients = root / CLIENTS_DIRNAME
        clients.mkdir(mode=_DIR_MODE, exist_ok=True)
        paths = ClientPaths(
            cert=clients / f"{client_id}.pem",
            key=clients / f"{client_id}.key",
            ca=root / CA_CERT,
        )
        old_serial: int | None = None
        if paths.cert.exists():
            try:
                old = x509.load_pem_x509_certificate(paths.cert.read_bytes())
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
                        f"serial {old.serial_number:x}) that is not revoked. Revoke it "
                        "first, or pass overwrite=True (--overwrite) to replace and revoke it."
                    )
                old_serial = old.serial_number

        key = _generate_like(ca_key)
        cert = _sign(
            _leaf_builder(client_id, key, ca_cert, days, _now())
            .add_extension(_leaf_key_usage(key), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            ),
            ca_key,
        )
        if old_serial is not None:
            _add_revoked(root, old_serial, client_id)
        atomic_write(paths.key, _key_pem(key), mode=_KEY_MODE)
        atomic_write(paths.cert, _cert_pem(cert), mode=_CERT_MODE)
    return paths


def revoke(directory: str | os.PathLike[str], client_id_or_serial: str | int) -> int:
    """Revoke a client certificate: add its serial (and common name) to ``revoked.json``.

    Revoking twice is harmless.  The certificate files are left in place (so
    ``list_clients`` can still show them); the id can be issued again.

    Args:
        directory: The federation directory.
        client_id_or_serial: A client id (a ``str``; its current certificate
            in ``clients/`` is revoked) or a certificate serial number (an
            ``int``, for a certificate whose file is gone).

    Returns:
        The revoked serial number.

    Raises:
        FileNotFoundError: The directory, its CA, or the client's certificate
            is missing.
        ValueError: A bad client id, or a serial that is not positive.
        TypeError: ``client_id_or_serial`` is neither a ``str`` nor an ``int``.
    """
    root = _existing_federation(directory)
    with _locked(root):
        if isinstance(client_id_or_serial, bool):
            raise TypeError("expected a client id (str) or a serial number (int), not a bool")
        if isinstance(client_id_or_serial, int):
            serial = client_id_or_serial
            if serial <= 0:
                raise ValueError(f"a certificate serial is positive, not {serial}")
            common_name = _common_name_of_serial(root, serial)
        elif isinstance(client_id_or_serial, str):
            client_id = client_id_or_serial
            validate_client_id(client_id)
            cert_path = root / CLIENTS_DIRNAME / f"{client_id}.pem"
            if not cert_path.is_file():
                raise FileNotFoundError(
                    f"no certificate for client {client_id!r} in {root / CLIENTS_DIRNAME}"
                )
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            serial = cert.serial_number
            common_name = _common_name(cert)
        else:
            raise TypeError(
                f"expected a client id (str) or a serial number (int), not {client_id_or_serial!r}"
            )
        _add_revoked(root, serial, common_name)
    return serial


def load_revoked(directory: str | os.PathLike[str]) -> frozenset[int]:
    """Read the serial numbers in a federation's ``revoked.json``.

    A missing or malformed file is an error rather than "nothing revoked", so
    that a damaged directory never silently lets revoked clients back in.

    Args:
        directory: The federation directory.

    Returns:
        The revoked serial numbers.

    Raises:
        FileNotFoundError: ``revoked.json`` is missing.
        ValueError: ``revoked.json`` is malformed.
    """
    return frozenset(int(entry["serial"], 16) for entry in _read_revoked(Path(directory)))


def is_revoked(
    cert_pem: bytes,
    directory_or_revoked: str | os.PathLike[str] | Collection[int],
) -> bool:
    """Tell whether a certificate has been revoked.

    Args:
        cert_pem: The certificate, PEM or DER (e.g. gRPC's
            ``context.auth_context()["x509_pem_cert"][0]``).
        directory_or_revoked: A federation directory (its ``revoked.json`` is
            read on every call, so revocations apply at once) or a collection
            of revoked serials as :func:`load_revoked` returns.

    Returns:
        Whether the certificate's serial number is revoked.

    Raises:
        ValueError: The certificate cannot be parsed.
    """
    if isinstance(directory_or_revoked, (str, os.PathLike)):
        revoked: Collection[int] = load_revoked(directory_or_revoked)
    else:
        revoked = directory_or_revoked
    return _load_cert(cert_pem).serial_number in revoked


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
    cn = _common_name(_load_cert(pem_or_der))
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
    ca = _load_cert(ca_pem)
    try:
        cert = _load_cert(cert_pem)
    except ValueError:
        return False
    when = _now() if at is None else at
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
    root = _existing_federation(directory)
    ca_pem = (root / CA_CERT).read_bytes()
    revoked = load_revoked(root)
    now = _now()
    found: list[IssuedClient] = []
    clients = root / CLIENTS_DIRNAME
    paths = sorted(clients.glob("*.pem")) if clients.is_dir() else []
    for path in paths:
        client_id = path.name[: -len(".pem")]
        try:
            data = path.read_bytes()
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
                common_name=_common_name(cert),
                serial=serial,
                not_after=cert.not_valid_after_utc,
                revoked=is_rev,
                status=status,
                path=path,
            )
        )
    return found


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


def validate_client_id(client_id: str) -> str:
    """Check a client id: 1 to 64 characters of ``[A-Za-z0-9._-]``, not only dots.

    Args:
        client_id: The id to check.

    Returns:
        The id, unchanged.

    Raises:
        ValueError: The id is not valid.
    """
    if (
        not isinstance(client_id, str)
        or _CLIENT_ID.fullmatch(client_id) is None
        or set(client_id) == {"."}
    ):
        raise ValueError(
            f"invalid client id {client_id!r}: use 1 to 64 characters among "
            "letters, digits, '.', '_' and '-' (and not only dots)"
        )
    return client_id


# --------------------------------------------------------------------------- #
# Certificates and keys
# --------------------------------------------------------------------------- #


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def _check_days(days: int, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"{what} must be a positive number of days, not {days!r}")


def _generate_key(key_type: str, rsa_bits: int) -> _PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ed25519.Ed25519PrivateKey.generate()


def _generate_like(key: _PrivateKey) -> _PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=key.key_size)
    return ed25519.Ed25519PrivateKey.generate()


def _sign(builder: x509.CertificateBuilder, key: _PrivateKey) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(private_key=key, algorithm=algorithm)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage(key: _PrivateKey) -> x509.KeyUsage:
    # RSA key exchange needs keyEncipherment; (EC)DHE suites only sign.
    return _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey))


def _leaf_builder(
    common_name: str,
    key: _PrivateKey,
    ca_cert: x509.Certificate,
    days: int,
    now: _dt.datetime,
) -> x509.CertificateBuilder:
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_cert(data: bytes) -> x509.Certificate:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _common_name(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _existing_federation(directory: str | os.PathLike[str]) -> Path:
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"federation directory {root} does not exist")
    if not (root / CA_CERT).is_file():
        raise FileNotFoundError(
            f"{root} holds no federation CA ({CA_CERT} is missing); "
            "create one with init_federation (covey certs init)"
        )
    return root


def _load_ca(root: Path) -> tuple[x509.Certificate, _PrivateKey]:
    key_path = root / CA_KEY
    if not key_path.is_file():
        raise FileNotFoundError(
            f"the CA private key {key_path} is missing: certificates can only be "
            "issued where ca.key is (it may have been moved offline)"
        )
    cert = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(
        key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise ValueError(f"unsupported CA key type in {key_path}: {type(key).__name__}")
    if cert.public_key() != key.public_key():
        raise ValueError(f"{key_path} is not the private key of {root / CA_CERT}")
    return cert, key


# --------------------------------------------------------------------------- #
# Revocation list
# --------------------------------------------------------------------------- #


def _read_revoked(root: Path) -> list[dict[str, Any]]:
    path = root / REVOKED
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"revocation list {path} is missing") from None
    try:
        entries = json.loads(text)
        if not isinstance(entries, list):
            raise TypeError("not a list")
        cleaned: list[dict[str, Any]] = []
        for entry in entries:
            serial = entry["serial"]
            number = serial if isinstance(serial, int) else int(str(serial), 16)
            if isinstance(number, bool) or number <= 0:
                raise ValueError("bad serial")
            cleaned.append({**entry, "serial": f"0x{number:x}"})
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"malformed revocation list {path}: {error}") from None
    return cleaned


def _write_revoked(root: Path, entries: list[dict[str, Any]]) -> None:
    data = (json.dumps(entries, indent=2) + "\n").encode("utf-8")
    atomic_write(root / REVOKED, data, mode=_CERT_MODE)


def _add_revoked(root: Path, serial: int, common_name: str | None) -> None:
    entries = _read_revoked(root)
    if any(int(entry["serial"], 16) == serial for entry in entries):
        return
    entries.append(
        {
            "serial": f"0x{serial:x}",
            "common_name": common_name,
            "revoked_at": _now().isoformat(),
        }
    )
    _write_revoked(root, entries)


def _common_name_of_serial(root: Path, serial: int) -> str | None:
    clients = root / CLIENTS_DIRNAME
    for path in sorted(clients.glob("*.pem")) if clients.is_dir() else []:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        if cert.serial_number == serial:
            return _common_name(cert)
    return None


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise changes to one federation directory between processes (POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic writes only
        yield
        return
    fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT, _KEY_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
