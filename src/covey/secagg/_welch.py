"""Which shares of a Shamir secret are true, when some may be false: Berlekamp-Welch.

The shares of one limb are a Reed-Solomon codeword: the values at the points
``x`` of one polynomial of degree ``threshold - 1``. With ``n`` shares, up to
``(n - threshold) // 2`` false ones can be located by solving one linear
system over the field (Berlekamp and Welch, US patent 4,633,470, 1986): for a
monic error locator ``E`` of degree ``e`` and ``Q`` of degree ``e + threshold -
1``, ``Q(x_i) = y_i E(x_i)`` at every point. Any solution has ``Q = P E`` for
the true polynomial ``P``, so ``E`` vanishes at every false share, and the
shares where it does not vanish are true.

A secret has several limbs, each shared with its own polynomial at the same
points; they are located at once on a random combination of the limbs (a
share false in any limb is false in the combination but with probability 1 /
p), and the caller checks every limb of the shares found.
"""

from __future__ import annotations

import numpy as np

__all__ = ["true_shares"]


def true_shares(
    values: np.ndarray, xs: np.ndarray, threshold: int, prime: int, mix: np.ndarray
) -> np.ndarray | None:
    """Indices of ``threshold`` shares off the error locator, or None if none is found.

    Args:
        values: ``(n, limbs)`` field elements, one row per share.
        xs: The ``n`` shares' points.
        threshold: The number of shares that define the secret.
        prime: The field's prime.
        mix: One random field element per limb (from a CSPRNG: a false share must
            not be able to cancel out in the combination).

    Returns:
        Row indices of ``threshold`` shares that are true if at most
        ``(n - threshold) // 2`` of the ``n`` are false; None when the system
        has no solution (more are false).
    """
    n = len(xs)
    errors = (n - threshold) // 2
    if errors < 1:
        return None
    p = prime
    ys = [sum(int(c) * int(v) for c, v in zip(mix, row, strict=True)) % p for row in values]
    points = [int(x) for x in xs]
    width = errors + threshold  # Q's coefficients, then E's below its leading 1
    rows = []
    for x, y in zip(points, ys, strict=True):
        powers = [pow(x, j, p) for j in range(width)]
        rows.append(
            [*powers, *((-y * powers[j]) % p for j in range(errors)), y * powers[errors] % p]
        )
    solution = _solve(rows, width + errors, p)
    if solution is None:
        return None
    locator = [*solution[width:], 1]
    off = [k for k, x in enumerate(points) if _at(locator, x, p) != 0]
    return np.asarray(off[:threshold]) if len(off) >= threshold else None


def _at(coefficients: list[int], x: int, p: int) -> int:
    """The polynomial with ``coefficients`` (lowest first) at ``x``."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % p
    return value


def _solve(rows: list[list[int]], unknowns: int, p: int) -> list[int] | None:
    """One solution of the augmented system ``rows`` modulo the prime ``p``, or None."""
    rows = [row[:] for row in rows]
    pivots: list[int] = []
    r = 0
    for col in range(unknowns):
        pivot = next((i for i in range(r, len(rows)) if rows[i][col] % p), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        inverse = pow(rows[r][col], p - 2, p)
        rows[r] = [v * inverse % p for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col]:
                factor = rows[i][col]
                rows[i] = [(a - factor * b) % p for a, b in zip(rows[i], rows[r], strict=True)]
        pivots.append(col)
        r += 1
    if any(row[-1] % p for row in rows[r:]):  # 0 = nonzero: no solution
        return None
    solution = [0] * unknowns  # free unknowns at 0
    for i, col in enumerate(pivots):
        solution[col] = rows[i][-1]
    return solution
