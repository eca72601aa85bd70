"""TLS files checked before they reach gRPC, which aborts or retries on bad ones without a word.

gRPC reads PEM files only when a connection is made: a certificate without
its key aborts the process, and a corrupt CA file or a key that belongs to
another certificate make every attempt fail with the same message as an
unreachable server. These checks read the files first and name the one that
is wrong.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["check_ca", "check_pair"]


def _certificate(pem: bytes, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ValueError(f"{name} is not a PEM certificate") from None


def check_ca(pem: bytes, name: str) -> None:
    """Check that ``pem`` holds a PEM certificate (the CA's, or a bundle starting with one).

    Args:
        pem: The file's bytes.
        name: The file, as named in errors.

    Raises:
        ValueError: It is not a PEM certificate.
    """
    _certificate(pem, name)


def check_pair(cert: bytes, key: bytes, cert_name: str, key_name: str) -> None:
    """Check that ``cert`` is a PEM certificate and ``key`` its unencrypted private key.

    Args:
        cert: The certificate file's bytes.
        key: The private key file's bytes.
        cert_name: The certificate file, as named in errors.
        key_name: The key file, as named in errors.

    Raises:
        ValueError: Either is not what it should be, or the key is another certificate's.

    Example:
        >>> check_pair(b"x", b"y", "a.pem", "a.key")
        Traceback (most recent call last):
        ...
        ValueError: a.pem is not a PEM certificate
    """
    certificate = _certificate(cert, cert_name)
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise ValueError(f"{key_name} is encrypted; covey needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{key_name} is not a PEM private key") from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
        der, spki
    ):
        raise ValueError(f"{key_name} is not the private key of {cert_name}")
