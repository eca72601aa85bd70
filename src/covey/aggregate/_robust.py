"""Robust reducers that see every update at once: median, trimmed mean, geometric median.

A robust rule needs the whole round's updates together (the median of a stream
cannot be folded into O(model) memory), so these reducers buffer each client's
update as one flat float64 vector and combine them at ``End``. They work on
updates (deltas), whether a client sent weights or a delta, and emit an
``Aggregate`` with a delta in the model's own dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

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
from covey.aggregate._flat import (
    NO_EXAMPLES,
    Vector,
    check_count,
    check_positive,
    check_switch,
    flatten,
    floor_fraction,
    needs_params,
    no_examples,
    unflatten,
    update_of,
    written_fraction,
)
from covey.aggregate._order import REDUCER, described, of_kind
from covey.core._weights import Weights

Matrix = NDArray[np.float64]
Combined = tuple[Vector, dict[str, Any]]
Combine = Callable[[Matrix, Vector, list[int]], Combined]
"""``(updates (n, d), num_examples (n,), cids) -> (combined update (d,), info)``."""


class _BufferState(NamedTuple):
    params: Weights | None = None
    rows: list[Vector] | None = None
    cids: list[int] | None = None
    examples: list[int] | None = None
    empty: int = 0  # contributions with num_examples=0, left out


def buffered(name: str, combine: Combine) -> Step:
    """A reducer that buffers the round's updates and combines them at ``End``.

    Args:
        name: The rule's name, for error messages.
        combine: ``(updates, num_examples, cids) -> (update, info)`` on flat float64
            vectors, one row per contribution in client-id order (so that results,
            and the breaking of ties, do not depend on the order of arrival).

    A contribution with ``num_examples=0`` (a client with no data, whose update is
    the model it received) takes no part: a rule that counts each update as one
    vote would otherwise count it as a vote for no change. ``Aggregate.info``
    gives how many were left out under ``"no_examples"``; a round of nothing else
    raises an AggregationError at ``End`` (the round keeps the model).

    Returns:
        A step that emits one ``Aggregate`` (a delta) per non-empty round.
    """

    def init(params: Weights) -> State:
        return _BufferState()

    def update(state: _BufferState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            params = needs_params(state.params, name)
            if event.num_examples == 0:
                return state._replace(empty=state.empty + 1), ()
            if state.rows is None:  # an invariant of this module, not an input check
                raise RuntimeError("internal error: state.rows is unset")
            if state.cids is None:  # an invariant of this module, not an input check
                raise RuntimeError("internal error: state.cids is unset")
            if state.examples is None:  # an invariant of this module, not an input check
                raise RuntimeError("internal error: state.examples is unset")
            row = flatten(update_of(event, params), params)
            if not event._bounded and _has_nan(row):  # the round loops checked theirs
                raise AggregationError(
                    f"{name}: client {event.cid}'s update holds NaN, which no rule can rank "
                    "(it compares false with everything): skip_nonfinite() before the rule "
                    "leaves such updates out"
                )
            state.rows.append(row)
            state.cids.append(event.cid)
            state.examples.append(event.num_examples)
            return state, ()
        if isinstance(event, Begin):
            return _BufferState(event.params, [], [], []), (event,)
        if isinstance(event, End):
            return _buffer_end(name, combine, state, event)
        return state, (event,)

    return of_kind(Step(init, update), REDUCER, name)


def _has_nan(row: Vector) -> bool:
    """Whether ``row`` holds a NaN (one pass, no temporary, when it holds none)."""
    with np.errstate(over="ignore", invalid="ignore"):  # a sum past float64's range: inf
        total = np.sum(row)
    return bool(np.isnan(total)) and bool(np.isnan(row).any())


def _buffer_end(
    name: str, combine: Combine, state: _BufferState, event: End
) -> tuple[State, tuple[Event, ...]]:
    """The round's aggregate from the buffered updates (none for a round without any)."""
    if not state.rows or state.params is None:
        if state.empty:
            raise no_examples(name, state.empty, event.step, event.round)
        return _BufferState(), ()
    if state.cids is None:  # an invariant of this module, not an input check
        raise RuntimeError("internal error: state.cids is unset")
    if state.examples is None:  # an invariant of this module, not an input check
        raise RuntimeError("internal error: state.examples is unset")
    # Client-id order makes the result independent of arrival order, ties included.
    order = sorted(range(len(state.cids)), key=state.cids.__getitem__)
    updates = np.stack([state.rows[i] for i in order])
    examples = np.asarray([state.examples[i] for i in order], dtype=np.float64)
    try:
        vector, info = combine(updates, examples, [state.cids[i] for i in order])
    except AggregationError as exc:
        if not state.empty:
            raise
        raise AggregationError(
            f"{exc} ({state.empty} more have num_examples=0 and take no part)"
        ) from None
    if state.empty:
        info = {**info, NO_EXAMPLES: state.empty}
    aggregate = Aggregate(
        event.round,
        len(state.rows),
        int(sum(state.examples)),
        delta=unflatten(vector, state.params),
        info={**event.info, **info},
    )
    return _BufferState(), (aggregate,)


