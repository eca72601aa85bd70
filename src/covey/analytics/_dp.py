"""Differential privacy for analytics answers: calibration, noise shares, a site's ledger.

Every release of a query is a vector of sums with a known sensitivity (from
the declared bounds), so noise is Laplace or Gaussian with a multiplier
calibrated by ``dp_accounting`` for the whole query. Each site adds its share
of the noise (the sum of the shares over ``n`` sites has the full scale), so
neither the server nor anyone else sees a total without noise. Each site, and
an analyst across queries, keeps a :class:`Budget`: a :class:`covey.privacy.Ledger`
of those events (so the privacy layer computes every epsilon) and a limit that
refuses an answer or a query the ledger would take past it.

References:
    Dwork, McSherry, Nissim, Smith, "Calibrating Noise to Sensitivity in
    Private Data Analysis", TCC 2006 (the Laplace mechanism).
    Dwork, Kenthapadi, McSherry, Mironov, Naor, "Our Data, Ourselves: Privacy
    via Distributed Noise Generation", EUROCRYPT 2006 (noise shares).
    Mironov, "Rényi Differential Privacy", CSF 2017 (the accountant, as in
    dp-accounting).
"""

from __future__ import annotations

import math
import threading
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Self

import numpy as np

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

from covey.analytics._budget_fit import BudgetRefused, largest_fit
from covey.core._messages import finite, real, shown
from covey.privacy import Ledger
from covey.privacy._accounting import check_target_epsilon, statement

MECHANISMS = ("laplace", "gaussian")


def event(mechanism: str, multiplier: float, releases: int) -> dpa.DpEvent:
    """The ``dp_accounting`` event of ``releases`` releases at noise ``multiplier``."""
    one: dpa.DpEvent
    if mechanism == "laplace":
        one = dpa.LaplaceDpEvent(noise_multiplier=multiplier)
    elif mechanism == "gaussian":
        one = dpa.GaussianDpEvent(noise_multiplier=multiplier)
    else:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    return dpa.SelfComposedDpEvent(one, releases)


def cost(mechanism: str, multiplier: float, releases: int, delta: float) -> float:
    """The epsilon at ``delta`` of ``releases`` releases at noise ``multiplier`` (RDP)."""
    return Ledger().add(event(mechanism, multiplier, releases)).epsilon(delta)


def calibrate(mechanism: str, epsilon: float, delta: float, releases: int) -> float:
    """The noise multiplier that makes ``releases`` releases cost ``epsilon`` at ``delta``.

    Args:
        mechanism: ``"laplace"`` or ``"gaussian"``.
        epsilon: The epsilon the whole query may cost.
        delta: The delta it is accounted at.
        releases: How many vectors of sums the query releases.

    Returns:
        The multiplier: noise scale (Laplace b, Gaussian sigma) per unit of sensitivity.

    The search is ``dp_accounting.calibrate_dp_mechanism`` with the RDP accountant,
    the accountant a :class:`covey.privacy.Ledger` computes its epsilon with.
    """
    check_target_epsilon(epsilon, "epsilon")
    if releases < 1:
        raise ValueError(f"a query releases at least one vector, got {releases}")
    check_certifiable(mechanism, epsilon, delta, releases)
    try:
        multiplier = float(
            dpa.calibrate_dp_mechanism(
                dpa.rdp.RdpAccountant,
                lambda m: event(mechanism, m, releases),
                epsilon,
                delta,
                bracket_interval=dpa.LowerEndpointAndGuess(
                    _LEAST_NOISE, max(1.0, releases / epsilon)
                ),
            )
        )
    except dpa.mechanism_calibration.NoBracketIntervalFoundError:
        most = cost(mechanism, _LEAST_NOISE, releases, delta)
        raise ValueError(
            f"epsilon {epsilon:g} is more than even {mechanism} noise of multiplier "
            f"{_LEAST_NOISE:g} spends on this query ({most:.6g}); give a smaller epsilon"
        ) from None
    reached = cost(mechanism, multiplier, releases, delta)
    if not 0 < reached <= epsilon:  # the search's answer, checked as the ledger will charge it
        raise ValueError(
            f"no {mechanism} noise multiplier found for epsilon {epsilon:g} at delta {delta:g} "
            f"(closest: {multiplier:.6g}, which costs {reached:.6g})"
        )
    return multiplier


_LEAST_NOISE = 1e-4
"""The smallest noise multiplier calibration considers (Gaussian: epsilon ~5.5e7 per release)."""

