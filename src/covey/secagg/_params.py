"""Degree and threshold of the SecAgg+ communication graph, derived from a threat model.

SecAgg+ (Bell et al. 2020) has each client share keys and masks only with its
neighbours in a random regular graph of logarithmic degree. The degree ``k``
and the Shamir threshold ``t`` follow from the threat model, by the method of
Google's production implementation: the smallest even ``k`` such that

* the graph of honest survivors stays connected except with probability
  ``2^-(sigma+1)`` (a union bound over pairs of gaps of ``k/2`` consecutive bad
  clients on the ring of the Harary graph), and
* some ``t`` separates the two tails: a client has ``t`` or more corrupt
  neighbours with probability at most ``2^-(sigma+1)/n`` (secrecy), and fewer than
  ``t`` surviving neighbours with probability below ``2^-eta/n`` (correctness),

where neighbour counts are hypergeometric (the ``k`` neighbours are a uniformly
random ``k``-subset of the ``n`` clients). ``sigma = 40``, ``eta = 20``.
For a semi-malicious server the threshold must also exceed half the
neighbourhood plus the corrupt ones, ``t1 <- ceil((t1 + k - 1.25) / 2)``.

References:
    Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server Aggregation
    with (Poly)Logarithmic Overhead", CCS 2020. Bonawitz et al., "Practical
    Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from covey.core._messages import plain
from covey.core._text import clients

MAX_CLIENTS = 1_000_000
"""The most clients a run of the protocol can have (its ids and graphs are checked against it)."""

SECURITY_BITS = 40
CORRECTNESS_BITS = 20
_EPS = 1e-14  # guards floor/ceil of rate * n against rounding in the insecure direction

Adversary = Literal["curious", "semi-malicious"]


@dataclass(frozen=True)
class ThreatModel:
    """What secure aggregation must withstand.

    Args:
        corrupt_rate: Fraction of clients that may collude with the server.
        dropout_rate: Fraction of a round's clients that may drop out.
        adversary: ``"curious"`` (the server follows the protocol and tries to
            learn from what it sees) or ``"semi-malicious"`` (it may also lie
            about who dropped out; clients then sign their keys).

    Example:
        >>> harary_parameters(1000, ThreatModel(0.05, 0.05))
        (30, 17)
    """

    corrupt_rate: float = 0.05
    dropout_rate: float = 0.05
    adversary: Adversary = "curious"

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "dropout_rate"):
            value = plain(getattr(self, name))
            object.__setattr__(self, name, value)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.adversary not in ("curious", "semi-malicious"):
            raise ValueError(
                f"adversary must be 'curious' or 'semi-malicious', got {self.adversary!r}"
            )
        bad = self.corrupt_rate + (2 if self.adversary == "semi-malicious" else 1) * (
            self.dropout_rate
        )
        if bad > 0.9:
            weight = "2*" if self.adversary != "curious" else ""
            raise ValueError(
                f"infeasible threat model: corrupt_rate + {weight}dropout_rate = {bad:.3g} "
                "exceeds 0.9"
            )


def _log_pmf(x: int, total: int, marked: int, drawn: int) -> float:
    """The log of P[X = x] for X ~ Hypergeometric(total, marked, drawn); -inf off the support."""
    if x < max(0, drawn - (total - marked)) or x > min(drawn, marked):
        return -math.inf
    return _log_comb(marked, x) + _log_comb(total - marked, drawn - x) - _log_comb(total, drawn)


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _pmfs(total: int, marked: int, drawn: int) -> list[float]:
    """P[X = x] for x = 0..drawn."""
    return [math.exp(_log_pmf(x, total, marked, drawn)) for x in range(drawn + 1)]


def _log_disconnected(n: int, k: int, bad: int) -> float:
    """Union bound (log) on the honest survivors of a random Harary graph being disconnected.

    Cutting the ring needs two disjoint runs of ``k/2`` consecutive bad clients:
    about ``n (n - k - 1) / 2`` placements, each all-bad with probability
    ``bad! (n - k)! / (n! (bad - k)!)``.
    """
    if k > bad:
        return -math.inf
    return (
        math.log(n)
        + math.log(n - k - 1)
        - math.log(2)
        + math.lgamma(bad + 1)
        + math.lgamma(n - k + 1)
        - math.lgamma(n + 1)
        - math.lgamma(bad - k + 1)
    )


def _threshold_for(n: int, k: int, threat: ThreatModel) -> int | None:
    """A Shamir threshold that makes degree ``k`` secure and correct, or None."""
    per_event = SECURITY_BITS + 1
    if _log_disconnected(n, k, _bad(n, threat)) >= -per_event * math.log(2):
        return None
    corrupt = math.floor((threat.corrupt_rate + _EPS) * n)
    surviving = math.ceil((1 - threat.dropout_rate - _EPS) * n)
    secrecy = 2.0**-per_event / n
    correct = 2.0**-CORRECTNESS_BITS / n
    # t1: the least a with P[corrupt neighbours > a] < secrecy (upper tail summed
    # from the top, so tiny probabilities keep their precision).
    pmf = _pmfs(n, corrupt, k)
    t1, tail = k, 0.0
    for a in range(k - 1, -1, -1):
        tail += pmf[a + 1]
        if tail >= secrecy:
            break
        t1 = a
    # t2: the least r with P[surviving neighbours <= r] >= correct; t <= t2 keeps
    # P[fewer than t survivors] below the correctness bound.
    pmf = _pmfs(n, surviving, k)
    t2, cdf = k, 0.0
    for r in range(-1, k + 1):
        if cdf >= correct:
            t2 = r
            break
        cdf += pmf[r + 1]
    if threat.adversary == "semi-malicious":
        t1 = math.ceil((t1 + k - 1.25) / 2)
    if t2 <= t1:
        return None
    return max(t1 + 1, 2)


def _bad(n: int, threat: ThreatModel) -> int:
    return math.floor((threat.corrupt_rate + _EPS) * n) + math.floor(
        (threat.dropout_rate + _EPS) * n
    )


def harary_parameters(n: int, threat: ThreatModel | None = None) -> tuple[int, int]:
    """The SecAgg+ degree (neighbours per client, even) and Shamir threshold for ``n`` clients.

    Args:
        n: Clients in the round (at most 1,000,000).
        threat: The threat model (default: 5% corrupt, 5% dropout, curious server).

    Returns:
        ``(degree, threshold)``; each client also holds a share of its own secrets,
        so ``threshold <= degree + 1``.

    Raises:
        ValueError: If no degree below ``n - 1`` is secure (use the complete graph).

    Example:
        >>> harary_parameters(100)
        (12, 6)
    """
    threat = threat or ThreatModel()
    if not 1 <= n <= MAX_CLIENTS:
        raise ValueError(f"the number of clients must be in [1, {MAX_CLIENTS}], got {n}")
    for k in range(2, n - 1, 2):
        t = _threshold_for(n, k, threat)
        if t is not None:
            return k, t
    raise ValueError(
        f"no SecAgg+ degree below {n - 1} is secure for {n} clients under {threat}; "
        "use the complete graph"
    )


def complete_threshold(n: int, threat: ThreatModel | None = None) -> int:
    """The Shamir threshold of full SecAgg (every client a neighbour of every other).

    The least ``t`` that survives the expected dropouts, ``ceil((1 - dropout) n)``
    survivors, must exceed the corrupt clients (curious server) or half the clients
    plus the corrupt ones (semi-malicious server); this returns the least secure
    ``t`` and raises when it exceeds the survivors the threat model promises.

    Args:
        n: The number of clients in the round.
        threat: The dropout and corruption rates and the adversary (None: the
            default :class:`ThreatModel`).

    Example:
        >>> complete_threshold(20)
        2
    """
    threat = threat or ThreatModel()
    corrupt = math.ceil(threat.corrupt_rate * n)
    least = corrupt + 1 if threat.adversary == "curious" else math.ceil((n + corrupt) / 2) + 1
    least = max(least, 2)
    survivors = math.floor((1 - threat.dropout_rate) * n + _EPS)
    if least > survivors or least > n:
        raise ValueError(
            f"full SecAgg with {n} clients cannot be both secure and correct under {threat}: "
            f"it needs threshold >= {least} but only {clients(survivors)} "
            f"{'is' if survivors == 1 else 'are'} expected to survive"
        )
    return least


@dataclass(frozen=True)
class GraphPlan:
    """The shape of one round's communication graph.

    Args:
        n: Clients in the round.
        degree: Neighbours per client (``n - 1`` for the complete graph).
        threshold: Shares needed to reconstruct a client's secrets.
        complete: Whether the graph is complete (plain SecAgg).
    """

    n: int
    degree: int
    threshold: int
    complete: bool


SMALL = 30
"""Up to this many clients the complete graph is the default: its cost is negligible
there, and it survives any dropout pattern the threshold allows, where a sparse
graph can lose a client whose few neighbours all dropped."""


def plan(n: int, threat: ThreatModel | None = None, *, complete: bool | None = None) -> GraphPlan:
    """Choose the graph for ``n`` clients: complete up to :data:`SMALL` clients, else SecAgg+.

    A sparse (Harary) graph is used when one is secure for the threat model;
    otherwise the complete graph (plain SecAgg).

    Args:
        n: Clients in the round (>= 2).
        threat: The threat model.
        complete: Force the complete graph (True) or SecAgg+ (False); None chooses.

    Returns:
        The :class:`GraphPlan`.
    """
    threat = threat or ThreatModel()
    if n < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {n}")
    if n > MAX_CLIENTS:  # the complete graph of as many would be n * (n - 1) edges
        raise ValueError(
            f"secure aggregation takes at most {MAX_CLIENTS:,} clients in a round, got {n:,}"
        )
    if complete is None and n <= SMALL:
        complete = True
    if complete is not True:
        try:
            k, t = harary_parameters(n, threat)
        except ValueError:
            if complete is False:
                raise
        else:
            return GraphPlan(n, k, t, False)
    return GraphPlan(n, n - 1, complete_threshold(n, threat), True)
