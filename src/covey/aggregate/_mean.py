"""Streaming means: ``weighted_mean`` (FedAvg's rule) and ``mean``.

Memory is O(model), not O(model x clients): each contribution is folded into
one accumulator as it arrives. The round loop feeds contributions in client-id
order, so the floating-point sum, and hence the result, never depends on the
order in which replies arrived.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from covey.aggregate._base import (
    MEAN,
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
    int64_of,
    int_change,
    int_delta,
    no_examples,
    signed,
)
from covey.aggregate._order import REDUCER, described, of_kind
from covey.core._pages import BLOCK, blocks, release_pages
from covey.core._weights import Array, Weights


class _MeanState(NamedTuple):
    params: Weights | None = None
    acc_weights: dict[str, Array] | None = None  # sum of n_k * w_k over weight senders
    acc_delta: dict[str, Array] | None = None  # sum of n_k * d_k over delta senders
    scratch: dict[str, Array] | None = None  # reused buffer for n_k * x_k
    examples_weights: float = 0.0
    total: float = 0.0
    clients: int = 0
    examples: int = 0
    # Integer arrays: a weight sender's n_k * (w_k - w) goes into acc_weights, not
    # n_k * w_k: float64 holds the values only up to 2**53, their changes exactly.
    ints: frozenset[str] = frozenset()
    # The sums are of (n_k / scale) * x_k: 1 unless one overflowed (see _fold).
    scale_weights: float = 1.0
    scale_delta: float = 1.0
    # Every contribution so far was bounded (see Contribution): with fewer than
    # _UNGUARDED examples, a bounded one is folded without an overflow guard.
    bounded: bool = True
    empty: int = 0  # contributions with num_examples=0: weighed by 0, or left out unweighted


_BLOCK = BLOCK // 4
"""Elements folded at once; the scratch of one array never holds more (1 MiB of float32).

A quarter of :data:`~covey.core._pages.BLOCK`: the scratch lives as long as
the round's sums, beside them, and folding in smaller blocks costs no time
(a block still fits in the cache it is read from).
"""

_UNGUARDED = 2.0**63
"""Examples up to which sums of bounded contributions cannot overflow.

