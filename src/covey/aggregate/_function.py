"""A reducer from one plain function of a round's contributions.

Some aggregation rules are easiest to write as one function that sees the
whole round at once, the way Flower's ``aggregate_fit`` does:
``combine(params, contributions) -> new global weights``. :func:`reducer` turns
such a function into a :class:`~covey.aggregate.Step` that buffers the round's
contributions and calls it at ``End``, so it chains with covey's other steps
(``chain(clip_norm(1.0), reducer(fn), server_adam())``) and runs on every
backend, simulated or deployed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from covey.aggregate._base import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    End,
    Event,
    State,
    Step,
)
from covey.aggregate._order import REDUCER, described, of_kind
from covey.core._weights import Weights, WeightsError, WeightsSpec, native

Combine = Callable[[Weights, Sequence[Contribution]], Weights]
"""``(params, contributions) -> new global weights``: one round's aggregation as a function."""


class _Held(NamedTuple):
    params: Weights | None = None
    contributions: list[Contribution] | None = None


@described
def reducer(combine: Combine) -> Step:
    """A reducer step that hands the round's contributions to ``combine`` at ``End``.

    Args:
        combine: ``(params, contributions) -> weights``. ``params`` are the global
            weights the clients received (read-only); ``contributions`` are the
            round's :class:`~covey.aggregate.Contribution` objects in client-id
            order, each with ``cid``, ``num_examples``, ``metrics`` and the
            client's update as ``as_weights(params)`` or ``as_delta(params)``,
            whichever the client sent. It returns the new global weights, with
            the names, shapes and dtypes of ``params``; it must not write into
            its inputs. A round without contributions does not call it.

    Returns:
        A reducer step emitting one ``Aggregate`` (full weights) per round. It holds
        the round's updates until ``End`` (memory O(model x clients)).

    Raises:
        covey.AggregationError: at ``End``, if ``combine`` returns weights that do
            not match ``params`` (the round loop records why and keeps the global
            model); an exception ``combine`` raises stops the run as a defect.

    Example:
        >>> import numpy as np, covey
        >>> from covey.aggregate import reducer
        >>> def largest(params, contributions):  # keep the update of the most examples
        ...     best = max(contributions, key=lambda c: c.num_examples)
        ...     return best.as_weights(params)
        >>> strategy = covey.Strategy(aggregator=reducer(largest))
        >>> results = [covey.FitResult(weights={"w": np.array([1.0])}, num_examples=3),
        ...            covey.FitResult(weights={"w": np.array([5.0])}, num_examples=9)]
        >>> strategy.aggregate({"w": np.zeros(1)}, results)["w"].tolist()
        [5.0]
    """
    if not callable(combine):
        raise TypeError(f"reducer() needs a function, got {type(combine).__name__}")
    label = f"reducer({getattr(combine, '__qualname__', type(combine).__name__)})"

    def init(params: Weights) -> State:
        return _Held()

    def update(state: _Held, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            if state.contributions is None:
                raise RuntimeError(f"{label}: a contribution arrived before the round began")
            state.contributions.append(event)
            return state, ()
        if isinstance(event, Begin):
            return _Held(event.params, []), (event,)
        if isinstance(event, End):
            if not state.contributions or state.params is None:
                return _Held(), ()
            ordered = sorted(state.contributions, key=lambda c: c.cid)
            # NumPy scalars as 0-d arrays (arithmetic on a 0-d array gives one), as a client's
            try:
                new = native(combine(state.params, ordered))
            except ValueError as exc:  # NumPy's "assignment destination is read-only"
                if "read-only" in str(exc):
                    exc.add_note(
                        f"{label} wrote into its inputs: the global weights it is given are "
                        "read-only; build the new weights as new arrays (np.median(...), "
                        "x + y, x.copy())"
                    )
                raise
            try:
                WeightsSpec.of(state.params).check(new, what=f"the result of {label}")
            except WeightsError as exc:  # the loop records it and keeps the model
                raise AggregationError(str(exc)) from exc
            aggregate = Aggregate(
                event.round,
                len(ordered),
                sum(c.num_examples for c in ordered),
                weights=dict(new),
                info=dict(event.info),
            )
            return _Held(), (aggregate,)
        return state, (event,)

    return of_kind(Step(init, update), REDUCER, "reducer()")
