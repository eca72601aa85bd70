"""Composing steps: :func:`chain`, and :func:`run_round` to feed one round through a step.

How a chain routes each event through its steps is in ``_chainrun``; the order
it refuses, in ``_order``.
"""

from __future__ import annotations

from covey.aggregate._base import (
    STEPS,
    Aggregate,
    Begin,
    Contribution,
    End,
    Event,
    State,
    Step,
    federation_size,
    for_federation,
    min_contributions,
    requiring,
)
from covey.core._weights import Weights


def chain(*steps: Step) -> Step:
    """Compose steps left to right: the events one step emits feed the next.

    Example:
        >>> from covey.aggregate import chain, weighted_mean
        >>> fedavg = chain(weighted_mean())

    Args:
        *steps: The steps, in the order events flow through them.

    Returns:
        A step whose state is the tuple of the steps' states.
    """
    if not steps:
        raise ValueError("chain() needs at least one step")
    for i, step in enumerate(steps):
        if not isinstance(step, Step):
            raise TypeError(f"chain() argument {i} is {type(step).__name__}, expected a Step")
    if len(steps) == 1:
        return steps[0]
    fixed = tuple(steps)
    from covey.aggregate._order import check_order

    check_order(fixed)
    from covey.aggregate._chainrun import chain_begin, chain_event, withdrawing

    needs = [need for need in map(min_contributions, fixed) if need is not None]
    withdraw = withdrawing(fixed)

    def init(params: Weights) -> State:
        return tuple(step.init(params) for step in fixed)

    def update(state: State, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return chain_begin(fixed, state, event)
        return chain_event(fixed, state, event, withdraw)

    setattr(update, STEPS, fixed)
    step = Step(init, update)
    sizes = [size for size in map(federation_size, fixed) if size is not None]
    if sizes:
        for_federation(step, sizes[0])
    return requiring(step, *max(needs, key=lambda need: need[0])) if needs else step


def run_round(
    step: Step,
    state: State,
    round: int,
    params: Weights,
    contributions: list[Contribution],
) -> tuple[State, Aggregate | None]:
    """Feed one whole round through ``step``: a convenience for tests and notebooks.

    The events are ``Begin(round, params)``, the contributions in order, then
    ``End(round)``, each through :meth:`Step.feed`.

    Args:
        step: The step (e.g. a :func:`chain`).
        state: The step's state: ``step.init(params)`` for a first round, else
            the state the last call returned.
        round: The round's number.
        params: The round's global weights, which the clients trained from.
        contributions: The clients' contributions.

    Returns:
        The new state and the round's aggregate (None if nothing was combined).
    """
    result: Aggregate | None = None
    events: list[Event] = [Begin(round, params), *contributions, End(round)]
    for event in events:
        state, out = step.feed(state, event)
        for e in out:
            if isinstance(e, Aggregate):
                result = e
    return state, result
