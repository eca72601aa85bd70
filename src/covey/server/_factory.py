"""One factory for the round loop: simulation and deployment build their loop here.

A strategy with ``buffer_size`` set runs asynchronously (FedBuff) on an
:class:`~covey.transport.AsyncTransport`; any other runs synchronous rounds on a
:class:`~covey.transport.Transport`. :func:`open_loop` makes that choice once, and
:func:`run_config` describes the run for its history, so both callers record
the same facts.
"""

from __future__ import annotations

from typing import Any

from covey.core._history import History
from covey.core._version import covey_version
from covey.core._weights import Weights
from covey.server._async import AsyncLoop
from covey.server._base import EvaluateFn, RoundCallback
from covey.server._retry import SIMULATED_TIMEOUT
from covey.server._sync import RoundLoop
from covey.strategies._strategy import Strategy
from covey.transport._async import AsyncTransport
from covey.transport._base import Transport

Loop = RoundLoop | AsyncLoop
"""Either loop: both have ``run``, ``weights``, ``history`` and ``agg_state``."""


def run_config(
    strategy: Strategy,
    *,
    rounds: int,
    seed: int,
    backend: str,
    num_clients: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a history records about how its run was set up.

    Args:
        strategy: The strategy (its :meth:`~covey.Strategy.describe` is recorded).
        rounds: The rounds asked for.
        seed: The run's seed.
        backend: ``"inline"``, ``"process"``, ``"grpc"``, ...
        num_clients: The federation's size, when known in advance.
        **extra: Other facts worth keeping (the model's layout, an address).

    Returns:
        A JSON-ready dict, with the covey version.
    """
    config: dict[str, Any] = {
        "strategy": strategy.describe(),
        "rounds": rounds,
        "seed": seed,
        "backend": backend,
        "num_clients": num_clients,
        "covey_version": covey_version(),
    }
    config.update(extra)
    return config


def open_loop(
    strategy: Strategy,
    transport: Transport | AsyncTransport,
    initial_weights: Weights,
    *,
    evaluate_fn: EvaluateFn | None = None,
    seed: int = 0,
    round_timeout: float | None = None,
    wait_timeout: float | None = None,
    on_round: RoundCallback | None = None,
    history: History | None = None,
    agg_state: Any = None,
    simulated: bool = False,
) -> Loop:
    """Build the loop ``strategy`` needs over ``transport``.

    Args:
        strategy: What to do each round; ``strategy.asynchronous`` picks the loop.
        transport: A :class:`~covey.transport.Transport` for synchronous rounds, an
            :class:`~covey.transport.AsyncTransport` for FedBuff.
        initial_weights: The global model to start from.
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` on the server.
        seed: Seeds client sampling.
        round_timeout: Seconds clients have to reply (per task in asynchronous mode).
        wait_timeout: Seconds to wait for enough clients (network transports).
        on_round: Called with each finished record.
        history: The history so far, when resuming a run.
        agg_state: The aggregation state so far, when resuming a run.
        simulated: Whether the clients are simulated (the strategy's run hooks then
            get the run's seed).

    Returns:
        A :class:`~covey.server.RoundLoop` or an :class:`~covey.server.AsyncLoop`.

    Raises:
        TypeError: if an asynchronous strategy gets a transport that cannot run it.
    """
    loop: Loop
    if strategy.asynchronous:
        if not isinstance(transport, AsyncTransport):
            raise TypeError(
                f"{strategy.name} runs asynchronously (buffer_size is set) and needs an "
                f"AsyncTransport; {type(transport).__name__} is not one"
            )
        loop = AsyncLoop(
            strategy,
            transport,
            initial_weights,
            evaluate_fn=evaluate_fn,
            seed=seed,
            task_timeout=round_timeout,
            idle_timeout=wait_timeout,
            on_round=on_round,
        )
    else:
        if not isinstance(transport, Transport):
            raise TypeError(f"{type(transport).__name__} is not a covey Transport")
        loop = RoundLoop(
            strategy,
            transport,
            initial_weights,
            evaluate_fn=evaluate_fn,
            seed=seed,
            round_timeout=round_timeout,
            wait_timeout=wait_timeout,
            on_round=on_round,
            simulated=simulated,
        )
    if simulated:  # simulate(round_timeout=...): covey server's flag is no setting of it
        loop.timeout_setting = SIMULATED_TIMEOUT
    if history is not None:
        loop.history = history
    if agg_state is not None:
        loop.agg_state = agg_state
    return loop
