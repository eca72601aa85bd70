"""The options of a query, checked before any site is asked."""

from __future__ import annotations

from collections.abc import Sequence

from covey.analytics import _dp
from covey.analytics._sql import Plan, plan
from covey.analytics._sqltext import QueryError
from covey.core._messages import finite, shown

DISTINCT_BUCKETS = 1 << 16
"""The buckets of ``APPROX_COUNT_DISTINCT`` (linear counting)."""


def check_query(
    sql: str,
    *,
    secure: bool = True,
    epsilon: float | None = None,
    mechanism: str | None = None,
    delta: float = 1e-6,
    precision: float | None = None,
    analyst: object = None,
) -> Plan:
    """Check a query and its options before any site is asked.

    Args:
        sql: The SELECT (see :func:`query`).
        secure: Whether answers go through secure aggregation.
        epsilon: The DP budget of the query, or None.
        mechanism: ``"laplace"`` (None: the default) or ``"gaussian"``; DP only.
        delta: The delta the epsilon is accounted at.
        precision: The absolute precision of quantiles, or None.
        analyst: The :class:`Analyst` charged, or None.

    Returns:
        The query's plan.

    Raises:
        QueryError: The SQL is refused (naming the clause).
        ValueError: An option is not valid.
    """
    p = plan(sql)
    if mechanism is not None and mechanism not in _dp.MECHANISMS:
        raise ValueError(f"mechanism must be one of {_dp.MECHANISMS}, got {mechanism!r}")
    if mechanism is not None and epsilon is None:  # it would be ignored without a word
        raise ValueError(f"mechanism {mechanism!r} applies to a DP query only: give an epsilon too")
    mechanism = "laplace" if mechanism is None else mechanism
    if epsilon is not None and (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float)
        or not (finite(epsilon) and epsilon > 0)  # an int past the largest float too
    ):
        raise ValueError(f"epsilon must be a positive number, got {shown(epsilon)}")
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be a number in (0, 1), got {shown(delta)}")
    if epsilon is not None:
        _dp.check_certifiable(mechanism, float(epsilon), float(delta))
    if not isinstance(secure, bool):  # None or "false" would pass for one or the other
        raise ValueError(f"secure must be True or False, got {secure!r}")
    if precision is not None and (
        isinstance(precision, bool)
        or not isinstance(precision, int | float)
        or not (finite(precision) and precision > 0)
    ):  # found only after the sites answered the first stage
        raise ValueError(f"precision must be None or a positive number, got {shown(precision)}")
    if analyst is not None and not isinstance(analyst, _dp.Analyst):
        raise TypeError(f"analyst must be a covey.analytics.Analyst, got {type(analyst).__name__}")
    if epsilon is not None and any(a.func == "approx_distinct" for a in p.aggregates):
        raise QueryError(
            "APPROX_COUNT_DISTINCT is not answered with DP: noise on each of its "
            f"{DISTINCT_BUCKETS} buckets swamps the count of empty ones it estimates from"
        )
    if epsilon is not None and any(a.func in ("min", "max") for a in p.aggregates):
        raise QueryError("MIN and MAX have no bounded sensitivity: they are never answered with DP")
    if secure and any(a.func in ("min", "max") for a in p.aggregates):
        raise QueryError(
            "MIN and MAX are never answered under secure aggregation (it sums the sites' "
            "answers, and a minimum is no sum); ask without it (query(..., secure=False), "
            "covey query --no-secure), where the server sees each site's MIN and MAX"
        )
    return p


__all__: Sequence[str] = ["DISTINCT_BUCKETS", "check_query"]
