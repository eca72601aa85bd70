"""FedBuff, the asynchronous preset: buffered updates weighted by their staleness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Unpack

from covey.aggregate import (
    Step,
    chain,
    mean,
    server_sgd,
    staleness_weight,
    weighted_mean,
)
from covey.aggregate._clip import polynomial_staleness
from covey.aggregate._flat import check_switch
from covey.core._messages import plain
from covey.strategies._checks import name_of
from covey.strategies._options import StrategyOptions, preset
from covey.strategies._strategy import Strategy


def FedBuff(
    *,
    buffer_size: int = 10,
    concurrency: int | None = None,
    server_lr: float = 1.0,
    staleness: Callable[[int], float] | None = None,
    max_staleness: int | None = None,
    weighted: bool = True,
    **options: Unpack[StrategyOptions],
) -> Strategy:
    """FedBuff: asynchronous training that updates the model every ``buffer_size`` replies.

    The server keeps ``concurrency`` clients training at all times (by default
    ``num_fit`` of the eligible clients: ``fraction_fit`` and ``min_fit_clients``).
    Each reply's update, computed from a model ``tau`` updates old, is scaled by
    ``s(tau) = 1/sqrt(1 + tau)``; every ``buffer_size`` replies the buffered updates
    are averaged (weighted by examples unless ``weighted`` is False) and applied
    with ``server_lr``. The aggregator is
    ``chain(staleness_weight(s), weighted_mean(), server_sgd(server_lr))``.
    Federated evaluation is off (``fraction_evaluate=0``): evaluate centrally.

    Args:
        buffer_size: ``K``, the replies per global update.
        concurrency: Clients training at once (sets ``min_fit_clients`` with
            ``fraction_fit=0``); None keeps the sampling options.
        server_lr: The server learning rate ``eta_g``.
        staleness: ``tau -> factor`` (default ``(1 + tau) ** -0.5``).
        max_staleness: Drop updates staler than this (None: keep all).
        weighted: Average the buffer weighted by examples (True) or equally (the paper).
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(staleness_weight(s), weighted_mean(), server_sgd(server_lr))``
            (``mean()`` when not ``weighted``; no ``server_sgd`` when ``server_lr`` is 1),
            with ``buffer_size`` and ``max_staleness`` set.

    References:
        Nguyen et al., "Federated Learning with Buffered Asynchronous
        Aggregation", AISTATS 2022.
    """
    buffer_size = plain(buffer_size)
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        # None used to give synchronous rounds under FedBuff's name, without a word.
        wrong = buffer_size is not None and (
            isinstance(buffer_size, bool) or not isinstance(buffer_size, int)
        )
        raise (TypeError if wrong else ValueError)(
            "FedBuff's buffer_size must be an int >= 1 (the replies per global update), got "
            + (f"{type(buffer_size).__name__} " if wrong else "")
            + f"{buffer_size!r}; for synchronous rounds use covey.FedAvg()"
        )
    concurrency = plain(concurrency)
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int)
    ):
        raise TypeError(
            f"concurrency must be None or an int >= 1, got "
            f"{type(concurrency).__name__} {concurrency!r}"
        )
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be None or an int >= 1, got {concurrency!r}")
    if concurrency is not None:
        if "fraction_fit" in options or "min_fit_clients" in options:
            raise TypeError("FedBuff(): give concurrency or fraction_fit/min_fit_clients, not both")
        options["fraction_fit"] = 0.0
        options["min_fit_clients"] = concurrency
    options.setdefault("fraction_evaluate", 0.0)
    if staleness is not None and not callable(staleness):  # else it fails at the first update
        raise TypeError(
            f"FedBuff(staleness=...) takes a function of the staleness tau (an int) to a "
            f"factor, e.g. lambda tau: (1 + tau) ** -0.5, got {type(staleness).__name__}"
        )
    steps: list[Step] = [
        staleness_weight(polynomial_staleness(0.5) if staleness is None else staleness),
        weighted_mean() if check_switch(weighted, "FedBuff weighted") else mean(),
    ]
    if server_lr != 1.0:
        steps.append(server_sgd(server_lr))
    strategy = preset(
        "FedBuff",
        chain(*steps),
        options,
        server_lr=server_lr,
        staleness="1/sqrt(1+tau)" if staleness is None else name_of(staleness),
        weighted=weighted,
    )
    return replace(strategy, buffer_size=buffer_size, max_staleness=max_staleness)
