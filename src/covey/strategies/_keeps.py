"""A Multi-Krum ``m`` no round can reach, warned of as a run starts.

``multi_krum(f, m)`` averages the ``m`` updates with the best Krum scores, but
never more than ``n - f`` of a round's ``n``: more would take in the ``f`` it
must leave out. A run whose rounds never hold ``m + f`` updates (too few clients,
too small a sample, a FedBuff buffer) averages its ``n - f`` best every round,
as ``m=None`` does: the ``m`` asked for is silently never used.
"""

from __future__ import annotations

import warnings

from covey.aggregate._base import min_contributions
from covey.aggregate._krum import multi_krum_keeps
from covey.strategies._strategy import Strategy

__all__ = ["warn_of_an_unreached_m"]


def _most_updates(strategy: Strategy, clients: int) -> tuple[int, str]:
    """The most updates a round (an update) of ``strategy`` aggregates, and what bounds it."""
    if strategy.asynchronous:
        return int(strategy.buffer_size or 0), f"buffer_size={strategy.buffer_size}"
    if strategy.selector is not None:
        return clients, ""
    need = min_contributions(strategy.aggregator)
    sampled = max(strategy.client_count("fit", clients), 0 if need is None else need[0])
    most = min(sampled, clients)
    if most == clients:
        return most, ""
    return most, f"fraction_fit={strategy.fraction_fit}, min_fit_clients={strategy.min_fit_clients}"


def warn_of_an_unreached_m(strategy: Strategy, clients: int, limit: str) -> None:
    """Warn if the strategy's Multi-Krum ``m`` exceeds ``n - f`` of every round it can run.

    Args:
        strategy: The strategy.
        clients: The most clients a round can sample from.
        limit: The name of that count (``"num_clients"``, ``"max_clients"``).
    """
    keeps = multi_krum_keeps(strategy.aggregator)
    if keeps is None:
        return
    m, f = keeps
    most, bound = _most_updates(strategy, clients)
    if m <= most - f:
        return
    bounds = ", ".join(part for part in (f"{limit}={clients}", bound) if part)
    warnings.warn(
        f"{strategy.name}: m={m} is never used: a round of n updates averages at most "
        f"n - f of them, and a round here has at most {most} ({bounds}), so each averages "
        f"its {max(most - f, 0)} best, as m=None does; lower m to at most "
        f"{max(most - f, 1)}, or leave it out",
        UserWarning,
        stacklevel=3,
    )
