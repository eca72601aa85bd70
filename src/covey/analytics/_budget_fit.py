"""The largest epsilon a query refused for its budget could have asked for and been paid.

A budget composes its events with the RDP accountant (:class:`covey.privacy.Ledger`),
so what is left is not the limit minus the epsilon spent: a query of ``n``
releases fits when the ledger with its event added stays within the limit. The
noise multiplier that just fits is found by bisection over that same ledger
(more noise never costs more), and the epsilon shown is what a query of those
releases at that multiplier costs, rounded down to three significant digits and
checked by calibrating a query to it as the server would. Each site says so at
its own delta, in a field of its refusal (:func:`refusal`; a site of a version
before that field said it in its text alone, which is read for it);
:func:`what_fits` turns the refusing sites' figures into the one they all pay at
the query's delta.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covey.privacy import Ledger

_STEPS = 48  # bisection steps over log(multiplier): a relative precision of about 1e-12


def _mechanism(dp_event: Any) -> tuple[str, float, int] | None:
    """``(mechanism, multiplier, releases)`` of a query's event, or None if not one."""
    inner, releases = getattr(dp_event, "event", None), getattr(dp_event, "count", None)
    name = type(inner).__name__
    multiplier = getattr(inner, "noise_multiplier", None)
    if name not in ("LaplaceDpEvent", "GaussianDpEvent") or not isinstance(releases, int):
        return None
    if not isinstance(multiplier, int | float):
        return None
    return ("laplace" if name.startswith("Laplace") else "gaussian"), float(multiplier), releases


def largest_fit(ledger: Ledger, dp_event: Any, limit: float, delta: float) -> float | None:
    """The largest epsilon at ``delta`` a query like ``dp_event`` may ask for within ``limit``.

    None when no noise fits (what is spent already reaches the limit as the
    accountant composes) or ``dp_event`` is no query's event.
    """
    from covey.analytics import _dp

    found = _mechanism(dp_event)
    if found is None:
        return None
    mechanism, refused, releases = found

    def fits(multiplier: float) -> bool:
        event = _dp.event(mechanism, multiplier, releases)
        return bool(ledger.add(event).epsilon(delta) <= limit * (1 + 1e-9))

    most = _dp._MOST_NOISE
    if refused >= most or not fits(most):
        return None
    low, high = math.log(refused), math.log(most)  # low does not fit, high does
    for _ in range(_STEPS):
        mid = (low + high) / 2
        low, high = (low, mid) if fits(math.exp(mid)) else (mid, high)
    epsilon = _dp.cost(mechanism, math.exp(high), releases, delta)
    for _ in range(8):  # rounded down, and checked as the server calibrates it
        digits = 2 - math.floor(math.log10(epsilon))
        shown = math.floor(epsilon * 10**digits) / 10**digits
        try:
            if shown > 0 and fits(_dp.calibrate(mechanism, shown, delta, releases)):
                return float(shown)
        except ValueError:
            return None
        epsilon *= 0.99
    return None


# how a site of a version before the ``fits`` field said it: in its refusal's text alone
_HINT = re.compile(r"ask with epsilon ([0-9.eE+-]+) or less \(at delta ([0-9.eE+-]+)\)")


class BudgetRefused(PermissionError):
    """A budget's refusal of an event, with what fits: ``(epsilon, delta)`` or None.

    ``fits`` is the largest epsilon at the budget's delta a query of the same
    releases may ask for (None when the budget is spent, or no noise fits).
    """

    def __init__(self, message: str, fits: tuple[float, float] | None) -> None:
        super().__init__(message)
        self.fits = fits


def refusal(exc: Exception) -> dict[str, Any]:
    """A refusal as a site sends it: its text, and under ``fits`` what fits its budget.

    ``fits`` is ``{"epsilon": ..., "delta": ...}``, or None for a refusal that is no
    budget's or where nothing fits; it is always there, so that the server tells a
    site that says nothing fits from one of a version that said it only in the text.
    """
    fits = getattr(exc, "fits", None) if isinstance(exc, BudgetRefused) else None
    told = None if fits is None else {"epsilon": float(fits[0]), "delta": float(fits[1])}
    return {"refused": str(exc), "fits": told}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _told(entry: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(epsilon, delta)`` a refusal says fits its budget, or None."""
    if "fits" not in entry:  # a site of an older version says it in its text alone
        hint = _HINT.search(str(entry.get("refused", "")))
        return None if hint is None else (float(hint.group(1)), float(hint.group(2)))
    fits = entry["fits"]
    if not isinstance(fits, Mapping):
        return None
    epsilon, delta = _number(fits.get("epsilon")), _number(fits.get("delta"))
    if epsilon is None or delta is None or epsilon <= 0 or not 0 < delta < 1:
        return None
    return epsilon, delta


def _round_down(epsilon: float) -> float:
    digits = 2 - math.floor(math.log10(epsilon))
    return float(math.floor(epsilon * 10**digits) / 10**digits)


def what_fits(
    mechanism: str,
    releases: int,
    delta: float,
    refusals: Sequence[Mapping[str, Any]],
    who: str = "every site pays",
) -> str:
    """The largest epsilon at the query's ``delta`` every budget refusing in ``refusals`` pays.

    Each refusal (as :func:`refusal` makes it) says what its budget pays at its own
    delta; the query is calibrated at ``delta``, so the noise each one's figure
    stands for is found, and the most of it (more noise never costs more) is what
    all of them pay. '' when one refuses for anything else, or its budget is spent.
    """
    from covey.analytics import _dp

    told = [_told(r) for r in refusals]
    if not told or any(t is None for t in told):
        return ""
    try:
        noise = max(
            _dp.calibrate(mechanism, epsilon, at, releases) for epsilon, at in filter(None, told)
        )
        epsilon = _dp.cost(mechanism, noise, releases, delta)
        for _ in range(8):  # rounded down, and checked as the query calibrates it
            shown = _round_down(epsilon)
            if shown > 0 and _dp.calibrate(mechanism, shown, delta, releases) >= noise:
                return f"; {who} for epsilon {shown:.3g} or less at this query's delta {delta:g}"
            epsilon *= 0.99
    except (ValueError, ArithmeticError):
        return ""
    return ""


def charge_told(analyst: Any, key: str, dp_event: Any, fits: Callable[..., str]) -> Any:
    """``analyst.charge_query(key, dp_event)``, a refusal told what fits at the query's delta."""
    try:
        return analyst.charge_query(key, dp_event)
    except PermissionError as err:
        raise PermissionError(f"{err}{fits([refusal(err)], who='it pays')}") from None
