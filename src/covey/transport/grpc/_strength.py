"""Certificates too weak for current guidance: short RSA keys, SHA-1 or MD5 signatures.

gRPC's TLS library accepts a 1024-bit RSA key or a certificate signed with
SHA-1; current guidance (NIST SP 800-131A, the CA/Browser Forum) does not. A
covey federation makes EC P-256 keys signed with SHA-256, so only
certificates from another PKI can be this weak; they are refused with the
reason, by the server at join and by both commands before they start.
"""

from __future__ import annotations

import functools
import warnings

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.utils import CryptographyDeprecationWarning

__all__ = ["MIN_RSA_BITS", "weakness"]

#: The shortest RSA (or DSA) key accepted, in bits.
MIN_RSA_BITS = 2048

_WEAK_HASHES = (hashes.SHA1, hashes.MD5)


@functools.cache
def _dsa_key() -> type:
    """DSA's public key class (cryptography 51 deprecates DSA, warning as its name is read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        from cryptography.hazmat.primitives.asymmetric import dsa

        return dsa.DSAPublicKey


def weakness(certificate: x509.Certificate) -> str | None:
    """Why ``certificate`` is too weak to trust, or None if it is not.

    Args:
        certificate: The certificate to judge (its key and its signature).

    Returns:
        The reason, e.g. ``"a 1024-bit RSA key (2048 bits at least)"``, or None.
    """
    key = certificate.public_key()
    kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else "DSA"
    size: int = getattr(key, "key_size", 0)
    if isinstance(key, (rsa.RSAPublicKey, _dsa_key())) and size < MIN_RSA_BITS:
        return f"a {size}-bit {kind} key ({MIN_RSA_BITS} bits at least)"
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:  # unknown to cryptography: gRPC judged it at the handshake
        return None
    if isinstance(algorithm, _WEAK_HASHES):
        return f"a signature with {algorithm.name.upper()} (SHA-256 or stronger needed)"
    return None
