"""What the certificate modules share: file names, modes, keys, PEM, the directory lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from covey.deploy._keymode import warn_if_open
from covey.deploy._pem import read_pem

KeyType: TypeAlias = Literal["ec", "rsa", "ed25519"]
"""Kinds of key :func:`~covey.deploy.certs.init_federation` can make.

gRPC (BoringSSL) supports ``"ec"`` (P-256, the default) and ``"rsa"`` for TLS;
``"ed25519"`` certificates are valid X.509 but gRPC cannot use them.
"""

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
REVOKED = "revoked.json"
CLIENTS_DIRNAME = "clients"
SERVER_COMMON_NAME = "covey-server"

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
# Certificates start a few minutes in the past so that a peer whose clock is
# slightly behind does not reject a freshly issued certificate.
BACKDATE = _dt.timedelta(minutes=5)

_LOCK = ".covey-certs.lock"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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


def utc_now() -> _dt.datetime:
    """The current UTC time, to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


# The last moment an X.509 certificate can be valid until (its GeneralizedTime ends at 9999).
_LAST_MOMENT = _dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.UTC)


def check_days(days: int, what: str) -> None:
    """Reject a validity that is not a positive whole number of days, or ends after 9999."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"{what} must be a positive number of days, not {days!r}")
    most = (_LAST_MOMENT - utc_now()).days - 1  # a day to spare for the clock moving on
    if days > most:  # the date overflowed: "OverflowError: date value out of range", exit 1
        raise ValueError(
            f"{what} must be at most {most} days (no certificate is valid past 9999-12-31), "
            f"not {days}"
        )


def generate_key(key_type: str, rsa_bits: int) -> PrivateKey:
    """Make a new private key of the given kind."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ed25519.Ed25519PrivateKey.generate()


def generate_like(key: PrivateKey) -> PrivateKey:
    """Make a new private key of the same kind (and size) as ``key``."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=key.key_size)
    return ed25519.Ed25519PrivateKey.generate()


def sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    """Sign a certificate with ``key`` (SHA-256, or none for Ed25519)."""
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(private_key=key, algorithm=algorithm)


def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage extension with the given bits set and every other bit clear."""
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


def key_to_pem(key: PrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """Encode a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes) -> x509.Certificate:
    """Parse a certificate, PEM or DER."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def subject_common_name(cert: x509.Certificate) -> str | None:
    """The subject common name, or ``None`` unless there is exactly one."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def existing_federation(directory: str | os.PathLike[str]) -> Path:
    """The federation directory, checked to exist and to hold a CA."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"federation directory {root} does not exist")
    if (root / CA_CERT).is_dir():
        raise IsADirectoryError(
            f"{root / CA_CERT} is a folder, not the federation's CA certificate"
        )
    if not (root / CA_CERT).is_file():
        raise FileNotFoundError(
            f"{root} holds no federation CA ({CA_CERT} is missing); "
            "create one with init_federation (covey certs init)"
        )
    return root


def load_ca(root: Path) -> tuple[x509.Certificate, PrivateKey]:
    """Read the CA certificate and its private key, checking that they match.

    A key file other users can read is warned of (``chmod 600`` fixes it).
    """
    key_path = root / CA_KEY
    if key_path.is_dir():
        raise IsADirectoryError(f"{key_path} is a folder, not the CA private key")
    if not key_path.is_file():
        raise FileNotFoundError(
            f"the CA private key {key_path} is missing: certificates can only be "
            "issued where ca.key is (it may have been moved offline)"
        )
    cert_pem = read_pem(root / CA_CERT, "the CA certificate")
    key_pem = read_pem(key_path, "the CA private key")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"{root / CA_CERT} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # what cryptography raises for a key that needs a password
        raise ValueError(
            f"{key_path} is encrypted (protected by a password); covey needs an unencrypted "
            f"key: decrypt it into a file of mode 0600, e.g. `openssl pkey -in {CA_KEY} -out "
            f"plain.key`, and put that in its place"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{key_path} is not a PEM private key") from None
    if not isinstance(
        key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise ValueError(f"unsupported CA key type in {key_path}: {type(key).__name__}")
    if cert.public_key() != key.public_key():
        raise ValueError(f"{key_path} is not the private key of {root / CA_CERT}")
    warn_if_open(key_path, "the federation's CA private key")
    return cert, key


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Serialise changes to one federation directory between processes (POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic writes only
        yield
        return
    fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT, KEY_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
