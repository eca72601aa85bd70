"""Privacy accounting with Google's ``dp-accounting``: epsilon, calibration and the ledger.

Every mechanism of a run (update noise, adaptive-clipping bits, local DP, DP-FTRL,
analytics queries) appends its ``dp_accounting`` event to one :class:`Ledger`,
which is plain JSON (saved with the run, restored on resume). The epsilon of a
ledger is whatever ``dp-accounting``'s RDP (default) or PLD accountant says of the
composition of its events: nothing here computes a privacy loss by hand.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from covey.core._messages import Count, finite, plain, plain_count, real, shown
from covey.privacy._abslog import quiet as _quiet
from covey.privacy._pld import PLD_DEFAULT as _PLD_DEFAULT
from covey.privacy._pld import pld_interval

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

Accountant = Literal["rdp", "pld"]
"""Which ``dp-accounting`` accountant: Renyi DP (default) or privacy loss distributions."""


@functools.cache
def _event_types() -> dict[str, type[dpa.DpEvent]]:
    """The event types a ledger may hold; nothing else is ever built from JSON."""
    return {
        cls.__name__: cls
        for cls in (
            dpa.GaussianDpEvent,
            dpa.LaplaceDpEvent,
            dpa.PoissonSampledDpEvent,
            dpa.SelfComposedDpEvent,
            dpa.ComposedDpEvent,
            dpa.SingleEpochTreeAggregationDpEvent,
            dpa.ZCDpEvent,
            dpa.NoOpDpEvent,
            dpa.NonPrivateDpEvent,
        )
    }


_MAX_DEPTH = 16


def event_to_json(event: dpa.DpEvent) -> dict[str, Any]:
    """A ``dp_accounting`` event as a JSON-ready dict ``{"type": ..., field: value}``.

    Args:
        event: The event; a kind a ledger cannot record raises ``TypeError``.
    """
    name = type(event).__name__
    if name not in _event_types():
        raise TypeError(f"cannot record a {name} in a privacy ledger")
    out: dict[str, Any] = {"type": name}
    for attribute in type(event).__attrs_attrs__:
        value = getattr(event, attribute.name)
        if isinstance(value, dpa.DpEvent):
            value = event_to_json(value)
        elif isinstance(value, list | tuple):
            value = [event_to_json(v) if isinstance(v, dpa.DpEvent) else v for v in value]
        out[attribute.name] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and finite(value)  # no bool; no int past a float


def event_from_json(data: Any, _depth: int = 0) -> dpa.DpEvent:
    """Rebuild an event from :func:`event_to_json` output, accepting known event types only.

    Args:
        data: The dict; an unknown type or a malformed field raises ``ValueError``.
    """
    if _depth > _MAX_DEPTH:
        raise ValueError("privacy ledger event nested too deeply")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError(f"a privacy ledger event must be a dict with a 'type', got {data!r}")
    cls = _event_types().get(data["type"])
    if cls is None:
        raise ValueError(f"unknown privacy ledger event type {data['type']!r}")
    kwargs: dict[str, Any] = {}
    for attribute in cls.__attrs_attrs__:
        if attribute.name not in data:
            raise ValueError(f"privacy ledger event {data['type']} lacks {attribute.name!r}")
        value = data[attribute.name]
        if isinstance(value, dict):
            value = event_from_json(value, _depth + 1)
        elif isinstance(value, list):
            value = [event_from_json(v, _depth + 1) if isinstance(v, dict) else v for v in value]
            if not all(isinstance(v, dpa.DpEvent) or _number(v) for v in value):
                raise ValueError(f"privacy ledger event {data['type']}: bad {attribute.name!r}")
        elif not _number(value) or value < 0:  # every parameter of a DP event is 0 or more
            raise ValueError(
                f"privacy ledger event {data['type']}: {attribute.name!r} must be a number, "
                f"0 or more, got {shown(value)}"
            )
        kwargs[attribute.name] = value
    return cls(**kwargs)


@functools.lru_cache(maxsize=64)
def _rdp_curve(event_json: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(orders, rdp)`` of one event as dp-accounting's RDP accountant computes it."""
    event = event_from_json(json.loads(event_json))
    acc = _tree_accountant() if _uses_tree(event) else dpa.rdp.RdpAccountant()
    with _quiet():
        try:
            acc.compose(event)
        except ZeroDivisionError:  # Laplace noise of multiplier 0: no noise, no guarantee
            return tuple(acc._orders), tuple(math.inf for _ in acc._orders)
    return tuple(acc._orders), tuple(acc._rdp)