_MOST_NOISE = 1e5
"""A multiplier whose cost is the accountant's floor for all purposes (within 1e-6 of it)."""


def check_certifiable(mechanism: str, epsilon: float, delta: float, releases: int = 1) -> None:
    """Refuse an ``epsilon`` below the smallest the accountant certifies at ``delta``.

    The RDP accountant certifies no epsilon below a floor set by delta (and its
    largest order), however much noise is added: about 0.0058 at delta 1e-6 for
    one release. Asked for less, a search ends on a multiplier where its
    arithmetic gives up and says 0.

    Raises:
        ValueError: naming the epsilon, the delta and the floor.
    """
    floor = cost(mechanism, _MOST_NOISE, releases, delta)
    if epsilon <= floor:
        raise ValueError(
            f"epsilon {epsilon:g} is below the smallest the accountant certifies for this "
            f"query at delta {delta:g} ({floor:.4g}, with any amount of {mechanism} noise); "
            "give a larger epsilon, or a larger delta"
        )


def noise_share(
    mechanism: str, scale: float, shares: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """One site's share of noise: ``shares`` of them sum to Laplace(scale) or N(0, scale^2).

    A Laplace variable is the difference of two Gamma(1, b) variables, and a
    Gamma(1, b) is the sum of ``n`` Gamma(1/n, b), so each site draws Gamma(1/n, b)
    twice.
    """
    if mechanism == "gaussian":
        return rng.normal(0.0, scale / np.sqrt(shares), size)
    if mechanism == "laplace":
        a = rng.gamma(1.0 / shares, scale, size)
        b = rng.gamma(1.0 / shares, scale, size)
        return a - b
    raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def noise_threshold(mechanism: str, scale: float, terms: int, chance: float) -> float:
    """A level that the total noise on one cell passes with probability at most ``chance``.

    The total is one draw of the full noise (the shares of a secure sum add up
    to it) or, without secure aggregation, the sum of ``terms`` sites' full draws.
    Gaussian: the normal quantile of ``scale * sqrt(terms)``. Laplace: the
    Chernoff bound of a sum of ``terms`` Laplace(scale) variables,
    ``P(S > t) <= exp(-l t) / (1 - l^2 b^2)^terms``, at its best ``l``.

    Example:
        >>> round(noise_threshold("gaussian", 1.0, 1, 0.025), 2)
        1.96
    """
    if not 0 < chance < 1:
        raise ValueError(f"chance must be in (0, 1), got {chance}")
    if mechanism == "gaussian":
        return scale * math.sqrt(terms) * NormalDist().inv_cdf(1.0 - chance)
    lam = np.linspace(1e-3, 1.0 - 1e-3, 999)  # l * b over (0, 1)
    found = (math.log(1.0 / chance) - terms * np.log1p(-(lam**2))) / lam
    return float(scale * np.min(found))


def _mechanisms(ledger: Ledger) -> str:
    """The noise mechanisms a ledger's events use, in words."""
    names: set[str] = set()
    stack = [data for data, _ in ledger.entries]
    while stack:
        data = stack.pop()
        kind = str(data.get("type", ""))
        if kind.endswith("DpEvent") and kind not in ("SelfComposedDpEvent", "ComposedDpEvent"):
            names.add(kind.removesuffix("DpEvent"))
        stack += [v for v in data.values() if isinstance(v, dict)]
        stack += [e for v in data.values() if isinstance(v, list) for e in v if isinstance(e, dict)]
    return " and ".join(sorted(names)) or "none yet"


def recorded_spent(data: dict[str, Any], where: str) -> float | None:
    """The epsilon a kept budget records as spent (None: it records none), checked.

    The events are what counts; the total is checked against them. A total that
    is no finite number >= 0 (NaN, inf, negative: JSON reads ``NaN``) is damage,
    refused by name rather than replaced by the events' sum: what else in the file
    is damaged cannot be known, and the file guards a privacy budget.

    Raises:
        ValueError: naming ``where`` and its ``spent``.
    """
    recorded = data.get("spent")
    if recorded is None:
        return None
    if not real(recorded):
        raise ValueError(f"{where} records spent {recorded!r}, not a number")
    if not (math.isfinite(recorded) and recorded >= 0):
        raise ValueError(
            f"{where} records spent {recorded!r}, not a finite epsilon >= 0: it is damaged; "
            "restore it from a copy"
        )
    return float(recorded)


class Budget:
    """An epsilon limit and a :class:`covey.privacy.Ledger` of what was spent under it.

    Every answer with noise is one ``dp_accounting`` event appended to the ledger;
    the epsilon spent is the ledger's (dp-accounting's RDP accountant), and an
    event that would take it past the limit is refused and not recorded.

    Args:
        epsilon: The limit (None: no limit, only accounted).
        delta: The delta the epsilon is accounted at.
        owner: Who spends it, for messages and the statement (``"the site"``).

    Example:
        >>> budget = Budget(1.0, 1e-6)
        >>> round(budget.charge(event("laplace", 2.0, 1)), 3)
        0.505
        >>> budget.to_json()["ledger"]["entries"][0][1]
        1
    """

    def __init__(self, epsilon: float | None, delta: float, owner: str = "the site") -> None:
        if epsilon is not None and not (finite(epsilon) and epsilon > 0):
            raise ValueError(f"a privacy budget must be a positive number, got {shown(epsilon)}")
        if not (real(delta) and 0.0 < delta < 1.0):
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.epsilon = epsilon
        self.delta = delta
        self.owner = owner
        self._ledger = Ledger()
        self._spent = 0.0
        self._lock = threading.Lock()

    @property
    def ledger(self) -> Ledger:
        """The events recorded so far (an immutable :class:`covey.privacy.Ledger`)."""
        return self._ledger

    @property
    def spent(self) -> float:
        """The epsilon spent so far, at :attr:`delta`."""
        return self._spent

    def charge(self, dp_event: dpa.DpEvent) -> float:
        """Record ``dp_event`` if the budget allows; return the epsilon spent after it.

        Raises:
            PermissionError: if the event would take the total over the budget.
        """
        with self._lock:
            ledger, after = self._after(dp_event, "answer")
            self._ledger, self._spent = ledger, after
            return after

    def check(self, dp_event: dpa.DpEvent) -> float:
        """The epsilon ``dp_event`` would take the total to, recording nothing.

        Raises:
            PermissionError: if that is over the budget.
        """
        with self._lock:
            return self._after(dp_event, "query")[1]

    def _after(self, dp_event: dpa.DpEvent, what: str) -> tuple[Ledger, float]:
        ledger = self._ledger.add(dp_event)
        after = ledger.epsilon(self.delta)
        if self.epsilon is not None and after > self.epsilon * (1 + 1e-9):
            most: float | None = None
            if self._spent >= self.epsilon * (1 - 1e-9):
                said, hint = "is spent", ""
            else:  # "is spent" with two thirds of it left sent analysts looking for a leak
                said, (hint, most) = f"cannot pay for this {what}", self._fit(dp_event)
            raise BudgetRefused(
                f"{self.owner}'s privacy budget {said}: epsilon {self._spent:.4g} of "
                f"{self.epsilon:.4g} used, this {what} would take it to {after:.4g}{hint}",
                None if most is None else (most, self.delta),
            )
        return ledger, after

    def _fit(self, dp_event: dpa.DpEvent) -> tuple[str, float | None]:
        """What a query like ``dp_event`` could ask for within what is left, and its epsilon."""
        limit = float(self.epsilon or 0.0)
        most = largest_fit(self._ledger, dp_event, limit, self.delta)
        if most is None:
            return (
                f"; epsilon {limit - self._spent:.4g} of it is left, which no noise fits a "
                "query of these releases in as the accountant composes it"
            ), None
        return f"; ask with epsilon {most:.3g} or less (at delta {self.delta:g})", most

    def record(self, dp_event: dpa.DpEvent) -> float:
        """Record an event already released, even past the budget; return the epsilon spent.

        For an analyst: a repeated query is free only if every site answers it from
        its cache; one that a site answered afresh (its cache had let it go, or it
        restarted) is recorded after the fact, since its answer is out.
        """
        with self._lock:
            self._ledger = self._ledger.add(dp_event)
            self._spent = self._ledger.epsilon(self.delta)
            return self._spent

    def to_json(self) -> dict[str, Any]:
        """The limit, delta, epsilon spent and the ledger, as a JSON-ready dict."""
        with self._lock:
            return {
                "epsilon": self.epsilon,
                "delta": self.delta,
                "spent": self._spent,
                "ledger": self._ledger.to_json(),
            }

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Rebuild a budget from :meth:`to_json` output, its ledger checked event by event."""
        if not isinstance(data, dict) or not {"epsilon", "delta", "ledger"} <= data.keys():
            raise ValueError("a privacy budget is a dict with 'epsilon', 'delta' and 'ledger'")
        limit, delta = data["epsilon"], data["delta"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)):
            raise ValueError(f"a privacy budget's epsilon must be a number, got {limit!r}")
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise ValueError(f"a privacy budget's delta must be a number, got {delta!r}")
        budget = cls(None if limit is None else float(limit), float(delta))
        budget._ledger = Ledger.from_json(data["ledger"])
        budget._spent = budget._ledger.epsilon(budget.delta)
        return budget

    def statement(self, unit: str = "one record of the site's tables") -> str:
        """The privacy statement of what was spent: mechanism, unit, (epsilon, delta).

        References:
            Ponomareva et al., "How to DP-fy ML: A Practical Guide to Machine
            Learning with Differential Privacy", JAIR 2023, Section 5.3.
        """
        with self._lock:
            ledger, spent = self._ledger, self._spent
        limit = "none" if self.epsilon is None else f"epsilon {self.epsilon:.4g}"
        return statement(
            mechanism=f"{_mechanisms(ledger)} noise on sums, added in shares by the sites",
            unit=unit,
            sampling="none (every record the query selects is read)",
            epsilon=spent,
            delta=self.delta,
            accountant=ledger.accountant,
            rounds=ledger.rounds,
            extra=[f"budget:      {limit}"],
        )


class Analyst(Budget):
    """An analyst's own privacy budget across queries, checked before a query runs.

    Sites guard their own budgets; this one bounds what a single analyst may
    spend over all sites (for example, per study). Each query is one event in
    the analyst's :class:`covey.privacy.Ledger`; a repeated query (same SQL and
    noise settings) is charged once: the sites answer it from their caches.

    Args:
        epsilon: The analyst's total budget (None: no limit, just accounted).
        delta: The delta the epsilon is accounted at.

    Example:
        >>> analyst = Analyst(epsilon=3.0)
        >>> analyst.spent
        0.0
    """

    def __init__(self, epsilon: float | None = None, delta: float = 1e-6) -> None:
        super().__init__(epsilon, delta, owner="the analyst")
        self._charged: set[str] = set()

    def charge_query(self, key: str, dp_event: dpa.DpEvent) -> float | None:
        """Charge a query's event once per ``key``; raise PermissionError over the budget.

        Args:
            key: The query's identity: a second charge under the same key is free.
            dp_event: The ``dp_accounting`` event of the query's releases.

        Returns:
            The epsilon spent after the charge, or None for a repeat (not charged).
        """
        if key in self._charged:
            return None
        spent = self.charge(dp_event)
        self._charged.add(key)
        return spent

    def to_json(self) -> dict[str, Any]:
        """:meth:`Budget.to_json` and the queries already charged (so a repeat stays free)."""
        return {**super().to_json(), "queries": sorted(self._charged)}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Rebuild an analyst's budget from :meth:`to_json` output, to go on spending it.

        Args:
            data: The dict :meth:`to_json` made (its events, ``spent`` and queries).

        Raises:
            ValueError: The data is not an analyst's budget, its recorded ``spent`` is
                no finite number >= 0 (damaged), or its events add up to less than the
                epsilon it records as spent (events are missing).

        Example:
            >>> analyst = Analyst(epsilon=3.0)
            >>> _ = analyst.charge_query("q1", event("laplace", 2.0, 1))
            >>> Analyst.from_json(analyst.to_json()).spent == analyst.spent
            True
        """
        analyst = super().from_json(data)
        recorded = recorded_spent(data, "the analyst's budget")
        # events lost (a truncated file, a bad merge) would reset what was spent
        if recorded is not None and recorded > analyst.spent * (1 + 1e-6) + 1e-6:
            raise ValueError(
                f"the analyst's budget records epsilon {recorded:.6g} spent, but its events "
                f"add up to {analyst.spent:.6g}: events are missing, so the budget would "
                "under-count; restore it from a copy"
            )
        queries = data.get("queries", [])
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ValueError("an analyst's 'queries' must be a list of strings")
        analyst._charged = set(queries)
        return analyst

    def statement(self, unit: str = "one record of any site's tables") -> str:
        """The privacy statement of this analyst's queries so far.

        Args:
            unit: What the guarantee protects, as the statement words it.
        """
        return super().statement(unit)
