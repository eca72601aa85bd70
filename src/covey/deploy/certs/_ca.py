"""Creating a federation: its certificate authority, server certificate and revocation list."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from covey.core._files import atomic_write, fsync_dir
from covey.deploy._pem import read_pem
from covey.deploy.certs._common import (
    BACKDATE,
    CA_CERT,
    CA_KEY,
    CERT_MODE,
    CLIENTS_DIRNAME,
    DIR_MODE,
    KEY_MODE,
    REVOKED,
    SERVER_CERT,
    SERVER_KEY,
    KeyType,
    PrivateKey,
    cert_to_pem,
    check_days,
    existing_federation,
    generate_key,
    generate_like,
    key_to_pem,
    key_usage,
    load_ca,
    locked,
    sign,
    utc_now,
)
from covey.deploy.certs._issue import parse_hosts, server_certificate
from covey.deploy.certs._revocation import write_revoked

__all__ = ["FederationPaths", "init_federation", "renew_server"]

_RSA_BITS = (2048, 3072, 4096)


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
    _check_options(name, days, server_days, key_type, rsa_bits)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a directory")
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with locked(root):
        if (root / CA_KEY).exists() and not overwrite:
            raise FileExistsError(
                f"{root / CA_KEY} already exists: {root} already holds a federation CA. "
                "Pass overwrite=True (--overwrite) to replace it; every client "
                "certificate issued by the old CA will stop working."
            )
        clients = root / CLIENTS_DIRNAME
        clients.mkdir(mode=DIR_MODE, exist_ok=True)

        now = utc_now()
        ca_key = generate_key(key_type, rsa_bits)
        ca_cert = _ca_certificate(ca_key, name, days, now)
        server_key = generate_key(key_type, rsa_bits)
        server_cert = server_certificate(server_key, host_list, ca_cert, ca_key, server_days, now)

        paths = FederationPaths(
            directory=root,
            ca_cert=root / CA_CERT,
            ca_key=root / CA_KEY,
            server_cert=root / SERVER_CERT,
            server_key=root / SERVER_KEY,
            revoked=root / REVOKED,
            clients_dir=clients,
        )
        # Every file is written in a staging folder first, so a full disk or a
        # size limit part-way leaves the folder as it was, not half a federation.
        stage = Path(tempfile.mkdtemp(dir=root, prefix=".init-"))  # mode 0700
        try:
            try:
                atomic_write(stage / CA_KEY, key_to_pem(ca_key), mode=KEY_MODE)
                atomic_write(stage / SERVER_KEY, key_to_pem(server_key), mode=KEY_MODE)
                atomic_write(stage / SERVER_CERT, cert_to_pem(server_cert), mode=CERT_MODE)
                write_revoked(stage, [])
                atomic_write(stage / CA_CERT, cert_to_pem(ca_cert), mode=CERT_MODE)
            except OSError as exc:
                said = f"{exc.strerror or exc}; nothing was written"
                raise OSError(exc.errno, said, str(root)) from None
            # Keys first: a crash part-way leaves no certificate without its key.
            for name in (CA_KEY, SERVER_KEY, SERVER_CERT, REVOKED, CA_CERT):
                os.replace(stage / name, root / name)
            fsync_dir(root)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return paths


def renew_server(
    directory: str | os.PathLike[str],
    *,
    hosts: Iterable[str] | None = None,
    days: int = 825,
) -> Path:
    """Give the server a new key and certificate, signed by the federation's existing CA.

    The server certificate expires long before the CA (825 days against 3650
    by default), and a server moves to new host names: this replaces
    ``server.pem`` and ``server.key`` and leaves the CA, the client
    certificates and the revocation list as they are, so no client needs
    anything new.  A running server reads its certificate when it starts:
    restart it (``covey server --resume RUN_DIR ...`` continues its run).

    Args:
        directory: The federation directory (made by :func:`init_federation`);
            it must hold ``ca.key``.
        hosts: DNS names and IP addresses for the new certificate; default:
            those of the current ``server.pem``.
        days: Validity in days (capped at the CA's).

    Returns:
        The path of the new server certificate.

    Raises:
        FileNotFoundError: The directory, its CA or its CA key is missing.
        ValueError: A bad host or validity, or no hosts given and none readable
            from the current ``server.pem``.
    """
    check_days(days, "days")
    root = existing_federation(directory)
    with locked(root):
        ca_cert, ca_key = load_ca(root)
        host_list = parse_hosts(_current_hosts(root) if hosts is None else hosts)
        now = utc_now()
        key = generate_like(ca_key)
        cert = server_certificate(key, host_list, ca_cert, ca_key, days, now)
        stage = Path(tempfile.mkdtemp(dir=root, prefix=".renew-"))  # mode 0700
        try:
            atomic_write(stage / SERVER_KEY, key_to_pem(key), mode=KEY_MODE)
            atomic_write(stage / SERVER_CERT, cert_to_pem(cert), mode=CERT_MODE)
            # Key first: a crash in between leaves a pair the server refuses, naming it.
            os.replace(stage / SERVER_KEY, root / SERVER_KEY)
            os.replace(stage / SERVER_CERT, root / SERVER_CERT)
            fsync_dir(root)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return root / SERVER_CERT


def _current_hosts(root: Path) -> list[str]:
    """The DNS names and IP addresses of the current server certificate."""
    try:
        cert = x509.load_pem_x509_certificate(
            read_pem(root / SERVER_CERT, "the server certificate")
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        raise ValueError(
            f"cannot read the hosts of {root / SERVER_CERT}: give them (--host)"
        ) from None
    names = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    return names + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _check_options(name: str, days: int, server_days: int, key_type: str, rsa_bits: int) -> None:
    """Reject a bad CA name, validity, key type or RSA size before anything is written."""
    if not name.strip():
        raise ValueError("the CA name must not be empty")
    check_days(days, "days")
    check_days(server_days, "server_days")
    if key_type not in ("ec", "rsa", "ed25519"):
        raise ValueError(f"key_type must be 'ec', 'rsa' or 'ed25519', not {key_type!r}")
    if key_type == "rsa" and rsa_bits not in _RSA_BITS:
        raise ValueError(f"rsa_bits must be one of {_RSA_BITS}, not {rsa_bits!r}")


def _ca_certificate(
    ca_key: PrivateKey, name: str, days: int, now: _dt.datetime
) -> x509.Certificate:
    """The self-signed CA certificate: a CA of path length 0 that signs certificates."""
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return sign(
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ca_ski, critical=False),
        ca_key,
    )
