"""Differential privacy for analytics answers: calibration, noise shares, a site's ledger.

Every release of a query is a vector of sums with a known sensitivity (from
the declared bounds), so noise is Laplace or Gaussian with a multiplier
calibrated by ``dp_accounting`` for the whole query. Each site adds its share
of the noise (the sum of the shares over ``n`` sites has the full scale), so
neither the server nor anyone else sees a total without noise. Each site keeps
its own ledger of DP events and refuses a query that would exceed its budget.

References:
    Dwork, McSherry, Nissim, Smith, "Calibrating Noise to Sensitivity in
    Private Data Analysis", TCC 2006 (the Laplace mechanism).
    Dwork, Kenthapadi, McSherry, Mironov, Naor, "Our Data, Ourselves: Privacy
    via Distributed Noise Generation", EUROCRYPT 2006 (noise shares).
    Mironov, "Rényi Differential Privacy", CSF 2017 (the accountant, as in
    dp-accounting).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

MECHANISMS = ("laplace", "gaussian")


def _dpa() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dp_accounting

    return dp_accounting


def event(mechanism: str, multiplier: float, releases: int) -> Any:
    """The ``dp_accounting`` event of ``releases`` releases at noise ``multiplier``."""
    dpa = _dpa()
    if mechanism == "laplace":
        one = dpa.LaplaceDpEvent(noise_multiplier=multiplier)
    elif mechanism == "gaussian":
        one = dpa.GaussianDpEvent(noise_multiplier=multiplier)
    else:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    return dpa.SelfComposedDpEvent(one, releases)


def epsilon_of(events: list[Any], delta: float) -> float:
    """The epsilon at ``delta`` of composing ``events`` (RDP accounting, dp-accounting)."""
    if not events:
        return 0.0
    dpa = _dpa()
    accountant = dpa.rdp.RdpAccountant()
    accountant.compose(dpa.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def calibrate(mechanism: str, epsilon: float, delta: float, releases: int) -> float:
    """The noise multiplier that makes ``releases`` releases cost ``epsilon`` at ``delta``.

    Args:
        mechanism: ``"laplace"`` or ``"gaussian"``.
        epsilon: The epsilon the whole query may cost.
        delta: The delta it is accounted at.
        releases: How many vectors of sums the query releases.

    Returns:
        The multiplier: noise scale (Laplace b, Gaussian sigma) per unit of sensitivity.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if releases < 1:
        raise ValueError(f"a query releases at least one vector, got {releases}")
    dpa = _dpa()
    return float(
        dpa.calibrate_dp_mechanism(
            dpa.rdp.RdpAccountant,
            lambda m: event(mechanism, m, releases),
            epsilon,
            delta,
            bracket_interval=dpa.LowerEndpointAndGuess(
                0.01 if mechanism == "laplace" else 0.25, max(1.0, releases / epsilon)
            ),
        )
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


class Ledger:
    """A site's record of what its DP answers have cost, checked against its budget.

    Args:
        budget: The total epsilon the site spends (None: no limit).
        delta: The delta the epsilon is accounted at.
    """

    def __init__(self, budget: float | None, delta: float) -> None:
        self.budget = budget
        self.delta = delta
        self._events: list[Any] = []
        self._lock = threading.Lock()

    @property
    def spent(self) -> float:
        """The epsilon spent so far."""
        return epsilon_of(list(self._events), self.delta)

    def charge(self, dp_event: Any) -> float:
        """Record ``dp_event`` if the budget allows; return the epsilon spent after it.

        Raises:
            PermissionError: if the event would take the total over the budget.
        """
        with self._lock:
            after = epsilon_of([*self._events, dp_event], self.delta)
            if self.budget is not None and after > self.budget * (1 + 1e-9):
                before = epsilon_of(list(self._events), self.delta)
                raise PermissionError(
                    f"the site's privacy budget is spent: epsilon {before:.4g} of "
                    f"{self.budget:.4g} used, this answer would take it to {after:.4g}"
                )
            self._events.append(dp_event)
            return after


class Analyst:
    """An analyst's own privacy budget across queries, checked before a query runs.

    Sites guard their own budgets; this one bounds what a single analyst may
    spend over all sites (for example, per study). A repeated query (same SQL
    and noise settings) is charged once: the sites answer it from their caches.

    Args:
        epsilon: The analyst's total budget (None: no limit, just accounted).
        delta: The delta the epsilon is accounted at.

    Example:
        >>> analyst = Analyst(epsilon=3.0)
        >>> analyst.spent
        0.0
    """

    def __init__(self, epsilon: float | None = None, delta: float = 1e-6) -> None:
        self.ledger = Ledger(epsilon, delta)
        self._charged: set[str] = set()

    @property
    def spent(self) -> float:
        """The epsilon this analyst has spent."""
        return self.ledger.spent

    def charge(self, key: str, dp_event: Any) -> float:
        """Charge a query's event once per ``key``; raise PermissionError over the budget."""
        if key in self._charged:
            return self.ledger.spent
        spent = self.ledger.charge(dp_event)
        self._charged.add(key)
        return spent