A bounded value is under the square root of its dtype's largest (for float32
1.8e19), so ``sum n_k * x_k`` over at most 2**63 (9.2e18) examples stays under
half the largest; entering ``np.errstate`` for every reply would cost more than
the rest of the fold of a small model.
"""


def _acc_dtype(dtype: np.dtype[np.generic]) -> np.dtype[np.generic]:
    """The dtype a sum of ``n_k * x_k`` is kept in for arrays of ``dtype``.

    float32 and float64 sum in their own dtype; float16 sums in float32 (``n_k * x_k``
    past 65504, e.g. 40,000 examples times a weight of 2, would overflow to Inf);
    integer and bool arrays sum in float64 and are rounded back at the end.
    """
    if dtype.kind == "f":
        return dtype if dtype.itemsize >= 4 else np.dtype(np.float32)
    return np.dtype(np.float64)


def _first(values: Weights, factor: float) -> dict[str, Array]:
    """The accumulator from the first contribution: 0 + n*x == n*x exactly."""
    acc: dict[str, Array] = {}
    for name, x in values.items():
        dtype = _acc_dtype(x.dtype)
        if x.size <= _BLOCK:
            # A fresh array (a ufunc would turn a 0-d input into a scalar).
            a = np.array(x, dtype=dtype)
            if factor != 1.0:
                np.multiply(a, factor, out=a)
        else:
            a = np.empty(x.shape, dtype)
            flat_x, flat_a = np.ravel(x), a.reshape(-1)
            for start, stop in blocks(a.size, _BLOCK):
                part = flat_a[start:stop]
                part[...] = flat_x[start:stop]
                if factor != 1.0:
                    np.multiply(part, factor, out=part)
                release_pages(flat_x, start, stop)
        acc[name] = a
    return acc


def _scale_for(after: float, scale: float) -> float:
    """A power of two past ``2 * after`` and ``scale``: sums of ``(n_k / it) * x_k`` stay finite.

    Each term is at most ``n_k / it`` times the dtype's largest value and the
    ``n_k`` add up to ``after``, so the whole sum stays within half that value.
    A power of two divides exactly (barring subnormals), so the mean is unchanged.
    """
    return max(math.ldexp(1.0, math.frexp(after)[1] + 1), 2.0 * scale)


def _fold_from(
    acc: dict[str, Array],
    scratch: dict[str, Array],
    values: Weights,
    factor: float,
    at: tuple[int, int] = (0, 0),
) -> tuple[int, int] | None:
    """Add ``factor * values`` to ``acc``, from array ``at[0]``'s element ``at[1]`` on.

    Every sum goes into the scratch first, so an overflow leaves ``acc`` as it was
    before the array (or block) it happened in: returns where it happened, None
    when all is folded. A small array's sum swaps places with its accumulator.
    Arrays over :data:`_BLOCK` elements are folded block by block, and the pages
    of a contribution that views a mapped file are given back as each block is
    folded: a large reply is never resident whole.
    """
    with np.errstate(over="raise"):  # an overflow stops the fold where it happens
        return _fold_arrays(acc, scratch, values, factor, at)


def _fold_unguarded(
    acc: dict[str, Array], scratch: dict[str, Array], values: Weights, factor: float
) -> None:
    """:func:`_fold_arrays` where no sum can overflow (see :data:`_UNGUARDED`).

    Small arrays are summed in place, without the swap that keeps ``acc`` intact
    on an overflow; the first array over :data:`_BLOCK` elements hands the rest
    to :func:`_fold_arrays`.
    """
    multiply, add = np.multiply, np.add
    for name, x in values.items():
        total = acc[name]
        if total.size > _BLOCK:
            _fold_arrays(acc, scratch, values, factor, (list(values).index(name), 0))
            return
        if factor == 1.0:
            add(total, x, total, casting="unsafe")
            continue
        buf = scratch[name]
        if x.dtype.kind == "f" and x.dtype != total.dtype:  # float16: see _fold_arrays
            buf[...] = x
            multiply(buf, factor, buf)
        else:
            multiply(x, factor, buf)
        add(total, buf, total)


def _fold_arrays(
    acc: dict[str, Array],
    scratch: dict[str, Array],
    values: Weights,
    factor: float,
    at: tuple[int, int],
) -> tuple[int, int] | None:
    """The loop of :func:`_fold_from`, in whatever floating-point error state it is called."""
    multiply, add = np.multiply, np.add
    skip, first = at
    index, start = skip, first
    items = values.items() if skip == 0 else list(values.items())[skip:]
    try:
        for index, (name, x) in enumerate(items, skip):  # noqa: B007 (read on overflow)
            buf = scratch[name]
            total = acc[name]
            # float16 is multiplied in its float32 accumulator, never in float16 (overflow).
            lift = x.dtype.kind == "f" and x.dtype != total.dtype
            if total.size <= _BLOCK:
                # Positional outputs: the same ufuncs, without parsing keywords on every call.
                if factor == 1.0:
                    add(total, x, buf, casting="unsafe")
                else:
                    if lift:
                        buf[...] = x
                        multiply(buf, factor, buf)
                    else:
                        multiply(x, factor, buf)
                    add(total, buf, buf)
                acc[name], scratch[name] = buf, total
                continue
            flat_x, flat_total = np.ravel(x), total.reshape(-1)
            for start, stop in blocks(total.size, _BLOCK):
                if start < first:
                    continue
                part = buf[: stop - start]
                if factor == 1.0:
                    add(flat_total[start:stop], flat_x[start:stop], part, casting="unsafe")
                elif lift:
                    part[...] = flat_x[start:stop]
                    multiply(part, factor, part)
                    add(flat_total[start:stop], part, part)
                else:
                    multiply(flat_x[start:stop], factor, part)
                    add(flat_total[start:stop], part, part)
                flat_total[start:stop] = part
                release_pages(flat_x, start, stop)
            first = start = 0
    except FloatingPointError:
        return index, start
    return None


def _fold(
    acc: dict[str, Array] | None,
    scratch: dict[str, Array] | None,
    values: Weights,
    n: float,
    scale: float = 1.0,
    after: float = 0.0,
    guard: bool = True,
) -> tuple[dict[str, Array], dict[str, Array] | None, float]:
    """Add ``(n / scale) * values`` to ``acc``; returns it, the scratch and the scale.

    ``acc`` holds a sum of ``(n_k / scale) * x_k``, ``scale`` 1 unless a sum
    overflowed the dtype (values near its largest): then the sums so far are
    divided by a power of two (:func:`_scale_for` of ``after``, the examples
    summed once this contribution is in) and the fold goes on from where it
    stopped. ``guard=False`` when no sum can overflow (see :data:`_UNGUARDED`).
    """
    if acc is None:
        if not guard:
            return _first(values, n / scale), scratch, scale
        try:
            with np.errstate(over="raise"):
                return _first(values, n / scale), scratch, scale
        except FloatingPointError:
            scale = _scale_for(after, scale)
            return _first(values, n / scale), scratch, scale
    if scratch is None:
        # At most _BLOCK elements per array: the scratch stays small instead of
        # costing one more model copy.
        scratch = {
            name: np.empty_like(a) if a.size <= _BLOCK else np.empty(_BLOCK, a.dtype)
            for name, a in acc.items()
        }
    if not guard:
        _fold_unguarded(acc, scratch, values, n / scale)
        return acc, scratch, scale
    at = _fold_from(acc, scratch, values, n / scale)
    while at is not None:  # once: no term nor sum can overflow at the new scale
        new = _scale_for(after, scale)
        for a in acc.values():
            np.multiply(a, scale / new, out=a)
        scale = new
        at = _fold_from(acc, scratch, values, n / scale, at)
    return acc, scratch, scale


def _finish(
    acc: dict[str, Array], total: float, params: Weights, *, weights: bool
) -> dict[str, Array]:
    """Divide the sums by ``total`` (of the sums' scale), each array back in the model's dtype.

    Integer arrays are rounded; for a mean of ``weights`` their sums are of changes
    (see :class:`_MeanState`), added back to the global arrays in their own dtype.
    """
    out: dict[str, Array] = {}
    for name, param in params.items():  # in the model's order, not the first reply's
        a = acc[name]
        np.divide(a, total, out=a)
        target = param.dtype
        if a.dtype == target:
            out[name] = a
        elif target.kind == "f":  # float16 summed in float32
            out[name] = a.astype(target)
        elif target.kind == "b" and weights:
            # The mean of the masks sent, as the share of clients that flip each entry:
            # a tie keeps the entry, as it does for clients that sent deltas.
            flips = np.where(param, 1.0 - a, a)
            out[name] = np.asarray(param ^ (np.rint(flips) != 0))
        else:
            np.rint(a, out=a)
            # Modulo 2**64: a change past int64's range (an int64 array's values up to
            # 2**64 - 1 apart) wraps, and adding it wraps back to the exact value. A
            # negative change of an unsigned array wraps (via int64) the same way.
            if weights and target.kind in "iu":  # the mean change, added back exactly
                change = int_delta(a, params[name])
                out[name] = np.asarray(np.add(params[name], change, dtype=target))
            else:
                out[name] = int64_of(a).astype(target)
    return out


def _mean_step(weighted: bool) -> Step:
    def init(params: Weights) -> State:
        return _MeanState()

    def update(state: _MeanState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            # No np.errstate here: _fold catches its own overflow and rescales.
            return _mean_contribution(state, event, weighted)
        if isinstance(event, Begin):
            ints = frozenset(k for k, v in event.params.items() if v.dtype.kind in "iu")
            return _MeanState(params=event.params, ints=ints), ()
        if isinstance(event, End):
            with np.errstate(over="ignore", invalid="ignore"):
                return _mean_end(state, event, "weighted mean" if weighted else "mean")
        return state, (event,)

    setattr(update, MEAN, weighted)  # the round loops may fold plain replies themselves
    return of_kind(Step(init, update), REDUCER, "weighted_mean()" if weighted else "mean()")


def _mean_contribution(
    state: _MeanState, event: Contribution, weighted: bool
) -> tuple[State, tuple[Event, ...]]:
    """Fold one contribution into the running sums."""
    params, acc_w, acc_d, scratch, ex_w, total, clients, examples, ints, s_w, s_d, bounded, _ = (
        state
    )
    if params is None:
        raise AggregationError("a Contribution arrived before Begin")
    n = float(event.num_examples) if weighted or not event.num_examples else 1.0
    if n == 0.0:  # no data: no weight, and no vote in the unweighted mean either
        return state._replace(empty=state.empty + 1), ()
    bounded = bounded and event._bounded
    guard = not bounded or total + n > _UNGUARDED
    # A new tuple built positionally: NamedTuple._replace costs several calls per client.
    if event.weights is not None:
        values = event.weights
        if ints:
            values = dict(values)
            for name in ints:
                values[name] = int_change(values[name], params[name])
        if guard or acc_w is None or scratch is None:
            acc_w, scratch, s_w = _fold(acc_w, scratch, values, n, s_w, total + n, guard)
        else:  # the common case (see _fold), without its frame
            _fold_unguarded(acc_w, scratch, values, n / s_w)
        ex_w += n
    elif event.delta is not None:
        # An unsigned array's delta is a change modulo 2**bits: summed by its signed value.
        delta = signed(event.delta)
        acc_d, scratch, s_d = _fold(acc_d, scratch, delta, n, s_d, total + n, guard)
    else:  # an invariant of this module, not an input check
        raise RuntimeError("internal error: event.delta is unset")
    return _MeanState(
        params,
        acc_w,
        acc_d,
        scratch,
        ex_w,
        total + n,
        clients + 1,
        examples + event.num_examples,
        ints,
        s_w,
        s_d,
        bounded,
        state.empty,
    ), ()


def _combine(
    state: _MeanState, acc_d: dict[str, Array], acc_w: dict[str, Array], params: Weights
) -> tuple[dict[str, Array], float]:
    """The delta senders' sum plus the weight senders' ``sum n (w - g)``, and its scale.

    ``acc_w - n_w * g`` is added to the delta sum, both at the larger of their
    scales (a power of two: exact); if that overflows, at four times that scale.
    """
    scale = max(state.scale_delta, state.scale_weights)
    while True:
        try:
            with np.errstate(over="raise"):
                return {
                    name: _combined(state, name, a, acc_w[name], params[name], scale)
                    for name, a in acc_d.items()
                }, scale
        except FloatingPointError:
            scale *= 4.0


def _combined(
    state: _MeanState, name: str, a: Array, summed: Array, param: Array, scale: float
) -> Array:
    """One array of :func:`_combine`, a new array at ``scale``."""
    s_w = state.scale_weights
    out = np.array(a)  # a fresh array (a ufunc would turn a 0-d input into a scalar)
    if state.scale_delta != scale:
        np.multiply(out, state.scale_delta / scale, out=out)
    if param.dtype.kind == "b":
        # a delta of a mask is the entries that flip: sum n (w != g)
        summed = np.where(param, state.examples_weights / s_w - summed, summed)
    if s_w != scale:
        summed = np.multiply(summed, s_w / scale, dtype=out.dtype)
    np.add(out, summed, out=out)
    if name in state.ints or param.dtype.kind == "b":
        return out  # summed as changes already
    g = np.multiply(param, state.examples_weights / scale, dtype=out.dtype)
    np.subtract(out, g, out=out)
    return out


def _mean_end(state: _MeanState, event: End, rule: str) -> tuple[State, tuple[Event, ...]]:
    """Divide the sums at the round's end and emit the aggregate."""
    if state.clients == 0 or state.params is None:
        if state.empty:
            raise no_examples(f"their {rule}", state.empty, event.step, event.round)
        return _MeanState(), ()
    params = state.params
    info = dict(event.info)
    if state.empty:
        info[NO_EXAMPLES] = state.empty
    agg: Aggregate
    if state.acc_delta is None:
        if state.acc_weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: state.acc_weights is unset")
        agg = Aggregate(
            event.round,
            state.clients,
            state.examples,
            weights=_finish(
                state.acc_weights, state.total / state.scale_weights, params, weights=True
            ),
            info=info,
        )
    else:
        acc, scale = state.acc_delta, state.scale_delta
        if state.acc_weights is not None:
            acc, scale = _combine(state, acc, state.acc_weights, params)
        # Non-float arrays get a rounded delta of their own dtype, so apply() works.
        delta = _finish(acc, state.total / scale, params, weights=False)
        agg = Aggregate(event.round, state.clients, state.examples, delta=delta, info=info)
    return _MeanState(), (agg,)


@described
def weighted_mean() -> Step:
    """Average the contributions weighted by their number of examples (FedAvg).

    With client k sending weights ``w_k`` trained on ``n_k`` examples, the new
    global weights are ``sum_k n_k w_k / sum_k n_k``; deltas are averaged the
    same way and added to the global weights.

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS 2017.
    """
    return _mean_step(weighted=True)


@described
def mean() -> Step:
    """Average the contributions with equal weight, whatever their number of examples.

    A contribution of 0 examples (a client with no data, whose update is the model
    it received) takes no part: it would be a vote for no change. ``Aggregate.info``
    counts those left out under ``"no_examples"``, as for the weighted mean.
    """
    return _mean_step(weighted=False)
