"""TLS files checked before they reach gRPC, which aborts or retries on bad ones without a word.

gRPC reads PEM files only when a connection is made: a certificate without
its key aborts the process, and a corrupt CA file or a key that belongs to
another certificate make every attempt fail with the same message as an
unreachable server. These checks read the files first and name the one that
is wrong.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, PublicKeyAlgorithmOID

from covey.core._files import read_given
from covey.transport.grpc._strength import weakness

__all__ = [
    "MAX_PEM_BYTES",
    "cannot_read",
    "check_ca",
    "check_common_name",
    "check_dates",
    "check_issued",
    "check_pair",
    "check_purpose",
    "missing_server_files",
    "read_pem",
    "server_folder",
]

logger = logging.getLogger("covey")

MAX_PEM_BYTES = 4 << 20
"""The largest certificate, key or CA bundle file read (a public CA bundle holds about 250 KB)."""


def cannot_read(exc: OSError, what: str, path: str | Path) -> OSError:
    """``exc``, raised reading ``path``, as an error of the same type naming the file.

    A folder where the file should be is said to be one (not "Is a directory").

    Args:
        exc: What reading the file raised.
        what: What the file was meant to hold, as named in errors ("the CA certificate").
        path: The file.
    """
    if isinstance(exc, IsADirectoryError):
        return IsADirectoryError(f"cannot read {what} {path}: it is a folder, not a file")
    return type(exc)(f"cannot read {what} {path}: {exc.strerror or exc}")


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of the PEM file ``path``, read up to :data:`MAX_PEM_BYTES`.

    A file that goes past it (a log or a model given by mistake, ``/dev/zero``)
    is refused after that many bytes rather than read into memory whole.

    Args:
        path: The file.
        what: What it was meant to hold, as named in errors ("the CA certificate").

    Raises:
        OSError: It cannot be read (the error names it and what it holds).
        ValueError: It is larger than :data:`MAX_PEM_BYTES`.
    """
    try:  # a named pipe no process writes is refused, not waited on
        data = read_given(path, MAX_PEM_BYTES)
    except OSError as exc:
        raise cannot_read(exc, what, path) from None
    if len(data) > MAX_PEM_BYTES:
        raise ValueError(
            f"{path} is larger than {MAX_PEM_BYTES:,} bytes: not {what} (a PEM file of a few KB)"
        )
    return data


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
        ValueError: It is not a PEM certificate, or its key is too short.
    """
    certificate = _certificate(pem, name)
    why = weakness(certificate)
    if why is not None and "signature" not in why:  # a trust anchor's own signature is not used
        raise ValueError(f"{name} is too weak: {why}")


_CURVES = ("secp256r1", "secp384r1")
"""The EC curves gRPC's TLS signs a handshake with (BoringSSL, as gRPC configures it)."""


