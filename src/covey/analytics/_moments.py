"""SUM, AVG and the variances from the summed vectors, kept to what the bounds allow.

Every value a site sums is clipped to its bounds, so the mean of a group lies
within the union of the sites' bounds, its population variance is at most a
quarter of their range squared (half the values at each end; half of it for the
sample variance of as few as two values), and a sum of values none of which is
negative is not negative. Under DP the noisy sums and counts can give a mean, a
variance or a sum past that (an average age of -136 in a group of a few dozen
records with bounds (0, 110)); it is brought back inside, which is
post-processing: it costs no privacy and only moves an answer nearer the truth,
which is inside. The centre of the second stage's squared deviations is kept inside
too, so that their sensitivity, the largest squared distance from the centre
within the bounds, is no larger than the bounds make it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def centre(n: np.ndarray, s: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """Each group's mean from its count ``n`` and sum ``s``, within ``bounds``.

    A group without values (or with a noisy count of none) is centred at the
    middle of the bounds, the centre nearest to every value they allow.
    """
    low, high = float(bounds[0]), float(bounds[1])
    with np.errstate(all="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1), low / 2 + high / 2)
    return np.clip(mean, low, high)


def moment(
    func: str,
    n: np.ndarray,
    s: np.ndarray,
    bounds: Sequence[float],
    center: np.ndarray | None = None,
    squares: np.ndarray | None = None,
) -> np.ndarray:
    """``SUM``, ``AVG``, ``VAR_*`` or ``STDDEV_*`` per group (NaN where ``n`` is 0).

    Args:
        func: ``"sum"``, ``"avg"``, ``"var_samp"``, ``"var_pop"``, ``"stddev_samp"``
            or ``"stddev_pop"``.
        n: The number of values per group (0 where too few to show).
        s: Their sum.
        bounds: The column's ``(low, high)`` over the sites.
        center: The centre of the squared deviations (a variance only).
        squares: The summed squared deviations from ``center`` (a variance only).
    """
    low, high = float(bounds[0]), float(bounds[1])
    with np.errstate(all="ignore"):
        if func == "sum":  # of values that are none of them negative: not negative
            lowest = 0.0 if low >= 0 else -np.inf
            return np.where(n > 0, np.clip(s, lowest, 0.0 if high <= 0 else np.inf), np.nan)
        if func == "avg":
            return np.where(n > 0, np.clip(s / n, low, high), np.nan)
        if center is None or squares is None:
            raise ValueError(f"{func} needs the centre and the squared deviations")
        m2 = squares - (s - n * center) ** 2 / n
        ddof = 1 if func.endswith("samp") else 0
        # the largest variance values within the bounds can have, half at each end:
        # a quarter of the range squared, times N / (N - 1) <= 2 for VAR_SAMP over N >= 2
        span = high - low  # squared by a product: inf past a float, where ** raises
        top = span * span / 4 * (1 + ddof)
        var = np.where(n > ddof, np.clip(m2 / (n - ddof), 0.0, top), np.nan)
        return np.sqrt(var) if func.startswith("stddev") else var


__all__ = ["centre", "moment"]
