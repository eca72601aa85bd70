"""Running a round again when the clients it lost were lost to their connections.

A deployed round that falls short of ``min_fit_clients`` stops the run. When
every failure that cut it short is a lost connection (a client disconnected,
fell silent past the heartbeat limit, was replaced by its own new
connection, or was shut out as its certificate was revoked), the clients'
updates were not at fault: a network outage or a pause of
the server's process (a suspended virtual machine, a debugger) drops them all
at once, and they reconnect seconds later. With ``serve(round_retries=N)``
such a round is run again, from the same model, once enough clients are back
(waiting up to ``wait_timeout`` as before any round), at most ``N`` times;
each attempt given up is listed in the round's ``aggregate_info["retried"]``.
Any other failure (a client's error, a refused update, an aggregation that
fails) stops the run as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from covey.core._history import Failure, RoundRecord
from covey.server._base import FederationError
from covey.server._refusednote import refusal_mark, refused_note

if TYPE_CHECKING:
    from covey.server._sync import RoundLoop

__all__ = [
    "DEPLOYED_TIMEOUT",
    "RETRY_HINT",
    "SIMULATED_TIMEOUT",
    "RoundRetries",
    "failures_said",
    "refusal_mark",
    "refused_note",
    "retry_hint",
    "run_retried",
    "shortfall",
    "timeout_hint",
]

logger = logging.getLogger("covey")


@dataclass(frozen=True)
class RoundRetries:
    """How often a round cut short by lost connections only is run again.

    Args:
        times: The most times one round is run again (0: never).
        lost: Whether a failure is a lost connection (the transport's words for it).
    """

    times: int
    lost: Callable[[Failure], bool]


def shortfall(exc: FederationError) -> FederationError:
    """``exc``, marked as the end of a round that fell short of its clients' replies."""
    exc.shortfall = True  # type: ignore[attr-defined]
    return exc


def run_retried(loop: RoundLoop, rnd: int, retries: RoundRetries) -> RoundRecord:
    """Run round ``rnd`` of ``loop``; again, up to ``retries.times``, if lost connections cut it.

    Raises:
        FederationError: the round fell short for another reason, or once more than
            ``retries.times`` times (the history keeps the last attempt, as without
            retries).
    """
    given_up: list[str] = []
    while True:
        try:
            return loop.run_round(rnd, retried=given_up)
        except FederationError as exc:
            record = loop.history.rounds[-1] if loop.history.rounds else None
            if (
                len(given_up) >= retries.times
                or not getattr(exc, "shortfall", False)
                or record is None
                or record.round != rnd
                or not record.fit_failures
                or not all(retries.lost(f) for f in record.fit_failures)
            ):
                raise
            loop.history.rounds.pop()  # this attempt is no round of the run
            loop.history.stopped_reason = None  # nor its end
            loop._logged.clear()  # the attempt's failures count apart from the next one's
            given_up.append(str(exc))
            logger.warning(
                "%s; only lost connections cut it short: running round %d again once "
                "enough clients are back (retry %d of %d)",
                exc,
                rnd,
                len(given_up),
                retries.times,
            )


RETRY_HINT = (
    "only lost connections cut this round short (a network outage, the server's process "
    "paused?): `--round-retries N` (serve(round_retries=N)) runs such a round again once "
    "enough clients are back"
)
"""The note a run stopped by lost connections alone gets, when it does not retry."""


def retry_hint(exc: BaseException, loop: object) -> None:
    """Add :data:`RETRY_HINT` to ``exc`` if lost connections alone cut its round short."""
    from covey.server._sync import RoundLoop  # the loop's module imports this one

    if not isinstance(loop, RoundLoop) or not getattr(exc, "shortfall", False):
        return
    retries, rounds = loop.retries, loop.history.rounds
    if retries is None or retries.times > 0 or not rounds:
        return
    failures = rounds[-1].fit_failures
    if failures and all(retries.lost(f) for f in failures):
        exc.add_note(RETRY_HINT)


def failures_said(failures: list[Failure], who: Callable[[int], str]) -> str:
    """A round's failures in one line; clients that failed alike share one entry.

    A client bug fails every client with the same words: said once, not once a client.
    """
    groups: dict[str, list[str]] = {}
    for failure in failures:
        groups.setdefault(failure.error, []).append(who(failure.cid))
    said = []
    for error, names in list(groups.items())[:5]:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        said.append(f"{', '.join(names[:5])}{more}: {error}")
    return "; ".join(said) + (" ..." if len(groups) > 5 else "")


_LATE = ("straggler:", "no reply in time", "busy:")
"""How a failure that missed the round's deadline starts (simulated, deployed, still busy)."""


DEPLOYED_TIMEOUT = "round_timeout / --round-timeout"
"""The round timeout's settings of a deployed server: ``serve(round_timeout=...)`` or the flag."""
SIMULATED_TIMEOUT = "round_timeout"
"""The round timeout's setting of a simulation: ``simulate(round_timeout=...)``."""


def timeout_hint(
    failures: list[Failure], timeout: float | None, setting: str = DEPLOYED_TIMEOUT
) -> str:
    """What to raise when every one of ``failures`` came to no reply within ``timeout`` s.

    A deployed client still busy past its earlier task's deadline is given none
    (``busy:``): that too is a reply the timeout did not wait for. Empty without a
    timeout, without failures, or when any failure is another one. ``setting`` names
    where the user sets the timeout (:data:`SIMULATED_TIMEOUT` in a simulation).
    """
    if timeout is None or not failures:
        return ""
    if not all(f.error.startswith(("no reply in time", "busy:")) for f in failures):
        return ""
    return (
        f"no client replied within the round timeout of {timeout:g} s: allow more time ({setting})"
    )


def deadline_hint(
    failures: list[Failure],
    sampled: int,
    min_fit_clients: int,
    timeout: float | None = None,
    setting: str = DEPLOYED_TIMEOUT,
) -> str:
    """What to set when a round that sampled no more than ``min_fit_clients`` lost a straggler.

    Such a round needs every sampled client's reply, so one client past the
    deadline stops the run (as documented); ``round_retries`` does not apply (it
    runs again only rounds that lost connections alone). A round that sampled more
    gets :func:`timeout_hint` of its ``timeout``. Empty when no failure missed the
    deadline. ``setting`` names where the round timeout is set (see :func:`timeout_hint`).
    """
    late = [f.error for f in failures if f.error.startswith(_LATE)]
    if not late:
        return ""
    if sampled > min_fit_clients:
        return timeout_hint(failures, timeout, setting)
    more = "round_deadline" if any(e.startswith("straggler:") for e in late) else setting
    return (
        "a round sampling no more than min_fit_clients stops at one straggler: sample more "
        f"clients (fraction_fit), lower min_fit_clients or allow more time ({more})"
    )
