"""Numbers a site's answer travels as: sensitivities for DP noise, fixed point for secure sums.

A statistic's sensitivity (how far one record moves it) sets its share of DP
noise; under secure aggregation its values are scaled by a power of two and
rounded to integers (sums in two limbs) that stay within a bound the sum over
the sites fits, and a site's answer is flattened into one int64 vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covey.analytics._policy import PolicyError
from covey.analytics._readers import clip_columns
from covey.analytics._sqltext import QueryError

ROW_CAP = 1 << 31  # the rows a site may hold, before any stage has counted them
MAX_DOWNSCALE = 900  # a fixed-point scale stays at or above 2^-900 (float64 range)
MAX_UPSCALE = 1000  # and at or below 2^1000 (values far below 1 keep their digits)


def sensitivity(
    stat: Mapping[str, Any], bounds: Mapping[str, Sequence[float]], mechanism: str
) -> float:
    """How much one record added or removed can change ``stat``'s vector (L1 or L2 norm).

    Args:
        stat: A statistic request (see :func:`covey.analytics._compute.shape`).
        bounds: ``{column: (low, high)}`` the values are clipped to.
        mechanism: ``"laplace"`` (L1 norm) or ``"gaussian"`` (L2 norm).

    Returns:
        The sensitivity.
    """
    op = stat["op"]
    if op in ("count", "count_col", "bins", "distinct", "prefix"):
        return 1.0
    if op == "km":
        return 2.0 if mechanism == "laplace" else float(np.sqrt(2.0))
    low, high = (float(b) for b in bounds[stat["col"]])
    if op == "sum":
        return max(abs(low), abs(high))
    if op == "sq":
        centers = np.asarray(stat["center"], dtype=float)
        if centers.size == 0:
            return 0.0
        with np.errstate(over="ignore"):  # inf: refused by the server and the sites
            return float(np.max(np.maximum((low - centers) ** 2, (high - centers) ** 2)))
    raise PolicyError(f"no differentially private answer for {op!r}")


def secure_bound(sites: int) -> int:
    """The bound on every entry of a site's secure answer, so the sum of ``sites`` fits 61 bits."""
    return (1 << 61) // (2 * max(sites, 1))


def fixed_point_scale(stat: dict[str, Any], bounds: dict[str, Any], sites: int) -> float:
    """The power of two a statistic is multiplied by before rounding (1 for counts).

    Chosen so a site's rows (``stat["rows"]`` when an earlier stage counted them,
    else ``ROW_CAP``) of the largest value allowed by the bounds stay within
    :func:`secure_bound`; it is below 1 for wide bounds. Sums and squared
    deviations travel in two limbs (see :func:`fixed_point`),
    so the scale bounds the range, not the precision.
    """
    op = stat["op"]
    if op not in ("sum", "sq"):
        return 1.0
    low, high = (float(b) for b in bounds[stat["col"]])
    if op == "sum":
        reach = max(abs(low), abs(high))
    else:
        centers = np.asarray(stat.get("center") or [low], dtype=float)
        with np.errstate(over="ignore"):
            reach = float(np.max(np.maximum(np.abs(low - centers), np.abs(high - centers))))
    rows = int(stat.get("rows", ROW_CAP))
    if not math.isfinite(reach):  # bounds (-1e308, 1e308): their range is inf
        raise QueryError(
            f"the bounds of {stat['col']!r} are too wide for secure aggregation: the "
            f"{'range' if op == 'sq' else 'largest'} of the values they allow passes the "
            "largest float64; declare bounds nearer the values"
        )
    # in logarithms: rows times the largest value (a square for "sq") may pass float64
    top = (1 if op == "sum" else 2) * math.log2(max(reach, 1e-300))
    exponent = math.floor(math.log2(secure_bound(sites)) - math.log2(rows) - top)
    if exponent < -MAX_DOWNSCALE:
        raise QueryError(
            f"the bounds of {stat['col']!r} are too wide for secure aggregation of "
            f"{rows} rows per site ({'squared deviations' if op == 'sq' else 'sums'} "
            f"up to 2^{top:.0f}); declare bounds nearer the values"
        )
    return float(2.0 ** min(exponent, MAX_UPSCALE))


def low_bits(bound: int) -> int:
    """Bits of the low limb of a two-limb fixed-point sum whose entries stay within ``bound``.

    As many as the bound allows, up to the 52 bits of a float64 fraction.
    """
    return max(min(52, int(bound).bit_length() - 1), 0)


def fixed_point(values: np.ndarray, scale: float, request: Mapping[str, Any]) -> np.ndarray:
    """``values * scale`` rounded to int64, checked against the request's bound.

    A statistic with ``"limbs": 2`` (sums and squared deviations) is sent as two
    integer vectors, ``hi = floor(values * scale)`` and the fraction left,
    ``lo = rint((values * scale - hi) * 2^b)`` with ``b = low_bits(bound)``: the
    scale only has to keep the largest sum the bounds allow within the ring, and
    the low limb keeps 52 more bits below the high limb's unit (each site's sum to
    about 2^-80 of its bounds' largest value). The
    server adds each limb over the sites and reads ``(hi + lo / 2^b) / scale``.
    """
    bound = int(request.get("bound", 0))
    if not scale > 0 or not np.isfinite(scale):
        raise PolicyError(f"the request's fixed-point scale {scale!r} is not a positive number")
    scaled = values * scale
    limbs = request.get("limbs", 1)
    if limbs == 2:
        hi = np.floor(scaled)
        lo = np.rint((scaled - hi) * float(1 << low_bits(bound)))
        ints = np.concatenate([hi, lo])
    elif limbs == 1:
        ints = np.rint(scaled)
    else:
        raise PolicyError(f"a statistic is sent in 1 or 2 limbs, not {limbs!r}")
    if ints.size and float(np.max(np.abs(ints))) > bound:
        raise PolicyError(
            f"an answer exceeds the secure-aggregation bound {bound}: the site holds more "
            "rows than the bound allows"
        )
    return ints.astype(np.int64)


def encode(
    request: Mapping[str, Any], stats: Sequence[Mapping[str, Any]], vectors: list[np.ndarray]
) -> list[np.ndarray]:
    """The answer's vectors as sent: fixed point under secure aggregation, else floats."""
    out: list[np.ndarray] = []
    for s, v in zip(stats, vectors, strict=True):
        if request.get("secure") and s["op"] not in ("min", "max"):
            limbs = {"bound": request.get("bound", 0), "limbs": s.get("limbs", 1)}
            out.append(fixed_point(v.ravel(), float(s.get("scale", 1.0)), limbs))
        else:
            out.append(v.ravel())
    return out


def flatten(answer: Mapping[str, Any], stats: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """One int64 vector of an answer: the statistics, clipped counts, outside and withheld."""
    tail = [int(answer["clipped"].get(c, 0)) for c in clip_columns(stats)]
    tail += [int(answer["outside_domain"]), int(answer["withheld_groups"])]
    parts = [np.asarray(v, dtype=np.int64) for v in answer["vectors"]]
    return np.concatenate([*parts, np.asarray(tail, dtype=np.int64)])