def _make_accountant(
    accountant: Accountant, event: dpa.DpEvent | None = None
) -> dpa.PrivacyAccountant:
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant()
    if accountant == "pld":
        interval = _PLD_DEFAULT if event is None else pld_interval(event)
        return dpa.pld.PLDAccountant(value_discretization_interval=interval)
    raise ValueError(f"unknown accountant {accountant!r}; choose 'rdp' or 'pld'")


def _tree_accountant() -> dpa.PrivacyAccountant:
    # Tree aggregation is supported by the RDP accountant under "replace special".
    return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_SPECIAL)


def _uses_tree(event: dpa.DpEvent) -> bool:
    if isinstance(event, dpa.SingleEpochTreeAggregationDpEvent):
        return True
    if isinstance(event, dpa.SelfComposedDpEvent | dpa.PoissonSampledDpEvent):
        return _uses_tree(event.event)
    if isinstance(event, dpa.ComposedDpEvent):
        return any(_uses_tree(e) for e in event.events)
    return False


def epsilon_of(event: dpa.DpEvent, delta: float, accountant: Accountant = "rdp") -> float:
    """The epsilon of one (composed) event at ``delta``, as ``dp-accounting`` computes it.

    Tree-aggregation events are accounted with the RDP accountant under the
    "replace special" neighbouring relation, the only one that supports them.
    """
    _check_delta(delta)
    acc = _tree_accountant() if _uses_tree(event) else _make_accountant(accountant, event)
    with _quiet():
        acc.compose(event)
        return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def _pld_epsilon(entries_json: str, delta: float) -> float:
    # A PLD takes seconds to compose; clients (or rounds) holding equal ledgers
    # (LocalDP sites that all took part in every round) compute it once.
    ledger = Ledger(tuple((data, n) for data, n in json.loads(entries_json)), "pld")
    return epsilon_of(ledger.event(), delta, "pld")


def round_event(noise_multiplier: float, sampling_rate: float) -> dpa.DpEvent:
    """One round of the Poisson-subsampled Gaussian mechanism (no sampling when rate is 1)."""
    gaussian = dpa.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1.0:
        return gaussian
    return dpa.PoissonSampledDpEvent(sampling_rate, gaussian)


NOISE_RANGE = (1e-12, 1e12)
"""The noise multipliers covey accounts: beyond them dp-accounting's arithmetic overflows
(a multiplier of 1e160 or 1e-170), and no meaningful guarantee lies outside."""


def check_noise_multiplier(value: float, name: str = "noise_multiplier") -> None:
    """Refuse a noise multiplier that is no number within :data:`NOISE_RANGE`, naming it."""
    low, high = NOISE_RANGE
    if not real(value) or not low <= value <= high:  # NaN too; a bool is no multiplier
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {shown(value)}")


