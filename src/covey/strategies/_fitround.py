"""A fit exchange of one's own: what it is given and what it hands back to the round loop.

:attr:`covey.Strategy.fit_round` replaces a synchronous round's one fit task
per client with an exchange of its own (secure aggregation's four stages). It
returns a :class:`FitOutcome`; when the strategy gives each client entries of
its own (``on_client_fit_config``), it is also passed ``configs=``, each
sampled client's whole config, and a function that takes no such argument is
refused when the strategy is made.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from covey.aggregate import Contribution
from covey.strategies._checks import name_of


class FitOutcome(NamedTuple):
    """What a custom fit exchange (:attr:`Strategy.fit_round`) hands back to the round loop.

    Attributes:
        contributions: Fed to the aggregator in order (e.g. one secure sum).
        participants: The clients whose updates are in the contributions.
        num_examples: Their total number of examples.
        metrics: The round's combined fit metrics.
        failures: ``(cid, why)`` for each client that failed.
        info: What to record in the round's ``aggregate_info``.
        error: Why the round must stop (the run then stops with this reason).
        warnings: ``(cid, what)`` for each thing a client did that the round got
            past (a share it revealed that the exchange refused): the loop logs
            each, naming the client.
        refused: ``(cid, why)`` for each of ``failures`` that the exchange refused
            a reply of (not the client's own failure): the loop tells that client
            ``why`` where its transport can (a deployed site reads it in its log).
    """

    contributions: tuple[Contribution, ...] = ()
    participants: tuple[int, ...] = ()
    num_examples: int = 0
    metrics: Mapping[str, Any] = MappingProxyType({})
    failures: tuple[tuple[int, str], ...] = ()
    info: Mapping[str, Any] = MappingProxyType({})
    error: str | None = None
    warnings: tuple[tuple[int, str], ...] = ()
    refused: tuple[tuple[int, str], ...] = ()


FitRound = Callable[[Any, Sequence[int], Any, "float | None"], FitOutcome]
"""``(transport, cids, fit_task, timeout) -> FitOutcome``: a fit exchange other than one task
per client (secure aggregation: :func:`covey.secagg.secure`). When the strategy gives clients
configs of their own it is called with ``configs=`` too: each sampled client's whole config."""


def takes_configs(fit_round: Callable[..., Any], what: str) -> None:
    """Refuse a ``fit_round`` that cannot be passed ``configs=`` (per-client configs).

    Raises:
        TypeError: naming ``fit_round`` and ``what`` (who gives per-client entries).
    """
    try:
        params = inspect.signature(fit_round).parameters.values()
    except (TypeError, ValueError):  # a signature that cannot be read decides itself
        return
    if any(
        p.kind is p.VAR_KEYWORD or (p.name == "configs" and p.kind is not p.POSITIONAL_ONLY)
        for p in params
    ):
        return
    raise TypeError(
        f"fit_round {name_of(fit_round)} takes no configs= argument, so the per-client "
        f"configs of {what} could not reach its clients: accept configs: "
        "Mapping[int, dict] | None = None (each sampled client's whole config)"
    )
