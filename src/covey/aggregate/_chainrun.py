"""How :func:`~covey.aggregate.chain` passes events through its steps.

A step that a later step's :class:`~covey.aggregate.Dropped` must leave without a
trace of the contribution dropped (SCAFFOLD's ``scaffold()``: its ``c`` must not
take the control-variate change of an update the round leaves out, as the
client, told its update was not applied, drops that change) is marked with
:func:`withdraws`; a chain gives such a step back the state it had before the
contribution whenever a step after it drops that contribution, as the round
loop does for every step when one refuses a contribution with an
AggregationError. Such a step leaves the state it is given as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covey.aggregate._base import (
    STEPS,
    Begin,
    Contribution,
    Dropped,
    Event,
    State,
    Step,
    innermost,
)

__all__ = ["chain_begin", "chain_event", "withdrawing", "withdraws"]

_WITHDRAWS = "_covey_withdraws_dropped"


def withdraws(step: Step) -> Step:
    """``step``, marked to be given back its state when a later step drops a contribution."""
    setattr(step.update, _WITHDRAWS, True)
    return step


def _withdraws(step: Step) -> bool:
    update: Any = innermost(step)
    if getattr(update, _WITHDRAWS, False):
        return True
    return any(_withdraws(inner) for inner in getattr(update, STEPS, ()))


def withdrawing(steps: Sequence[Step]) -> tuple[int, ...]:
    """The positions in a chain of the steps that are, or hold, a step marked :func:`withdraws`."""
    return tuple(i for i, step in enumerate(steps) if _withdraws(step))


def chain_begin(
    steps: tuple[Step, ...], state: State, event: Begin
) -> tuple[State, tuple[Event, ...]]:
    """Pass ``Begin`` through every step of a chain, even past a reducer that consumes it.

    Server-side steps need the round's global weights. What steps emit besides
    Begin (a Broadcast) flows on to the steps after them.
    """
    states = list(state)
    current = event
    extra: list[Event] = []
    for i, step in enumerate(steps):
        states[i], emitted = step.feed(states[i], current)
        upstream, extra = extra, []
        for e in emitted:
            if isinstance(e, Begin):
                current = e
            else:
                extra.append(e)
        for e in upstream:
            states[i], more = step.feed(states[i], e)
            extra.extend(more)
    return tuple(states), (current, *extra)


def chain_event(
    steps: tuple[Step, ...], state: State, event: Event, withdraw: tuple[int, ...] = ()
) -> tuple[State, tuple[Event, ...]]:
    """Pass any other event down a chain: each step's output feeds the next.

    A contribution that the step at position ``i`` drops is withdrawn from the
    steps of ``withdraw`` before ``i``: they go on from the state they had before it.
    """
    states = list(state)
    events: tuple[Event, ...] = (event,)
    watch = bool(withdraw) and isinstance(event, Contribution)
    for i, step in enumerate(steps):
        if len(events) == 1:
            states[i], events = step.feed(states[i], events[0])
        else:
            out: list[Event] = []
            for e in events:
                states[i], emitted = step.feed(states[i], e)
                out.extend(emitted)
            events = tuple(out)
        if watch and any(isinstance(e, Dropped) for e in events):
            watch = False  # dropped here: the steps after pass the Dropped on
            for j in withdraw:
                if j < i:
                    states[j] = state[j]
        if not events:
            break
    return tuple(states), events