def _check(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> None:
    check_noise_multiplier(noise_multiplier)
    if not real(sampling_rate) or not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling_rate must be a number in (0, 1], got {shown(sampling_rate)}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= MAX_COUNT:
        raise ValueError(f"rounds must be a non-negative int up to 2**63 - 1, got {shown(rounds)}")
    _check_delta(delta)


def _check_delta(delta: float) -> None:
    if not real(delta) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be a number in (0, 1), got {shown(delta)}")


def check_target_epsilon(value: Any, name: str = "target_epsilon") -> None:
    """Refuse a budget that is no positive, finite number (a bool, NaN, infinity), naming it.

    An infinite budget would never stop a run, and a NaN one would stop none
    either (no epsilon compares above it): neither is a budget.
    """
    if not finite(value) or not value > 0.0:  # an int past the largest float too
        raise ValueError(f"{name} must be a number > 0 and finite, got {shown(value)}")


def epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: Count,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """The epsilon of the Poisson-subsampled Gaussian mechanism composed over ``rounds``.

    Args:
        noise_multiplier: ``z``: the noise's standard deviation over the sensitivity (clip).
        sampling_rate: ``q``: the probability that each client takes part in a round.
        rounds: How many rounds.
        delta: The target delta.
        accountant: ``"rdp"`` (default) or ``"pld"``.

    Returns:
        Epsilon at ``delta``, as computed by ``dp-accounting``.

    Example:
        >>> round(epsilon(1.1, 0.1, 100, 1e-5), 2)
        6.62

    References:
        Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
        Gaussian Mechanism", 2019; Doroshenko et al., "Connect the Dots: Tighter
        Discrete Approximations of Privacy Loss Distributions", PETS 2022.
    """
    rounds = plain_count(rounds)
    _check(noise_multiplier, sampling_rate, rounds, delta)
    if accountant not in ("rdp", "pld"):  # refused even when there is nothing to account
        raise ValueError(f"unknown accountant {accountant!r}; choose 'rdp' or 'pld'")
    if rounds == 0:
        return 0.0
    event = dpa.SelfComposedDpEvent(round_event(noise_multiplier, sampling_rate), rounds)
    return epsilon_of(event, delta, accountant)


_Z_MIN = 0.3  # the smallest noise multiplier calibrate searches


def calibrate(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    rounds: Count,
    accountant: Accountant = "rdp",
) -> float:
    """The noise multiplier whose epsilon after ``rounds`` is 99-100% of ``target_epsilon``.

    Args:
        target_epsilon: The budget for the whole run.
        delta: The target delta.
        sampling_rate: The probability that each client takes part in a round.
        rounds: How many rounds the run has.
        accountant: ``"rdp"`` (default) or ``"pld"``.

    Returns:
        ``z`` with ``0.99 * target <= epsilon(z, ...) <= target``.

    Example:
        >>> round(calibrate(3.0, 1e-5, 0.01, 1000), 4)
        0.8646
    """
    check_target_epsilon(target_epsilon)
    rounds = plain_count(rounds)
    _check(1.0, sampling_rate, rounds, delta)
    if rounds < 1:
        raise ValueError("calibrate() needs rounds >= 1")

    def event(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(round_event(z, sampling_rate), rounds)

    make: Any = dpa.rdp.RdpAccountant if accountant == "rdp" else dpa.pld.PLDAccountant
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"unknown accountant {accountant!r}; choose 'rdp' or 'pld'")
    # Coarse first (each PLD evaluation takes a while), finer only if the
    # epsilon reached is not yet within 1% below the target.
    z = reached = math.nan
    for tol in (1e-4, 1e-6):
        with _quiet():
            try:
                z = dpa.calibrate_dp_mechanism(
                    make,
                    event,
                    target_epsilon,
                    delta,
                    bracket_interval=dpa.LowerEndpointAndGuess(_Z_MIN, 1.0),
                    tol=tol,
                )
            except dpa.mechanism_calibration.NoBracketIntervalFoundError:
                floor = epsilon(_Z_MIN, sampling_rate, rounds, delta, accountant)
                raise ValueError(
                    f"target_epsilon {target_epsilon} is more than even noise multiplier "
                    f"{_Z_MIN} spends here ({floor:.6g}); give a smaller target, or pick the "
                    "multiplier yourself"
                ) from None
        z = float(z)
        reached = epsilon(z, sampling_rate, rounds, delta, accountant)
        if 0.99 * target_epsilon <= reached <= target_epsilon:
            return z
    raise ValueError(
        f"no noise multiplier reaches epsilon {target_epsilon} within 1% "
        f"(closest: z={z:.6g} gives {reached:.6g})"
    )


MAX_COUNT = 2**63 - 1
"""The most times a ledger entry may repeat its event: past it, its epsilon is no float."""


def _check_count(count: Any) -> None:
    """Refuse a ledger count that is no int from 1 to :data:`MAX_COUNT`, naming it."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ValueError(
            f"a privacy ledger count must be a positive int up to 2**63 - 1, got {count!r:.60}"
        )


@dataclass(frozen=True)
class Ledger:
    """Every privacy event of a run, in order, with repeats run-length encoded.

    Args:
        entries: ``((event_json, count), ...)``; equal events in a row share one entry.
        accountant: The accountant its epsilon is computed with.
    """

    entries: tuple[tuple[dict[str, Any], int], ...] = ()
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        if self.accountant not in ("rdp", "pld"):  # a misspelt "pdl" would read as RDP
            raise ValueError(f"unknown accountant {self.accountant!r}; choose 'rdp' or 'pld'")

    def add(self, event: dpa.DpEvent, count: int = 1) -> Ledger:
        """A ledger with ``event`` appended ``count`` times.

        Args:
            event: A ``dp_accounting`` event of a kind a ledger records.
            count: How many times the event happened (a positive int).

        Raises:
            ValueError: if ``count`` is not a positive int (a count of 0 or less would
                make a ledger that reads back as damaged, or take spent budget away).
            TypeError: if ``event`` is of a kind a ledger cannot record.
        """
        _check_count(plain(count))
        count = plain(count)
        data = event_to_json(event)
        if self.entries and self.entries[-1][0] == data:
            last, n = self.entries[-1]
            return Ledger((*self.entries[:-1], (last, n + count)), self.accountant)
        return Ledger((*self.entries, (data, count)), self.accountant)

    def event(self) -> dpa.DpEvent:
        """The composition of every event, as one ``dp_accounting`` event."""
        return dpa.ComposedDpEvent(
            [dpa.SelfComposedDpEvent(event_from_json(data), n) for data, n in self.entries]
        )

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at ``delta`` (0 for an empty ledger).

        Args:
            delta: The delta of the ``(epsilon, delta)`` guarantee, in ``(0, 1)``.
        """
        if not self.entries:
            return 0.0
        if self.accountant == "pld" and not _uses_tree(self.event()):
            return _pld_epsilon(json.dumps(self.entries, sort_keys=True), delta)
        # RDP composes by adding each event's RDP curve times its count, as the
        # accountant does for a SelfComposedDpEvent; each distinct event's curve
        # is computed by dp-accounting once and kept, so a run's per-round epsilon
        # costs a sum and a conversion, not a new RDP computation every round.
        _check_delta(delta)
        orders: tuple[float, ...] = ()
        total = None
        for data, n in self.entries:
            orders, curve = _rdp_curve(json.dumps(data, sort_keys=True))
            term = np.asarray(curve) * n
            total = term if total is None else total + term
        if total is None:
            raise RuntimeError("unreachable: a non-empty ledger has a first entry")
        with _quiet():
            eps, _ = dpa.rdp.rdp_privacy_accountant.compute_epsilon(orders, total, delta)
        return float(eps)

    @property
    def rounds(self) -> int:
        """How many events were recorded."""
        return sum(n for _, n in self.entries)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "accountant": self.accountant,
            "entries": [[data, n] for data, n in self.entries],
        }

    @classmethod
    def from_json(cls, data: Any) -> Ledger:
        """Rebuild a ledger from :meth:`to_json` output, checking every entry.

        Args:
            data: The dict; a malformed one raises ``ValueError``.
        """
        if not isinstance(data, dict) or data.get("accountant") not in ("rdp", "pld"):
            raise ValueError("a privacy ledger must be a dict with accountant 'rdp' or 'pld'")
        raw = data.get("entries")
        if not isinstance(raw, list):
            raise ValueError("a privacy ledger's entries must be a list")
        entries: list[tuple[dict[str, Any], int]] = []
        for item in raw:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                raise ValueError(f"a privacy ledger entry must be [event, count], got {item!r}")
            event, count = item
            _check_count(count)
            entries.append((event_to_json(event_from_json(event)), count))
        return cls(tuple(entries), data["accountant"])