def _unusable(certificate: x509.Certificate, private: object) -> str | None:
    """What kind of key ``private`` is when gRPC's TLS cannot use it, else None.

    gRPC cannot load a certificate on another EC curve (P-224, secp256k1, the
    brainpool curves) or an RSA-PSS one: the server's port is then reported as
    not bound, and a client's every connection as refused. It loads a P-521 or
    EdDSA key, and then offers no signature algorithm for it: every handshake
    fails with NO_COMMON_SIGNATURE_ALGORITHMS.
    """
    if isinstance(private, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return "an EdDSA (Ed25519/Ed448) key"
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name not in _CURVES:
        return f"an EC key on the curve {private.curve.name}"
    if certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        return "an RSA-PSS key (its certificate names the RSASSA-PSS algorithm)"
    return None


def check_pair(cert: bytes, key: bytes, cert_name: str, key_name: str) -> None:
    """Check that ``cert`` is a PEM certificate and ``key`` its unencrypted private key.

    Args:
        cert: The certificate file's bytes.
        key: The private key file's bytes.
        cert_name: The certificate file, as named in errors.
        key_name: The key file, as named in errors.

    Raises:
        ValueError: Either is not what it should be, the key is another certificate's,
            it is of a kind gRPC cannot use (Ed25519, Ed448, an EC curve but P-256 and
            P-384, RSA-PSS), or it is too weak
            (an RSA key under 2048 bits, a SHA-1 or MD5 signature).

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
    unusable = _unusable(certificate, private)
    if unusable is not None:
        raise ValueError(
            f"{key_name} is {unusable}, which gRPC's TLS cannot use: "
            "use an EC (P-256 or P-384) or RSA (2048 bits or more) key, e.g. a federation "
            "made with `covey certs init --key-type ec`"
        )
    why = weakness(certificate)
    if why is not None:
        raise ValueError(f"{cert_name} is too weak: {why}")
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
        der, spki
    ):
        raise ValueError(f"{key_name} is not the private key of {cert_name}")


def check_dates(pem: bytes, name: str, renew: str) -> None:
    """Refuse an expired certificate, and warn of one not yet valid, by this machine's clock.

    TLS checks the dates only when a connection is made, where an expired
    certificate fails every attempt with a message that does not name it.

    Args:
        pem: The certificate file's bytes (the first certificate is checked).
        name: The file, as named in messages.
        renew: What to do about an expired one, said after the dates.

    Raises:
        ValueError: The certificate has expired.
    """
    certificate = _certificate(pem, name)
    now = _dt.datetime.now(_dt.UTC)
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now > not_after:
        raise ValueError(
            f"{name} expired at {not_after:%Y-%m-%d %H:%M:%S} UTC (it is now "
            f"{now:%Y-%m-%d %H:%M:%S} UTC by this machine's clock); {renew}"
        )
    if now < not_before:
        logger.warning(
            "%s is not valid before %s UTC (it is now %s UTC by this machine's clock): "
            "peers whose clocks agree will refuse it; check the clocks",
            name,
            f"{not_before:%Y-%m-%d %H:%M:%S}",
            f"{now:%Y-%m-%d %H:%M:%S}",
        )


def check_issued(cert: bytes, ca: bytes, cert_name: str, ca_name: str, fix: str) -> None:
    """Refuse a certificate that no certificate of ``ca`` (or of its own chain) signed.

    A federation's peers check each other against the same ``ca.pem``: a server
    certificate from another federation (a folder mixed up on a restart) passes
    every local check, and then every client refuses it at the handshake, told
    only that the server's certificate is not trusted.

    Args:
        cert: The certificate file's bytes (its first certificate is checked; the
            ones after it, an intermediate chain, may sign it).
        ca: The CA file's bytes (one certificate or a bundle).
        cert_name: The certificate file, as named in messages.
        ca_name: The CA file, as named in messages.
        fix: What to do, said after the cause.

    Raises:
        ValueError: No certificate of ``ca`` nor of ``cert``'s chain signed it.
    """
    leaf = _certificate(cert, cert_name)
    try:
        issuers = x509.load_pem_x509_certificates(ca) + x509.load_pem_x509_certificates(cert)[1:]
    except ValueError:
        raise ValueError(f"{ca_name} is not a PEM certificate") from None
    for candidate in issuers:
        try:
            leaf.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return
    theirs, ours = leaf.issuer.rfc4514_string(), issuers[0].subject.rfc4514_string()
    other = f"another CA of the same name, {theirs!r}" if theirs == ours else repr(theirs)
    raise ValueError(
        f"{cert_name} was not issued by the CA in {ca_name} ({ours!r}) but by {other}, "
        f"e.g. another federation's: every peer that trusts {ca_name} would refuse it; {fix}"
    )


_PURPOSES = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}


def check_purpose(pem: bytes, name: str, role: str, fix: str) -> None:
    """Refuse a certificate whose extended key usage leaves out ``role``'s authentication.

    The peer's TLS refuses such a certificate at the handshake ("unsupported
    certificate purpose"), which only its own log says: the one that connects is
    told its CA does not accept it, as if it came from another federation.

    Args:
        pem: The certificate file's bytes (the first certificate is checked).
        name: The file, as named in messages.
        role: ``"client"`` or ``"server"``.
        fix: What to do, said after the cause.

    Raises:
        ValueError: The certificate names its usages, and ``role``'s is not one.
    """
    certificate = _certificate(pem, name)
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no extended key usage: any purpose
    if _PURPOSES[role] not in usage and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usage:
        allowed = ", ".join(getattr(u, "_name", u.dotted_string) for u in usage) or "none"
        raise ValueError(
            f"{name} is not a {role} certificate: its extended key usage allows {allowed}, "
            f"not {role} authentication, so the {'server' if role == 'client' else 'clients'} "
            f"would refuse it; {fix}"
        )


def check_common_name(pem: bytes, name: str, fix: str) -> None:
    """Refuse a client certificate without a common name: the server names its client by it.

    A certificate of another PKI may name its holder in its subject alternative
    names only; the server refuses it once the handshake has passed.

    Args:
        pem: The certificate file's bytes (the first certificate is checked).
        name: The file, as named in messages.
        fix: What to do, said after the cause.

    Raises:
        ValueError: The certificate's subject holds no common name, or an empty one.
    """
    certificate = _certificate(pem, name)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not names[0].value:
        raise ValueError(
            f"{name} has no common name (CN), which names the client in the federation, "
            f"so the server would refuse it; {fix}"
        )


def missing_server_files(directory: Path) -> list[str]:
    """Which of ``ca.pem``, ``server.pem`` and ``server.key`` are not in ``directory``.

    One that is there but is no file (a folder) is not missing: reading it says what it is.
    """
    return [n for n in ("ca.pem", "server.pem", "server.key") if not (directory / n).exists()]


def server_folder(directory: str | Path) -> Path:
    """``directory`` as a path, checked to hold the files a server needs.

    Raises:
        FileNotFoundError: One is missing (the error names them).
    """
    d = Path(directory)
    missing = missing_server_files(d)
    if missing:
        raise FileNotFoundError(
            f"{d} is not a federation folder (missing {', '.join(missing)}); "
            "create one with `covey certs init --dir DIR`"
        )
    return d
