"""Shamir t-of-n secret sharing of byte strings over the prime field GF(2^31 + 11).

A secret of ``m`` bytes is cut into 31-bit limbs; each limb is the constant term
of its own random polynomial of degree ``t - 1``, and holder ``x`` (1, 2, ...)
receives the polynomials' values at ``x``. Any ``t`` shares give the limbs back
by Lagrange interpolation at 0; ``t - 1`` shares are uniformly distributed
whatever the secret. All holders' shares of all limbs are computed at once with
NumPy (Horner's rule on ``uint64``: every product of two field elements is below
``2^63``), so sharing a 32-byte key among 100 holders takes well under a
millisecond.

References:
    Shamir, "How to Share a Secret", Communications of the ACM 22(11), 1979.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

PRIME = 2**31 + 11
"""The field's order: the smallest prime above 2^31 (as in Google's production SecAgg)."""
LIMB_BITS = 31


class ShamirError(ValueError):
    """Shares that cannot be reconstructed: too few, duplicated, or malformed."""


def _limbs(secret: bytes) -> list[int]:
    value = int.from_bytes(secret, "little")
    count = -(-len(secret) * 8 // LIMB_BITS)
    mask = (1 << LIMB_BITS) - 1
    return [(value >> (LIMB_BITS * i)) & mask for i in range(count)]


def _from_limbs(limbs: Sequence[int], length: int) -> bytes:
    value = 0
    for i, limb in enumerate(limbs):
        if not 0 <= limb < 1 << LIMB_BITS:
            raise ShamirError("the shares do not reconstruct a secret (a limb is out of range)")
        value |= limb << (LIMB_BITS * i)
    if value >> (8 * length):
        raise ShamirError("the shares do not reconstruct a secret (it overflows its length)")
    return value.to_bytes(length, "little")


def random_field(shape: tuple[int, ...], prime: int = PRIME) -> np.ndarray:
    """Uniform field elements from the OS's CSPRNG (rejection sampling, no modulo bias)."""
    count = int(np.prod(shape))
    bits = max(prime - 1, 1).bit_length()
    out = np.empty(0, dtype=np.uint64)
    while out.size < count:
        need = count - out.size
        raw = np.frombuffer(os.urandom(8 * (2 * need + 8)), dtype="<u8")
        raw = raw >> np.uint64(64 - bits)
        out = np.concatenate([out, raw[raw < prime][:need]])
    return out.reshape(shape)


def split_limbs(
    limbs: np.ndarray, threshold: int, xs: Sequence[int], prime: int = PRIME
) -> np.ndarray:
    """Share each field element of ``limbs`` so that any ``threshold`` of the ``xs`` recover it.

    Args:
        limbs: 1-D field elements (each ``< prime``).
        threshold: Shares needed to reconstruct (>= 1).
        xs: Distinct non-zero evaluation points, one per holder (each ``< prime``).
        prime: The field's order (a prime below 2^31.5, so products fit in 64 bits).

    Returns:
        ``shares[i, j]``: holder ``xs[i]``'s share of limb ``j``.
    """
    xs_arr = np.asarray(xs, dtype=np.uint64)
    if threshold < 1 or threshold > len(xs):
        raise ShamirError(f"threshold must be in [1, {len(xs)}] holders, got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < int(x) < prime for x in xs):
        raise ShamirError("evaluation points must be distinct and in [1, prime)")
    limbs = np.asarray(limbs, dtype=np.uint64)
    p = np.uint64(prime)
    # coefficients[d] multiplies x^(d+1); the constant term is the secret itself.
    coefficients = random_field((threshold - 1, limbs.size), prime)
    acc = np.zeros((len(xs), limbs.size), dtype=np.uint64)
    x_col = xs_arr[:, None]
    for d in range(threshold - 2, -1, -1):
        acc = (acc + coefficients[d][None, :]) % p
        acc = (acc * x_col) % p
    shares: np.ndarray = (acc + limbs[None, :]) % p
    return shares


def lagrange_at_zero(xs: Sequence[int], prime: int = PRIME) -> list[int]:
    """The Lagrange weights ``l_i`` with ``f(0) = sum_i l_i f(x_i)`` for distinct ``xs``."""
    if len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
        raise ShamirError("share points must be distinct and in [1, prime)")
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        weights.append(num * pow(den, -1, prime) % prime)
    return weights


def combine_limbs(
    shares: Mapping[int, Sequence[int]], threshold: int, prime: int = PRIME
) -> list[int]:
    """Reconstruct field elements from ``{x: share values}``, using the first ``threshold``.

    Raises:
        ShamirError: With fewer than ``threshold`` shares or shares of unequal length.
    """
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    xs = sorted(shares)[:threshold]
    lengths = {len(shares[x]) for x in xs}
    if len(lengths) != 1:
        raise ShamirError("shares of different lengths")
    weights = lagrange_at_zero(xs, prime)
    out = []
    for j in range(lengths.pop()):
        total = 0
        for w, x in zip(weights, xs, strict=True):
            y = int(shares[x][j])
            if not 0 <= y < prime:
                raise ShamirError("a share value lies outside the field")
            total += w * y
        out.append(total % prime)
    return out


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Share the bytes ``secret`` among holders ``xs``; any ``threshold`` of them recover it.

    Returns:
        ``{x: share}``, each share ``4 * ceil(8 len(secret) / 31)`` bytes.

    Example:
        >>> shares = split(b"k" * 32, 3, [1, 2, 3, 4, 5])
        >>> combine({x: shares[x] for x in (2, 4, 5)}, 3, 32) == b"k" * 32
        True
    """
    limbs = np.asarray(_limbs(secret), dtype=np.uint64)
    table = split_limbs(limbs, threshold, xs).astype("<u4")
    return {int(x): table[i].tobytes() for i, x in enumerate(xs)}


def combine(shares: Mapping[int, bytes], threshold: int, length: int) -> bytes:
    """The ``length``-byte secret from at least ``threshold`` of :func:`split`'s shares."""
    expected = 4 * -(-length * 8 // LIMB_BITS)
    values: dict[int, list[int]] = {}
    for x, share in shares.items():
        if len(share) != expected:
            raise ShamirError(f"share {x} has {len(share)} bytes, expected {expected}")
        values[x] = np.frombuffer(share, dtype="<u4").tolist()
    return _from_limbs(combine_limbs(values, threshold), length)
