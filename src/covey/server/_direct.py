"""A fit round's short way: inline clients folded straight into a mean.

The general round runs through layers that each earn their keep somewhere:
the transport yields replies, the byte counter and the re-ordering wrap that
stream, each reply becomes a :class:`~covey.aggregate.Contribution` and passes
down the aggregation chain. When the clients run in this process one after
another, the counter only counts, and the aggregation starts with a mean
(FedAvg, FedAvgM, FedAdam...), the loop here runs each client itself and folds
its checked weights into the mean's sums directly (:mod:`covey.aggregate._short`).

It does what the general round does, in the same order: the same clients run
with the same tasks, the same checks refuse the same replies, the same sums
are taken in client-id order (the global model is the same to the bit), and
the same bytes, participants, examples, metrics and failures are recorded.
Any reply off the common case (a failure, a delta, extras, a value past the
bound) goes the general way, one reply at a time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from covey.aggregate._short import short_fold
from covey.core._history import RoundRecord
from covey.core._messages import FitResult, Reply, Task
from covey.core._weights import Weights

if TYPE_CHECKING:
    from covey.server._roundmetrics import RoundMetrics
    from covey.server._sync import RoundLoop


def fit_directly(
    loop: RoundLoop,
    tasks: dict[int, Task],
    cids: Sequence[int],
    state: Any,
    record: RoundRecord,
    metrics: RoundMetrics,
) -> Any | None:
    """Run the fit ``tasks`` of clients ``cids`` the short way; the aggregation state after.

    None, with nothing run, when the round cannot take it: the transport does
    not run its clients here (or compresses, or holds bytes), a ``round_timeout``
    is set, the aggregation does not start with a mean, or ``cids`` is not in
    client-id order (the general round would fold in ``cids`` order while its
    clients run in id order).

    Raises:
        FederationError: as the general round, when an aggregation step fails.
        RuntimeError: as the general round, when a client wrote into the weights
            it was lent.
    """
    counter: Any = loop.transport  # a CompressedTransport when direct() is there
    direct = getattr(counter, "direct", None)
    inline = direct() if loop.round_timeout is None and callable(direct) else None
    if inline is None:
        return None
    aggregator = loop.strategy.aggregator
    folder = short_fold(aggregator, state)
    if folder is None or any(a >= b for a, b in pairwise(cids)):
        return None
    counter.count_sent(tasks)
    lent = inline.lend(tasks)
    fit_one, conformity = inline.fit_one, loop.spec.conformity
    participants = record.fit_participants
    nbytes = loop.spec.nbytes
    clock = time.perf_counter
    # Kept here and added to the record and the counter before any reply goes the
    # general way, and when the round ends or stops: the same totals, fewer writes.
    seconds = 0.0
    examples = received = 0
    array: Any = None
    try:
        # Every name bound to a reply is let go before the next client runs (a loop
        # variable outlives its iteration): no two of a large model's replies at once.
        for cid, result, weights in _results(fit_one, tasks, cids, nbytes):
            if weights is not None:  # a plain FitResult's (see _plain)
                bounded = conformity(weights)
                named = result.metrics  # the usual empty metrics add no names: no call
                if bounded is None or (named and metrics.refusal(named) is not None):
                    for array in weights.values():
                        received += array.nbytes
                else:
                    received += nbytes  # the model's layout: its size
                    t0 = clock()
                    count = result.num_examples
                    taken = folder.take(weights, count, bounded)
                    seconds += clock() - t0
                    if taken:
                        participants.append(cid)
                        examples += count
                        if named:
                            metrics.append((count, named))
                        else:  # no names to count: the list's own append
                            list.append(metrics, (count, named))
                        result = weights = array = None
                        continue
                if weights is not result.weights:  # the batch's copy: what the client gave
                    result = FitResult(
                        weights=weights, num_examples=result.num_examples, metrics=result.metrics
                    )
                reply = Reply(cid, "fit", result=result)
            else:
                reply = result if isinstance(result, Reply) else Reply(cid, "fit", result=result)
                counter.count_reply(reply, tasks)
            result = weights = array = None
            seconds, examples, received = _settle(record, counter, seconds, examples, received)
            state = loop._take_reply(folder.state(), reply, record, metrics)
            del reply
            folder = short_fold(aggregator, state)
            if folder is None:  # pragma: no cover - the mean's state stays a mean's state
                raise RuntimeError("internal error: the mean's state changed kind")
    finally:
        _settle(record, counter, seconds, examples, received)
    inline.check_lent(tasks, lent)
    return folder.state()


def _settle(
    record: RoundRecord, counter: Any, seconds: float, examples: int, received: int
) -> tuple[float, int, int]:
    """Add the seconds, examples and bytes kept so far to the record and the counter; zeros."""
    if seconds:
        durations = record.durations
        durations["aggregate"] = durations.get("aggregate", 0.0) + seconds
    record.fit_examples += examples
    counter.bytes_received += received
    return 0.0, 0, 0


#: Most clients run back to back before their replies are checked and folded, and the
#: most bytes of weights (the model's size times the clients) such a batch may hold.
BATCH_CLIENTS = 16
BATCH_BYTES = 1 << 20


def _plain(result: Any) -> Weights | None:
    """The weights of a plain :class:`FitResult` (no subclass, delta or extras), else None."""
    if type(result) is FitResult and result.delta is None and not result.extras:
        return result.weights
    return None


EXACT_REFCOUNTS = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and getattr(sys, "_is_gil_enabled", lambda: True)()
)
"""Whether ``sys.getrefcount`` counts every reference: CPython 3.11 to 3.13 with its GIL
(3.14's interpreter may hold references it does not count)."""


def _unshared(result: FitResult, weights: Weights) -> bool:
    """Whether nothing but the batch can reach ``result``'s arrays, so none needs a copy.

    True when the result, its weights dict and each array (owning its memory, no
    view of another) are referred to only by the batch's own names: no client,
    model or buffer holds them, so no later client can change them. Counted by
    ``sys.getrefcount`` where it counts every reference (:data:`EXACT_REFCOUNTS`);
    elsewhere False, and every held reply is copied. The references counted: the
    caller's name, this function's parameter and ``getrefcount``'s argument (3),
    and for the dict the result's field too (4); for each array, the dict's entry,
    the loop's name and the argument (3).
    """
    count = sys.getrefcount
    if not EXACT_REFCOUNTS or count(result) > 3 or count(weights) > 4:
        return False
    for array in weights.values():  # noqa: SIM110 - a loop: the counts above hold in it
        if not array.flags.owndata or count(array) > 3:  # a view owns none of its memory
            return False
    return True


def _results(
    fit_one: Callable[[int, Task], Any], tasks: dict[int, Task], cids: Sequence[int], size: int
) -> Iterator[tuple[int, Any, Weights | None]]:
    """Each of clients ``cids`` with what it gives back (see ``fit_one``) and its plain weights.

    The weights are those of a plain ``FitResult`` (see :func:`_plain`), None for
    any other reply. A small model's clients run back to back in batches of up
    to :data:`BATCH_CLIENTS`, and their replies are then checked and folded one
    after another: each part's code and data stay in the processor's caches,
    where alternating client and fold evicts them (on the digits workload at
    N = 1,000, a client's training took ~4 us longer right after the previous
    reply's checks and fold than right after another client's training).

    A reply held while later clients run must not change under it: clients may
    share a model or a buffer they return without copying (every simulated
    client training one torch model, say), which the general way folds before
    the next client runs. A batch therefore keeps a copy of each plain reply's
    arrays that anything but the batch can still reach (see :func:`_unshared`;
    at most :data:`BATCH_BYTES` of them, as the model's size times the clients),
    and ends at the first reply off the common case, which is handed over before
    any other client runs. A large model's clients run one at a
    time, each reply folded and let go before the next client runs. When the
    fold stops the round with an error, the rest of that batch has run already
    (at most 15 clients whose replies are then dropped, as those of the clients
    after them never come).

    Args:
        fit_one: Runs one client's fit task: its ``FitResult``, or its ``Reply``.
        tasks: Each client's task.
        cids: The clients, in the order to run them.
        size: The model's size in bytes.
    """
    batch = max(1, min(BATCH_CLIENTS, BATCH_BYTES // max(size, 1)))
    if batch == 1:
        for cid in cids:
            result = fit_one(cid, tasks[cid])
            yield cid, result, _plain(result)  # nothing here holds it once handed over
            result = None
        return
    held: list[tuple[int, Any, Weights | None]] = []
    for cid in cids:
        result = fit_one(cid, tasks[cid])
        weights = _plain(result)
        if weights is not None and not _unshared(result, weights):
            weights = {name: array.copy() for name, array in weights.items()}
        held.append((cid, result, weights))
        if weights is None or len(held) == batch:
            yield from held
            held = []
    yield from held
