"""The options every preset takes, and how a preset becomes a :class:`~covey.Strategy`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import numpy as np

from covey.aggregate import Step
from covey.aggregate._flat import written_fraction
from covey.core._messages import Count, plain
from covey.strategies._clients import ClientConfigFn
from covey.strategies._metrics import MetricsFn
from covey.strategies._names import unknown_options
from covey.strategies._strategy import ConfigFn, Selector, Strategy, Where


class StrategyOptions(TypedDict, total=False):
    """The keyword options every preset accepts; see :class:`Strategy` for each.

    Counts and fractions may be NumPy numbers (``np.int64(3)``, ``np.float32(0.1)``),
    which :class:`Strategy` takes as it takes Python ones.
    """

    fraction_fit: float | np.floating[Any]
    min_fit_clients: Count
    fraction_evaluate: float | np.floating[Any]
    min_evaluate_clients: Count
    evaluate_every: Count
    min_available_clients: Count
    on_fit_config: ConfigFn
    on_evaluate_config: ConfigFn
    accept_failures: bool
    fit_metrics: MetricsFn
    evaluate_metrics: MetricsFn
    selector: Selector | None
    where: Where | None
    on_client_fit_config: ClientConfigFn | None
    on_client_evaluate_config: ClientConfigFn | None


def preset(
    name: str, aggregator: Step, options: StrategyOptions, **hyperparameters: Any
) -> Strategy:
    """A :class:`Strategy` named ``name`` with ``aggregator``, the user's ``options``.

    ``hyperparameters`` are the preset's own arguments, kept for :meth:`Strategy.describe`;
    a NumPy number as the Python one (``np.float32(0.1)`` as ``0.1``), which the run's
    record can hold.
    """
    unknown = set(options) - set(StrategyOptions.__annotations__)
    if unknown:
        raise unknown_options(name, unknown, {*StrategyOptions.__annotations__, *hyperparameters})
    kept = {k: plain(written_fraction(v)) for k, v in hyperparameters.items()}
    given: dict[str, Any] = dict(options)  # Strategy checks each (NumPy numbers included)
    return Strategy(aggregator=aggregator, name=name, hyperparameters=kept, **given)


_T = TypeVar("_T")


def named_as_given(preset: str, inner: str, make: Callable[[], _T]) -> _T:
    """``make()``, whose refusal of an argument names it as ``preset``'s, not ``inner``'s.

    A preset builds its step with the step functions (``server_adam``, ``trimmed_mean``),
    whose errors name their own arguments (``server_adam eta``): the caller wrote
    ``FedAdam(eta=...)``, the name the error gives instead.
    """
    try:
        return make()
    except (TypeError, ValueError) as exc:
        said = str(exc)
        if not said.startswith(f"{inner} "):
            raise
        raise type(exc)(f"{preset}{said[len(inner) :]}") from None
