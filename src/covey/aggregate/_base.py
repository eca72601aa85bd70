"""The aggregation protocol: a step is a pair of pure functions ``(init, update)``.

A round reaches the aggregation pipeline as a stream of events::

    Begin(round, params)  Contribution(cid=0, ...)  Contribution(cid=3, ...)  End(round)

and a step maps each event to ``(new_state, events_out)``. Per-client steps
(clipping, dropping non-finite updates) rewrite ``Contribution`` events;
reducers (weighted mean, median, ...) fold contributions into their state and
emit one :class:`Aggregate` at ``End``; server-side steps (noise, server
optimizers) rewrite the ``Aggregate``. :func:`chain` composes steps into a step
of the same type, so any sensible combination is one ``chain(...)``.

State is returned, never kept on an object. For speed, a reducer may reuse the
array buffers of the state it is given: treat a state passed to ``update`` as
consumed and continue only with the state it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from covey._messages import Metrics
from covey._weights import Array, Weights, add, subtract


class AggregationError(ValueError):
    """A round's contributions cannot be combined (e.g. every one has zero examples)."""


@dataclass(frozen=True, slots=True)
class Begin:
    """A round starts; ``params`` are the global weights the clients received."""

    round: int
    params: Weights


@dataclass(frozen=True, slots=True)
class Contribution:
    """One client's validated reply: full weights or a delta, and its size.

    Args:
        cid: The client's id.
        num_examples: Examples the client trained on.
        weights: The client's full local weights, if it sent weights.
        delta: The client's update (local minus global), if it sent a delta.
        metrics: The client's reported metrics.
    """

    cid: int
    num_examples: int
    weights: Weights | None = None
    delta: Weights | None = None
    metrics: Metrics = field(default_factory=dict)

    def as_delta(self, params: Weights) -> Weights:
        """The update relative to ``params`` (computed if the client sent weights)."""
        if self.delta is not None:
            return self.delta
        assert self.weights is not None
        return subtract(self.weights, params)

    def as_weights(self, params: Weights) -> Weights:
        """The client's full weights (computed if the client sent a delta)."""
        if self.weights is not None:
            return self.weights
        assert self.delta is not None
        return add(params, self.delta)


@dataclass(frozen=True, slots=True)
class End:
    """A round's contributions are all in."""

    round: int


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The combined result of a round: new global weights or an update to them.

    Args:
        round: The round.
        num_clients: How many contributions were combined.
        num_examples: Their total number of examples.
        weights: The new global weights, when the reducer produced full weights.
        delta: The update to add to the global weights otherwise.
        info: What steps want to report (e.g. clipped or dropped clients).
    """

    round: int
    num_clients: int
    num_examples: int
    weights: Weights | None = None
    delta: Weights | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def as_delta(self, params: Weights) -> Weights:
        """The update relative to ``params``."""
        if self.delta is not None:
            return self.delta
        assert self.weights is not None
        return subtract(self.weights, params)

    def apply(self, params: Weights) -> dict[str, Array]:
        """The new global weights: ``weights`` or ``params + delta``."""
        if self.weights is not None:
            return dict(self.weights)
        assert self.delta is not None
        return add(params, self.delta)


Event = Begin | Contribution | End | Aggregate
State = Any
Init = Callable[[Weights], State]
Update = Callable[[State, Event], tuple[State, tuple[Event, ...]]]


class Step(NamedTuple):
    """An aggregation step: ``init(params) -> state``, ``update(state, event) -> (state, events)``.

    ``init`` runs once per federation with the initial global weights;
    ``update`` runs for every event of every round.
    """

    init: Init
    update: Update


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

    def init(params: Weights) -> State:
        return tuple(step.init(params) for step in fixed)

    def update(state: State, event: Event) -> tuple[State, tuple[Event, ...]]:
        states = list(state)
        events: tuple[Event, ...] = (event,)
        for i, step in enumerate(fixed):
            if len(events) == 1:
                states[i], events = step.update(states[i], events[0])
            else:
                out: list[Event] = []
                for e in events:
                    states[i], emitted = step.update(states[i], e)
                    out.extend(emitted)
                events = tuple(out)
            if not events:
                break
        return tuple(states), events

    return Step(init, update)


def run_round(
    step: Step,
    state: State,
    round: int,
    params: Weights,
    contributions: list[Contribution],
) -> tuple[State, Aggregate | None]:
    """Feed one whole round through ``step``: a convenience for tests and notebooks.

    Returns:
        The new state and the round's aggregate (None if nothing was combined).
    """
    result: Aggregate | None = None
    events: list[Event] = [Begin(round, params), *contributions, End(round)]
    for event in events:
        state, out = step.update(state, event)
        for e in out:
            if isinstance(e, Aggregate):
                result = e
    return state, result


def is_float(array: Array) -> bool:
    """Whether ``array`` holds floating-point values."""
    return bool(array.dtype.kind == "f")


def zeros_like(params: Weights) -> dict[str, Array]:
    """Zero arrays shaped like ``params`` (float64 for non-float arrays)."""
    return {
        name: np.zeros(v.shape, dtype=v.dtype if v.dtype.kind == "f" else np.float64)
        for name, v in params.items()
    }
