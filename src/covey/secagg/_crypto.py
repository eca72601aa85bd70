"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

* X25519 key agreement, the shared secret run through HKDF-SHA256 with the
  round's session id as salt and the purpose (``b"mask"`` or ``b"channel"``) as
  info, so no key is reused across rounds or purposes;
* AES-256-GCM for the Shamir shares sent through the server, with the session,
  sender and receiver as associated data;
* Ed25519 signatures binding a client's two public keys to its identity;
* masks expanded from 32-byte seeds by AES-256-CTR: a keystream is uniform over
  the ring ``Z_{2^w}`` when taken ``w`` bits at a time.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017; Bernstein, "Curve25519: new Diffie-Hellman speed records",
    PKC 2006; RFC 5869 (HKDF); NIST SP 800-38D (GCM).
"""

from __future__ import annotations

import os
import threading

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


class CryptoError(ValueError):
    """A key, ciphertext or signature that does not check out."""


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes ``(private, public)``."""
    sk = X25519PrivateKey.generate()
    return (
        sk.private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
        sk.public_key().public_bytes(_RAW, _RAW_PUB),
    )


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    try:
        return (
            X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUB)
        )
    except ValueError as exc:
        raise CryptoError(f"not an X25519 private key: {exc}") from None


def check_public(public: bytes) -> None:
    """Refuse an X25519 public key no key agreement can use (e.g. a low-order point).

    Raises:
        CryptoError: Naming why the key is unusable.
    """
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise CryptoError(f"not a usable X25519 public key ({exc})") from None


def agree(private: bytes, peer_public: bytes, session: bytes, purpose: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``, bound to the session and purpose."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:
        raise CryptoError(f"key agreement failed: {exc}") from None
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=b"covey-secagg/" + purpose).derive(
        shared
    )


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM encryption with a random 96-bit nonce (prepended to the ciphertext)."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Undo :func:`seal`; raises :class:`CryptoError` if it was tampered with."""
    if len(sealed) < 12 + 16:
        raise CryptoError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag:
        raise CryptoError("ciphertext failed authentication") from None


def new_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 identity key pair as raw bytes ``(private, public)``."""
    sk = Ed25519PrivateKey.generate()
    return (
        sk.private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
        sk.public_key().public_bytes(_RAW, _RAW_PUB),
    )


def sign(private: bytes, message: bytes) -> bytes:
    """An Ed25519 signature of ``message``."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature; raises :class:`CryptoError` if it is not valid."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise CryptoError("invalid signature") from None


def expand(seed: bytes, count: int, dtype: np.dtype[np.unsignedinteger] | type) -> np.ndarray:
    """``count`` uniform words (``uint32`` or ``uint64``) from AES-256-CTR keyed by ``seed``.

    The counter starts at zero: a seed must be used for one vector only (seeds
    are derived per session and per pair, so this holds).
    """
    dt = np.dtype(dtype)
    if len(seed) != KEY_BYTES:
        raise CryptoError(f"a mask seed has {KEY_BYTES} bytes, got {len(seed)}")
    nbytes = count * dt.itemsize
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(nbytes))
    return np.frombuffer(stream, dtype=dt.newbyteorder("<")).astype(dt, copy=False)


def agree_seed(secret: bytes, session: bytes) -> bytes:
    """The self-mask seed: the secret ``b`` run through HKDF with the session as salt."""
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=b"covey-secagg/self").derive(secret)


_buffers = threading.local()


def _scratch(nbytes: int) -> tuple[bytes, bytearray]:
    """Per-thread zero input and output buffers for keystreams of ``nbytes`` bytes."""
    cached = getattr(_buffers, "pair", None)
    if cached is None or len(cached[0]) != nbytes:
        cached = (bytes(nbytes), bytearray(nbytes + 15))
        _buffers.pair = cached
    return cached


def add_stream(acc: np.ndarray, seed: bytes, sign: int) -> None:
    """``acc += sign * PRG(seed)`` in place (wrapping), with no keystream allocated per call.

    Same stream as :func:`expand`; ``acc`` is a 1-D ``uint32`` or ``uint64`` array.
    """
    if len(seed) != KEY_BYTES:
        raise CryptoError(f"a mask seed has {KEY_BYTES} bytes, got {len(seed)}")
    nbytes = acc.size * acc.dtype.itemsize
    zeros, out = _scratch(nbytes)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    encryptor.update_into(zeros, out)
    stream = np.frombuffer(out, dtype=acc.dtype.newbyteorder("<"), count=acc.size)
    if sign > 0:
        np.add(acc, stream, out=acc, casting="unsafe")
    else:
        np.subtract(acc, stream, out=acc, casting="unsafe")
