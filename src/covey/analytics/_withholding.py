"""What a site withholds: groups and columns under its minimum, unless noise stands in.

Without DP a site answers zero for every group with fewer records than its
minimum group size, and for every statistic of a column fewer records of the
group hold. Under DP it answers such groups with noise instead (withholding
would move a count from 0 to the minimum, past the sensitivity the noise is
calibrated for), but only when the noise is as strong as its policy accepts
(:attr:`covey.analytics.Policy.dp_level`): otherwise a server that asks for
next to no noise would read a group of one record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covey.analytics import _dp
from covey.analytics._compute import Computed
from covey.analytics._policy import Policy, PolicyError

MULTIPLIERS = (1e-100, 1e100)
"""The noise multipliers a site accepts: far past those any epsilon calibrates to.

Beyond them the RDP accountant's epsilon overflows to infinity (a ledger that says
``inf`` is refused as damaged when the site restarts) or its arithmetic fails.
"""


def noise_request(dp: Mapping[str, Any]) -> tuple[str, float, int]:
    """The mechanism, multiplier and shares of a request's noise, checked.

    Raises:
        PolicyError: Naming what is not a valid noise request.
    """
    mechanism = str(dp.get("mechanism"))
    if "multiplier" not in dp or "shares" not in dp:
        raise PolicyError(f"bad noise request: {str(dict(dp))[:200]}")
    multiplier, shares = dp["multiplier"], dp["shares"]
    # read as numbers, true would be 1 and 1.9 one share: refused before either is used
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
        raise PolicyError(f"bad noise request: multiplier {str(multiplier)[:60]!r}, not a number")
    if isinstance(shares, bool) or not isinstance(shares, int):
        raise PolicyError(f"bad noise request: shares {str(shares)[:60]!r}, not a whole number")
    if isinstance(multiplier, int) and abs(multiplier) > 1e300:  # float() would overflow
        multiplier = math.inf
    multiplier = float(multiplier)
    if mechanism not in _dp.MECHANISMS:
        raise PolicyError(f"bad noise request: mechanism {mechanism!r}")
    if not (0 < multiplier < math.inf and 1 <= shares <= 100_000):
        raise PolicyError(f"bad noise request: multiplier {multiplier}, {shares} shares")
    low, high = MULTIPLIERS
    if not low <= multiplier <= high:  # past them the accountant overflows, or fails
        raise PolicyError(
            f"bad noise request: multiplier {multiplier:g}, outside the {low:g} to {high:g} "
            "a site accounts for"
        )
    return mechanism, multiplier, shares


def noise_suffices(policy: Policy, dp: Any, stats: int) -> bool:
    """Whether a stage's noise lets the site answer its small groups rather than withhold them.

    The stage's cost is that of its ``stats`` releases, or of the whole query's
    (``dp["releases"]``, as the server plans it) when that is more: the site
    then withholds in every stage of a query or in none. A server that claims
    fewer releases gains nothing: the stage's own releases are counted.

    Args:
        policy: The site's policy (its :attr:`~covey.analytics.Policy.dp_level`).
        dp: The stage's noise request (None: no noise).
        stats: The statistics the stage releases.

    Returns:
        True when the cost is within the policy's level; False without noise or level.
    """
    if dp is None:
        return False
    if not isinstance(dp, Mapping):
        raise PolicyError(f"bad noise request: {dp!r}")
    mechanism, multiplier, _ = noise_request(dp)
    level = policy.dp_level
    if level is None:
        return False
    claimed = dp.get("releases")
    if isinstance(claimed, bool) or not isinstance(claimed, int):
        claimed = 0
    releases = max(stats, min(claimed, 1_000_000), 1)
    return _dp.cost(mechanism, multiplier, releases, policy.delta) <= level * (1 + 1e-9)


def withhold(
    got: Computed,
    stats: Sequence[Mapping[str, Any]],
    policy: Policy,
    dp: Mapping[str, Any] | None,
    skip: bool,
) -> tuple[list[np.ndarray], dict[str, int], int, int]:
    """A stage's vectors with what fewer than the minimum make up zeroed; the counts beside.

    A statistic is zeroed in each group where fewer than ``k`` rows hold values of
    its columns (the group's rows for ``COUNT(*)``): a sum over one bonus among
    forty rows is that bonus. The clipped and out-of-domain counts are sent only
    when at least ``k`` (else 0), and the withheld groups are those under ``k``,
    empty ones included: if 0 and 1 were told apart, a condition naming one
    record would read its values one comparison at a time. A column's clipped
    count leaves out the groups where every statistic clipping it is withheld
    (see :func:`clipped_shown`): it would tell whether a hidden value is past
    its bound.

    Under noise the policy accepts (``skip``, see :func:`noise_suffices`) nothing
    is withheld: withholding would let one record move a count from 0 to ``k``,
    past the sensitivity the noise is calibrated for, and the server suppresses
    small noisy totals instead (post-processing). Under any noise, none of the
    three counts is sent (they would be exact releases).

    Returns:
        The vectors, the clipped counts per column, the rows outside the domain and
        the withheld groups.
    """
    k = policy.min_group_size
    vectors = [v.copy() for v in got.vectors]
    if not skip:
        for s, v, reads in zip(stats, vectors, got.support, strict=True):
            v[reads < k] = np.nan if s["op"] in ("min", "max") else 0.0
    if dp is not None:
        return vectors, dict.fromkeys(got.clipped, 0), 0, 0
    clipped = {c: n if n >= k else 0 for c, n in clipped_shown(got, stats, k).items()}
    outside = got.outside_domain if got.outside_domain >= k else 0
    return vectors, clipped, outside, int(np.sum(got.group_counts < k))


def clipped_shown(got: Computed, stats: Sequence[Mapping[str, Any]], k: int) -> dict[str, int]:
    """The clipped values per column that a statistic shown reads.

    A value the site withholds (its group under ``k`` records, or the column's
    values in the group under ``k``) is not counted: with a bound of 100, a
    count of 21 beside 20 visible values at 150 would say the hidden one is
    above 100 too. Nor is a value no statistic reads (a survival curve's event
    in a row whose time is NULL): it is in no answer.
    """
    out: dict[str, int] = {}
    for col, by_readers in got.clipped.items():
        out[col] = 0
        for readers, per_group in by_readers.items():
            shown = np.zeros(per_group.shape, dtype=bool)
            for i in readers:
                shown |= got.support[i] >= k
            out[col] += int(np.sum(per_group[shown]))
    return out


__all__: Sequence[str] = ["clipped_shown", "noise_request", "noise_suffices", "withhold"]
