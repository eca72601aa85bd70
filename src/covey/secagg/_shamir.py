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

from covey.secagg._welch import true_shares

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


def _through(base: Sequence[int], points: np.ndarray, prime: int) -> np.ndarray:
    """``w[k, i]``: the weight of the value at ``base[i]`` in the value at ``points[k]``.

    The Lagrange basis of the polynomial of degree ``len(base) - 1`` through the
    base points, evaluated at points that are not among them.
    """
    p = np.uint64(prime)
    t = len(base)
    num = np.ones((points.size, t), dtype=np.uint64)
    for j, xj in enumerate(base):
        factor = (points + np.uint64(prime - xj)) % p  # points - x_j, mod p
        others = np.arange(t) != j
        num[:, others] = (num[:, others] * factor[:, None]) % p
    inv = []
    for i, xi in enumerate(base):
        den = 1
        for j, xj in enumerate(base):
            if j != i:
                den = den * (xi - xj) % prime
        inv.append(pow(den, -1, prime))
    out: np.ndarray = (num * np.asarray(inv, dtype=np.uint64)[None, :]) % p
    return out


def _agreeing(values: np.ndarray, xs: np.ndarray, rows: np.ndarray, prime: int) -> np.ndarray:
    """Which shares (``values[k]`` at ``xs[k]``) lie on the polynomial through ``rows``."""
    p = np.uint64(prime)
    rest = np.ones(xs.size, dtype=bool)
    rest[rows] = False
    ok = ~rest
    if rest.any():
        w = _through([int(x) for x in xs[rows]], xs[rest], prime)
        expect = np.zeros((int(rest.sum()), values.shape[1]), dtype=np.uint64)
        for i, r in enumerate(rows):
            expect = (expect + (w[:, i : i + 1] * values[r][None, :]) % p) % p
        ok[rest] = (expect == values[rest]).all(axis=1)
    return ok


def decode(shares: Mapping[int, bytes], threshold: int, length: int) -> tuple[bytes, list[int]]:
    """The secret from shares some of which may be false, and the points of the false ones.

    Every share is checked against the polynomial its fellows define. False
    shares are told apart from true ones only when the polynomial through some
    ``threshold`` of them agrees with all but at most ``(m - threshold) // 2`` of
    the ``m`` shares (then it is the only such polynomial, as in the unique
    decoding of Reed-Solomon codes); candidate polynomials are those through
    disjoint, then overlapping, runs of ``threshold`` points, and when every run
    holds a false share, the one through ``threshold`` shares that
    Berlekamp-Welch finds true (:mod:`covey.secagg._welch`). A share with a
    value outside the field is false from the start.

    Raises:
        ShamirError: With fewer than ``threshold`` shares, malformed ones, or false
            shares that cannot be outvoted.
    """
    if len(shares) < threshold or threshold < 1:
        raise ShamirError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    expected = 4 * -(-length * 8 // LIMB_BITS)
    points = sorted(shares)
    if any(len(shares[x]) != expected for x in points) or not all(0 < x < PRIME for x in points):
        raise ShamirError(f"a share is not {expected} bytes or its point is outside the field")
    raw = np.frombuffer(b"".join(shares[x] for x in points), dtype="<u4")
    values = raw.reshape(len(points), -1).astype(np.uint64)
    m = len(points)
    needed = m - (m - threshold) // 2
    inside = np.nonzero((values < np.uint64(PRIME)).all(axis=1))[0]
    xs = np.asarray(points, dtype=np.uint64)
    starts = [*range(0, inside.size - threshold + 1, threshold)]
    starts += range(1, inside.size - threshold + 1)
    for start in dict.fromkeys(starts):
        rows = inside[start : start + threshold]
        ok = _agreeing(values, xs, rows, PRIME)
        if int(ok.sum()) >= needed:
            return _secret(values, xs, rows, length), [points[k] for k in np.nonzero(~ok)[0]]
    if inside.size > threshold:  # no run of points was all true: locate the false ones
        found = true_shares(
            values[inside], xs[inside], threshold, PRIME, random_field((values.shape[1],))
        )
        if found is not None:
            rows = inside[found]
            ok = _agreeing(values, xs, rows, PRIME)
            if int(ok.sum()) >= needed:
                return _secret(values, xs, rows, length), [points[k] for k in np.nonzero(~ok)[0]]
    raise ShamirError(
        f"the {m} shares do not agree on a secret and too few agree to outvote the false ones"
    )


def _secret(values: np.ndarray, xs: np.ndarray, rows: np.ndarray, length: int) -> bytes:
    """The secret of ``length`` bytes through the shares ``rows``."""
    weights = np.asarray(lagrange_at_zero([int(x) for x in xs[rows]]), dtype=np.uint64)
    limbs = np.zeros(values.shape[1], dtype=np.uint64)
    for w, r in zip(weights, rows, strict=True):
        limbs = (limbs + (w * values[r]) % np.uint64(PRIME)) % np.uint64(PRIME)
    return _from_limbs([int(v) for v in limbs], length)


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
