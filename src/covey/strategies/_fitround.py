"""A fit exchange of one's own: what it is given and what it hands back to the round loop.

:attr:`covey.Strategy.fit_round` replaces a synchronous round's one fit task
per client with an exchange of its own (secure aggregation's four stages). It
returns a :class:`FitOutcome`; when the strategy gives each client entries of
its own (``on_client_fit_config``), it is also passed ``configs=``, each
sampled client's whole config, and a function that takes no such argument is
refused when the strategy is made. The exchange combines the round's fit
metrics itself (:attr:`FitOutcome.metrics`), so a strategy's ``fit_metrics``
function of its own, never called, is refused beside it; what it returns is
recorded as ``history.json`` reads it back, as the built-in round's is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from covey.aggregate import Contribution
from covey.core._jsonvalues import check_info, read_back
from covey.core._messages import Metrics
from covey.strategies._checks import checked_metrics, name_of
from covey.strategies._metrics import weighted_metrics


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


def check_fit_round(strategy: Any) -> None:
    """Refuse a ``strategy.fit_round`` the strategy's other options would be lost to.

    Raises:
        ValueError: naming the ``fit_metrics`` function of one's own it would never call.
        TypeError: from :func:`takes_configs`, for per-client configs it cannot be passed.
    """
    fit_round = strategy.fit_round
    if fit_round is None:
        return
    if strategy.fit_metrics is not weighted_metrics:
        raise ValueError(
            f"the strategy's fit_metrics {name_of(strategy.fit_metrics)} would never be "
            f"called: fit_round {name_of(fit_round)} combines the round's fit metrics itself "
            "(FitOutcome.metrics); leave fit_metrics out and combine them in the fit_round"
        )
    if strategy.sends_client_configs("fit"):
        takes_configs(fit_round, strategy.source("client_fit_config", "on_client_fit_config"))


def outcome_info(fit_round: Any, info: Any, round: int) -> dict[str, Any]:
    """``FitOutcome.info`` as the round's ``aggregate_info`` keeps it, as history.json reads it.

    Raises:
        TypeError: naming ``fit_round`` and where, as an aggregation step's info is refused
            (:func:`~covey.core._jsonvalues.check_info`).
    """
    check_info(info, f"fit_round {name_of(fit_round)}: FitOutcome", round)
    kept: dict[str, Any] = read_back(dict(info))
    return kept


def outcome_metrics(fit_round: Any, metrics: Any, round: int) -> Metrics:
    """``FitOutcome.metrics`` checked and recorded as the built-in round's (``checked_metrics``)."""
    return checked_metrics(metrics, f"fit_round {name_of(fit_round)}", round)


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
