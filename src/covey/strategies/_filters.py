"""What keeps clients out of a round: ``where=``, or a subclass's own ``eligible``."""

from __future__ import annotations

from typing import Any

from covey.core._text import clients
from covey.strategies._checks import clients_there, filter_text, poisson_note
from covey.strategies._strategy import Strategy


def eligibility(strategy: Strategy) -> Any:
    """What keeps clients out of a round: a subclass's ``eligible`` (bound), ``where``, or None.

    A subclass that overrides :meth:`covey.Strategy.eligible` filters the clients
    with it whether or not ``where`` is given.
    """
    if type(strategy).eligible is not Strategy.eligible:
        return strategy.eligible
    return strategy.where


def too_few_to_fit(
    strategy: Strategy,
    round: int,
    count: int,
    eligible: int,
    property_error: str | None,
    waited: float | None = None,
) -> str:
    """Why round ``round`` cannot start: ``count`` clients to train, only ``eligible`` there.

    Under central DP's Poisson draw, ``min_fit_clients`` (which ``count`` then is)
    is no number of trainers: the message says how many clients there are, fewer
    than ``min_fit_clients``, then why that holds the round (:func:`poisson_note`).
    ``property_error``: why a client's properties were not known, if one failed.
    ``waited``: the seconds a deployed round waited for eligible clients (its
    ``wait_timeout``), said with their count.
    """
    filtered = eligibility(strategy)
    where = filtered is not None
    note = poisson_note(strategy, eligible, "that pass where=" if where else "available")
    there = clients_there(eligible, filtered)
    if waited is not None:
        there += f" within the {waited:g} s wait (wait_timeout, --wait-timeout)"
    if note:
        head = f"round {round}: only {there}, fewer than min_fit_clients={strategy.min_fit_clients}"
    else:
        todo = f"let more clients pass {filter_text(filtered)}" if where else "connect more clients"
        if eligible:
            todo = f"lower min_fit_clients to at most {eligible}, or {todo}"
        head = (
            f"round {round}: the strategy wants {clients(count)} to train but only {there} "
            f"(min_fit_clients={strategy.min_fit_clients}); {todo}"
        )
    return head + (f"; {property_error}" if property_error else "") + note


def trains_none(strategy: Strategy, count: int, eligible: int) -> str | None:
    """Why a round trains no client, ``count`` of ``eligible`` being 0 by the fractions; or None.

    ``simulate()`` refuses such a strategy up front, counting every client; under
    ``where=`` (or deployed, with few clients connected) fewer are counted, and
    ``fraction_fit`` of them may round down to 0 with ``min_fit_clients=0``. A
    ``selector``, or a subclass's ``num_fit`` returning 0, chooses so itself.
    """
    if count or strategy.selector is not None or strategy.source("num_fit", ""):
        return None
    there = clients_there(eligible, eligibility(strategy))
    if not eligible:  # no fraction would help
        return f"{there}: no client trains"
    return (
        f"fraction_fit={strategy.fraction_fit} rounds down to no client ({there}) and "
        "min_fit_clients=0: no client trains; raise fraction_fit or min_fit_clients"
    )