def statement(
    *,
    mechanism: str,
    unit: str,
    sampling: str,
    epsilon: float,
    delta: float,
    accountant: Accountant,
    rounds: int,
    extra: Iterable[str] = (),
    relation: str = "add or remove one",
    trained: int | None = None,
) -> str:
    """A privacy statement: what was protected, by which mechanism, at what (epsilon, delta).

    ``relation`` names the neighbouring datasets the guarantee is stated for: the
    one the mechanism is accounted under. ``rounds`` counts the releases charged;
    ``trained``, where it is fewer, the rounds the run trained (a round done again
    after its server stopped unsaved is charged twice): both are then stated.

    References:
        Ponomareva et al., "How to DP-fy ML: A Practical Guide to Machine Learning
        with Differential Privacy", JAIR 2023, Section 5.3.
    """
    lines = [
        "Privacy statement",
        f"  mechanism:   {mechanism}",
        f"  unit:        {unit} ({relation})",
        f"  sampling:    {sampling}",
        *(
            [f"  rounds:      {rounds}"]
            if trained is None or trained >= rounds
            else [
                f"  rounds:      {trained} trained",
                f"  charged:     {rounds} releases (a round done again after its server "
                "stopped unsaved is charged twice)",
            ]
        ),
        f"  accountant:  dp-accounting {accountant.upper()}",
        f"  guarantee:   ({epsilon:.4g}, {delta:.3g})-differential privacy",
        *(f"  {line}" for line in extra),
    ]
    return "\n".join(lines)
