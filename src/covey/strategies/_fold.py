"""How client results become aggregation events, and how a round's events fold into new weights.

The round loops and :meth:`covey.Strategy.aggregate` share these functions, so a
round run by hand over a list of :class:`~covey.FitResult` goes through exactly
the steps a round of :func:`covey.simulate` or :func:`covey.serve` uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from covey.aggregate import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    Dropped,
    End,
    Event,
    Step,
)
from covey.aggregate._base import mark_bounded
from covey.core._messages import FitResult
from covey.core._recordhint import record_instead
from covey.core._weights import Array, Weights, WeightsSpec, freeze, native, subtract


def contribution(
    cid: int,
    result: FitResult,
    spec: WeightsSpec,
    *,
    staleness: int = 0,
    sent: Weights | None = None,
    who: str | None = None,
) -> Contribution:
    """Check one client's fit result against the model's spec and make it a contribution.

    Args:
        cid: The client's id.
        result: What the client returned.
        spec: Names, shapes and dtypes of the global model.
        staleness: Global updates since the client was sent ``sent`` (asynchronous mode).
        sent: The model the client trained from, when ``staleness > 0``.
        who: The client as errors name it (a deployed client's chosen name);
            ``client <cid>`` by default.

    Returns:
        The contribution (full weights from a stale client become a delta relative
        to the model it trained from).

    Raises:
        covey.WeightsError: if the weights, delta or an extra does not match ``spec``
            or holds a non-finite value.
    """
    weights, delta = result.weights, result.delta
    # conformity() first: the message of check() (and the name in it) is built only
    # for a bad update.
    if weights is not None:
        bounded = spec.conformity(weights)
        if bounded is None:
            spec.check(weights, what=f"{who or f'client {cid}'}'s weights")
    else:
        bounded = spec.conformity(delta)
        if bounded is None:
            spec.check(delta, what=f"{who or f'client {cid}'}'s delta")
    extras = result.extras
    if extras:
        for name, extra in extras.items():
            spec.check(extra, what=f"{who or f'client {cid}'}'s extra {name!r}")
    if weights is not None and staleness > 0:
        # The client trained from an older model: its update is relative to that one.
        if sent is None:
            raise ValueError("a stale contribution needs the model the client trained from")
        delta = subtract(weights, sent)
        weights = None
        bounded = False  # a difference of values under the bound may not be
    made = Contribution(
        cid,
        result.num_examples,
        weights,
        delta,
        result.metrics,
        staleness=staleness,
        extras=extras,
    )
    if bounded:
        mark_bounded(made, True)
    return made


def find_aggregate(events: Iterable[Event], end: End | None = None) -> Aggregate | None:
    """The :class:`~covey.aggregate.Aggregate` among a step's output events at ``end``, if any.

    Raises:
        TypeError: The step emitted more than one (a round has one aggregate, and
            taking either would silently drop the other), or a
            :class:`~covey.aggregate.Dropped` (which replaces a contribution: at
            ``End`` there is none to leave out, and the round has counted its client).
    """
    events = tuple(events)
    found = [e for e in events if isinstance(e, Aggregate)]
    at = f"{end.step} {end.round}" if end is not None else None
    if len(found) > 1:
        at = at or f"round {found[0].round}"
        raise TypeError(
            f"the aggregation step emitted {len(found)} Aggregates at the End of {at}; "
            "a round has one: emit a single Aggregate at End"
        )
    for event in events:
        if isinstance(event, Dropped):
            where = f"the End of {at}" if at else "End"
            raise TypeError(
                f"the aggregation step emitted Dropped(cid={event.cid!r}) at {where}, where "
                "there is no contribution to leave out (the round has counted every one it "
                f"was given): emit Dropped({event.cid!r}, why) in place of that client's "
                "Contribution, when the step is given it"
            )
    return found[0] if found else None


def refuse_dropped_at_begin(events: Iterable[Event], round: int, step: str = "round") -> None:
    """Refuse a :class:`~covey.aggregate.Dropped` among a step's output events at ``Begin``.

    A ``Dropped`` replaces the contribution it leaves out; at ``Begin`` no client
    has replied yet, so it would replace nothing and be lost without a word.

    Raises:
        TypeError: naming the ``Dropped``, its cid and the round (``step`` says what
            ``round`` counts: ``"round"``, or ``"update"`` in an asynchronous run).
    """
    for event in events:
        if isinstance(event, Dropped):
            raise TypeError(
                f"the aggregation step emitted Dropped(cid={event.cid!r}) at the Begin of "
                f"{step} {round}, where there is no contribution to leave out (no client has "
                f"replied yet): emit Dropped({event.cid!r}, why) in place of that client's "
                "Contribution, when the step is given it"
            )


def dropped_why(events: Iterable[Event], cid: int) -> str | None:
    """Why client ``cid``'s contribution was left out, if a step's output events drop it.

    Raises:
        TypeError: naming the event, if a :class:`~covey.aggregate.Dropped` among
            ``events`` names another client: a step emits it in place of the
            contribution it was given, and one naming a client it was not given
            would leave ``cid``'s update out while counting ``cid`` as a participant.
    """
    why = None
    for event in events:
        if isinstance(event, Dropped):
            if event.cid != cid:
                raise TypeError(
                    f"the aggregation step emitted Dropped(cid={event.cid!r}) for client "
                    f"{cid}'s contribution; a Dropped replaces the contribution it leaves "
                    f"out: emit Dropped({cid}, why)"
                )
            why = event.why
    return why


def fold(
    aggregator: Step,
    global_weights: Weights,
    results: Iterable[FitResult],
    round: int = 1,
    state: Any = None,
) -> tuple[dict[str, Array], Any]:
    """Run one round of ``aggregator`` over ``results`` outside any loop.

    Args:
        aggregator: The aggregation step (a strategy's ``aggregator``).
        global_weights: The model the clients trained from.
        results: The clients' fit results, taken as clients ``0, 1, ...`` in order.
        round: The round number the steps see.
        state: The aggregator's state from an earlier call (None: a fresh ``init``).

    Returns:
        The new global weights (read-only arrays) and the aggregator's new state.

    Raises:
        TypeError: if ``round`` is not an int, a result is not a
            :class:`~covey.FitResult`, or the step emits a
            :class:`~covey.aggregate.Dropped` naming another client than the
            contribution it was given, or one at ``Begin`` or ``End`` (as in a round loop).
        ValueError: if ``round`` is below 1.
        covey.WeightsError: if a result does not match the model.
        covey.AggregationError: if the step gives no aggregate or an invalid one.
    """
    round = _round_number(round)
    global_weights = native(global_weights)  # as a round loop keeps its model
    spec = WeightsSpec.of(global_weights)
    spec.check(global_weights, what="global weights")
    params = freeze(global_weights)
    state = aggregator.init(params) if state is None else state
    state, out = aggregator.feed(state, Begin(round, params))
    refuse_dropped_at_begin(out, round)  # as a round loop does
    for cid, result in enumerate(results):
        if not isinstance(result, FitResult):
            raise TypeError(
                f"result {cid} is {type(result).__name__}, expected covey.FitResult: give "
                f"each client's result as {record_instead('fit', result)}"
            )
        state, out = aggregator.feed(state, contribution(cid, result, spec))
        dropped_why(out, cid)  # a Dropped naming another client is refused, as in a round
    end = End(round)
    state, out = aggregator.feed(state, end)
    aggregate = find_aggregate(out, end)
    if aggregate is None:
        raise AggregationError(f"round {round}: the aggregation step produced no aggregate")
    new = aggregate.apply(params)
    spec.check(new, what=f"round {round}'s aggregate")
    return freeze(new), state


def _round_number(round: object) -> int:
    """``round`` as the round loops number a training round: an int from 1 (0 trains none).

    Raises:
        TypeError: for anything but an int (a bool, a float, a str), a NumPy integer included.
        ValueError: for a round below 1.
    """
    if isinstance(round, bool | np.bool_) or not isinstance(round, int | np.integer):
        raise TypeError(
            f"round must be an int >= 1, the training round the steps see, got "
            f"{type(round).__name__} {round!r:.40}"
        )
    if round < 1:
        raise ValueError(
            f"round must be an int >= 1, got {round}: the round loops number training rounds "
            "from 1 (round 0 evaluates the initial model and trains none)"
        )
    return int(round)