@described
def median() -> Step:
    """Coordinate-wise median of the clients' updates (FedMedian).

    Each coordinate of the new update is the median of that coordinate over the
    round's updates (the mean of the two middle values for an even count). It
    tolerates up to half of the clients sending arbitrary values.

    Returns:
        A reducer step.

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
        Statistical Rates", ICML 2018.
    """

    def combine(updates: Matrix, examples: Vector, cids: list[int]) -> Combined:
        return _in_range(np.median, updates), {}

    return buffered("median()", combine)


@described
def trimmed_mean(beta: float = 0.2) -> Step:
    """Coordinate-wise trimmed mean: drop the ``beta`` largest and smallest, average the rest.

    For ``n`` updates, ``k = floor(beta * n)`` values (in exact arithmetic: 0.29 of
    100 is 29) are cut from each end of every coordinate and the remaining
    ``n - 2k`` are averaged.

    Args:
        beta: Fraction cut from each end, in ``[0, 0.5)``; 0 gives the plain mean.

    Returns:
        A reducer step; ``Aggregate.info["trimmed"]`` is ``k``.

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
        Statistical Rates", ICML 2018.
    """
    cut = check_positive(written_fraction(beta), "trimmed_mean beta", allow_zero=True)
    if cut >= 0.5:
        raise ValueError(f"trimmed_mean beta must be in [0, 0.5), got {beta!r}")

    def combine(updates: Matrix, examples: Vector, cids: list[int]) -> Combined:
        n = len(updates)
        k = min(floor_fraction(cut, n), (n - 1) // 2)  # beta < 0.5 always leaves one
        if k == 0:
            return _in_range(np.mean, updates), {"trimmed": 0}
        ordered = np.sort(updates, axis=0)
        return _in_range(np.mean, ordered[k : n - k]), {"trimmed": k}

    return buffered("trimmed_mean()", combine)


def _in_range(average: Callable[..., Any], rows: Matrix, total: float | None = None) -> Vector:
    """``average(rows, axis=0)`` (a mean or a median), finite wherever the rows are.

    A sum of values near the dtype's largest overflows where their average does
    not: those columns are averaged again scaled down by a power of two past
    ``total`` (what the sum is divided by: the row count unless given, the sum of
    the weights for a weighted mean), so that no sum can overflow, and scaled
    back, which a power of two does exactly (above the subnormals). An average
    lies between its column's least and largest values, and is kept there: a
    rounding at the very top of the range cannot make it ``inf``. No NumPy
    warning either way.
    """
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        out = np.asarray(average(rows, axis=0))
        lost = ~np.isfinite(out)
        if lost.any():
            columns = lost & np.isfinite(rows).all(axis=0)
            if columns.any():
                exponent = max(math.frexp(float(len(rows) if total is None else total))[1], 0)
                part = rows[:, columns]
                again = np.ldexp(np.asarray(average(np.ldexp(part, -exponent), axis=0)), exponent)
                out[columns] = np.clip(again, part.min(axis=0), part.max(axis=0))
    return out


@described
def geometric_median(
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    eps: float = 1e-5,
    weighted: bool = True,
) -> Step:
    """The geometric median of the updates by the smoothed Weiszfeld algorithm (RFA).

    Minimizes ``sum_k a_k ||v - x_k||`` with ``a_k`` proportional to the number of
    examples (or equal, if ``weighted`` is False). Starting from the weighted mean,
    each iteration sets ``b_k = a_k / max(eps, ||v - x_k||)`` and
    ``v = sum_k b_k x_k / sum_k b_k``, until ``v`` moves by at most ``tol`` times
    the weighted median of its distances to the updates, or ``max_iter`` iterations
    have run. (A step measured against the objective instead would stop early
    near one far update: its distance dominates the objective, so the steps
    towards the others look small.)

    Args:
        max_iter: Most Weiszfeld iterations.
        tol: Stop once a step moves the point by at most this times the weighted
            median of its distances to the updates.
        eps: Smoothing: distances below it count as ``eps`` (no division by zero).
        weighted: Weigh clients by their number of examples.

    Returns:
        A reducer step; ``Aggregate.info["iterations"]`` is the iterations run.

    References:
        Pillutla, Kakade and Harchaoui, "Robust Aggregation for Federated
        Learning", IEEE Transactions on Signal Processing 70, 2022.
    """
    iterations = check_count(max_iter, "geometric_median max_iter", minimum=1)
    rel_tol = check_positive(tol, "geometric_median tol", allow_zero=True)
    smooth = check_positive(eps, "geometric_median eps")
    weighted = check_switch(weighted, "geometric_median weighted")

    def combine(updates: Matrix, examples: Vector, cids: list[int]) -> Combined:
        weights = examples if weighted else np.ones(len(updates))
        total = float(weights.sum())
        if total == 0.0:
            raise AggregationError(
                f"geometric_median: all {len(updates)} contributions have num_examples=0"
            )
        alpha = weights / total
        median, done = weiszfeld(updates, alpha, iterations, rel_tol, smooth)
        return median, {"iterations": done}

    return buffered("geometric_median()", combine)


def weiszfeld(
    points: Matrix, alpha: Vector, max_iter: int, tol: float, eps: float
) -> tuple[Vector, int]:
    """Smoothed Weiszfeld iterations from the weighted mean; returns the point and iterations.

    Updates near float64's limit (finite, as a Byzantine client may send them) can
    put the mean so far out that every distance from it overflows: every weight
    ``b_k`` is then 0 and the next point ``0/0``. The iterations then start from
    the coordinate-wise median instead (as :func:`median` computes it: the mean of
    two middle values near the limit stays finite), and stop at a point from
    which every distance overflows.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        median: Vector = alpha @ points
        distances = np.linalg.norm(points - median, axis=1)
        if not np.isfinite(distances).any():
            median = _in_range(np.median, points)  # (a+b)/2 of two near the limit overflows
            distances = np.linalg.norm(points - median, axis=1)
        done = 0
        for done in range(1, max_iter + 1):  # noqa: B007 - the count is returned
            beta = alpha / np.maximum(eps, distances)
            total = float(beta.sum())
            if not total > 0.0:  # every distance overflows: no point is nearer
                break
            step = (beta @ points) / total
            if not np.isfinite(step).all():  # the weighted sum passed float64: a convex
                step = (beta / total) @ points  # combination of finite points does not
            moved = float(np.linalg.norm(step - median))
            median = step
            distances = np.linalg.norm(points - median, axis=1)
            if moved <= tol * _weighted_median(distances, alpha):
                break
    return median, done


def _weighted_median(values: Vector, alpha: Vector) -> float:
    """The weighted median of ``values`` (weights ``alpha``, summing to 1): the lower one."""
    order = np.argsort(values)
    at = int(np.searchsorted(np.cumsum(alpha[order]), 0.5))
    return float(values[order[min(at, len(order) - 1)]])
