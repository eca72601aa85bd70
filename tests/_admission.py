"""Stand-ins for what the server's admission check is given: call contexts, events, certificates."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from covey.deploy.certs._common import PrivateKey, cert_to_pem, key_to_pem, load_ca


def client_cert(
    fed: Path,
    file: str,
    key: PrivateKey,
    subject: x509.Name,
    algorithm: hashes.HashAlgorithm | None = None,
) -> Path:
    """Write ``fed/file.pem`` and ``.key``: a client certificate the federation CA signed.

    Signed with ``algorithm`` (SHA-256 by default), valid for a day, its key readable
    by its owner alone.
    """
    ca_cert, ca_key = load_ca(fed)
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, algorithm or hashes.SHA256())  # type: ignore[arg-type]
    )
    (fed / f"{file}.pem").write_bytes(cert_to_pem(cert))
    (fed / f"{file}.key").write_bytes(key_to_pem(key))
    os.chmod(fed / f"{file}.key", 0o600)
    return fed / f"{file}.pem"


class Aborted(Exception):
    """What :meth:`Context.abort` raises, as gRPC's own abort ends the handler."""


class Context:
    """A gRPC call's context whose peer presented a certificate with ``auth``."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self.auth = auth
        self.aborted: tuple[Any, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def abort(self, code: Any, why: str) -> None:
        self.aborted = (code, why)
        raise Aborted(why)


class Events:
    """The fleet events recorded, as ``(name, event, detail)`` tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def event(self, *args: str) -> None:
        self.events.append(args)
