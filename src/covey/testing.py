"""Shared test suites and fakes: :func:`check_aggregator` is what every aggregation step passes.

Example:
    >>> from covey.aggregate import chain, clip_norm, median, weighted_mean
    >>> from covey.testing import check_aggregator
    >>> check_aggregator(median)
    >>> check_aggregator(lambda: chain(clip_norm(1.0), weighted_mean()))
"""

from __future__ import annotations

import itertools
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from covey.aggregate import Aggregate, Begin, Contribution, End, Event, Step
from covey.aggregate._scaffold import CLIENT_DELTA
from covey.core._lazy import public_dir
from covey.core._messages import Reply, Task
from covey.core._weights import Array, Weights, WeightsSpec, freeze
from covey.transport._base import Transport

__all__ = [
    "ThreadedAsyncTransport",
    "check_aggregator",
    "random_contributions",
    "random_params",
]

ContributionsFn = Callable[[Weights, int, np.random.Generator], list[Contribution]]
"""``(params, round, rng) -> contributions`` for one round."""


def random_params(rng: np.random.Generator, *, with_int: bool = True) -> dict[str, Array]:
    """A small model: a float64 matrix, a float32 vector and (optionally) an integer counter.

    Args:
        rng: Draws the values: ``"w"`` (3x4) and ``"b"`` (4) standard normal.
        with_int: Add ``"count"``, two integers in [0, 100) of NumPy's default
            integer dtype (int64 on most platforms).
    """
    params: dict[str, Array] = {
        "w": rng.normal(size=(3, 4)),
        "b": rng.normal(size=4).astype(np.float32),
    }
    if with_int:
        params["count"] = rng.integers(0, 100, size=2)
    return params


def random_contributions(
    params: Weights, num_clients: int, rng: np.random.Generator, *, form: str = "mixed"
) -> list[Contribution]:
    """Random contributions in client-id order, sending weights, deltas or both kinds.

    Each has 1..100 examples, a positive ``"loss"`` metric and a
    ``"scaffold_delta_c"`` extra, so that every built-in step can consume it.

    Args:
        params: The global weights the contributions are shaped like.
        num_clients: How many contributions (client ids ``0 .. num_clients - 1``).
        rng: The source of randomness.
        form: ``"mixed"`` (odd client ids send a delta, even ones weights),
            ``"delta"`` or ``"weights"``.

    Raises:
        ValueError: if ``form`` is none of those three.
    """
    if form not in ("mixed", "delta", "weights"):
        raise ValueError(f"form must be 'mixed', 'delta' or 'weights', got {form!r}")
    out: list[Contribution] = []
    for cid in range(num_clients):
        delta = {k: _random_like(v, rng) for k, v in params.items()}
        extras = {CLIENT_DELTA: {k: _random_like(v, rng) for k, v in params.items()}}
        n = int(rng.integers(1, 101))
        metrics: dict[str, Any] = {"loss": float(rng.uniform(0.1, 3.0))}
        if form == "delta" or (form == "mixed" and cid % 2 == 1):
            out.append(Contribution(cid, n, delta=delta, metrics=metrics, extras=extras))
            continue
        weights = {k: np.add(v, delta[k], dtype=v.dtype) for k, v in params.items()}
        out.append(Contribution(cid, n, weights=weights, metrics=metrics, extras=extras))
    return out


def _random_like(value: Array, rng: np.random.Generator) -> Array:
    if value.dtype.kind == "f":
        return rng.normal(scale=0.5, size=value.shape).astype(value.dtype)
    return rng.integers(-3, 4, size=value.shape).astype(value.dtype)


class _Probe:
    """An event no step knows: every step must pass it on."""


def check_aggregator(
    make_step: Callable[[], Step],
    *,
    num_clients: int = 9,
    rounds: int = 3,
    seed: int = 0,
    order_invariant: bool = True,
    contributions: ContributionsFn | None = None,
    with_int: bool = True,
) -> None:
    """Run the checks every aggregation step must pass; raise AssertionError on the first failure.

    The step (usually a chain ending in a reducer, or a reducer alone) runs
    ``rounds`` rounds of random contributions, with an empty round in between.
    It must:

    - never change its inputs: the global weights and every contribution are
      read-only arrays and are compared bit for bit afterwards;
    - give identical outputs when run again from a fresh ``init`` on the same inputs;
    - give the same result (to rounding) whatever the order of the contributions,
      unless ``order_invariant`` is False;
    - produce an ``Aggregate`` per non-empty round whose result has the model's
      names, shapes and dtypes, and leave earlier aggregates unchanged later;
    - handle an empty round (``Begin`` then ``End``) without error or aggregate;
    - pass on events it does not know.

    Args:
        make_step: Builds a fresh step, e.g. ``median`` or ``lambda: krum(f=1)``.
        num_clients: Contributions per round.
        rounds: Non-empty rounds to run.
        seed: Seeds the inputs.
        order_invariant: Whether shuffling the contributions must not change the result.
        contributions: ``(params, round, rng) -> contributions``; default
            :func:`random_contributions` (mixed weights and deltas).
        with_int: Include an integer array in the model.

    Raises:
        TypeError: if ``make_step`` is a step rather than a function that builds one.
    """
    if isinstance(make_step, Step) or not callable(make_step):
        raise TypeError(
            "check_aggregator takes a function that builds the step, e.g. "
            "check_aggregator(lambda: chain(clip_norm(1.0), weighted_mean())), got "
            f"{type(make_step).__name__}"
            + (": wrap it as lambda: step" if isinstance(make_step, Step) else "")
        )
    rng = np.random.default_rng(seed)
    params = freeze(random_params(rng, with_int=with_int))
    make = contributions or (lambda p, r, g: random_contributions(p, num_clients, g))
    plan: list[list[Contribution]] = []
    for rnd in range(rounds):
        plan.append(_frozen(make(params, rnd, rng)))
        if rnd == 0:
            plan.append([])  # an empty round after the first
    before = _snapshot(params, plan)

    emitted: list[tuple[Aggregate, dict[str, Array]]] = []
    first = _run(make_step, params, plan, emitted)
    again = _run(make_step, params, plan)
    _assert_inputs_unchanged(before, params, plan)
    spec = WeightsSpec.of(params)
    for rnd, (a, b) in enumerate(zip(first, again, strict=True)):
        if not plan[rnd]:
            assert a is None, f"round {rnd}: an empty round produced an Aggregate"
            continue
        assert a is not None, (
            f"round {rnd}: no Aggregate; check a per-client step chained with a reducer"
        )
        assert b is not None
        spec.check(a.apply(params), what=f"round {rnd}'s result", finite=True)
        _assert_same(a, b, exact=True, what=f"round {rnd}, run again from init")
        assert a.num_clients <= len(plan[rnd]), f"round {rnd}: num_clients > contributions"
    for agg, values in emitted:  # later rounds and runs must not write into earlier results
        current = agg.weights if agg.weights is not None else agg.delta
        assert current is not None
        for name, value in values.items():
            assert np.array_equal(current[name], value, equal_nan=True), (
                f"round {agg.round}'s aggregate changed after it was emitted"
            )
    if order_invariant:
        shuffled = [list(rng.permutation(np.array(c, dtype=object))) for c in plan]
        for rnd, (a, b) in enumerate(zip(first, _run(make_step, params, shuffled), strict=True)):
            if a is not None:
                assert b is not None
                _assert_same(a, b, exact=False, what=f"round {rnd}, contributions shuffled")
    _assert_passes_unknown_events(make_step(), params, plan[0])


def _frozen(contributions: Sequence[Contribution]) -> list[Contribution]:
    out = []
    for c in contributions:
        out.append(
            Contribution(
                c.cid,
                c.num_examples,
                None if c.weights is None else freeze(c.weights),
                None if c.delta is None else freeze(c.delta),
                c.metrics,
                c.staleness,
                {k: freeze(v) for k, v in c.extras.items()},
            )
        )
    return out


def _arrays(params: Weights, plan: list[list[Contribution]]) -> list[Array]:
    arrays = list(params.values())
    for contributions in plan:
        for c in contributions:
            for values in (c.weights, c.delta, *c.extras.values()):
                if values is not None:
                    arrays.extend(values.values())
    return arrays


def _snapshot(params: Weights, plan: list[list[Contribution]]) -> list[Array]:
    return [np.array(a, copy=True) for a in _arrays(params, plan)]


def _assert_inputs_unchanged(
    before: list[Array], params: Weights, plan: list[list[Contribution]]
) -> None:
    for old, new in zip(before, _arrays(params, plan), strict=True):
        assert old.dtype == new.dtype
        assert np.array_equal(old, new, equal_nan=True), "the step changed one of its inputs"


def _run(
    make_step: Callable[[], Step],
    params: Weights,
    plan: list[list[Contribution]],
    emitted: list[tuple[Aggregate, dict[str, Array]]] | None = None,
) -> list[Aggregate | None]:
    step = make_step()
    assert isinstance(step, Step), f"make_step() returned {type(step).__name__}, not a Step"
    state = step.init(params)
    results: list[Aggregate | None] = []
    for rnd, contributions in enumerate(plan, start=1):
        found: Aggregate | None = None
        events_in: list[Event] = [Begin(rnd, params), *contributions, End(rnd)]
        for event in events_in:
            out: Any = step.update(state, event)
            assert isinstance(out, tuple), "update must return (state, events)"
            assert len(out) == 2, "update must return (state, events)"
            state, events = out
            assert isinstance(events, tuple), "update must return its events as a tuple"
            for e in events:
                if isinstance(e, Aggregate):
                    assert found is None, f"round {rnd}: more than one Aggregate"
                    found = e
                    values = e.weights if e.weights is not None else e.delta
                    assert values is not None, f"round {rnd}: an Aggregate with neither field"
                    if emitted is not None:
                        emitted.append((e, {k: np.array(v, copy=True) for k, v in values.items()}))
        results.append(found)
    return results


def _assert_same(a: Aggregate, b: Aggregate, *, exact: bool, what: str) -> None:
    assert (a.num_clients, a.num_examples) == (b.num_clients, b.num_examples), what
    va = a.weights if a.weights is not None else a.delta
    vb = b.weights if b.weights is not None else b.delta
    assert va is not None, what
    assert vb is not None, what
    assert set(va) == set(vb), what
    for name in va:
        x, y = np.asarray(va[name]), np.asarray(vb[name])
        assert x.dtype == y.dtype, f"{what}: {name!r} differs in dtype"
        assert x.shape == y.shape, f"{what}: {name!r} differs in shape"
        if exact:
            assert np.array_equal(x, y, equal_nan=True), f"{what}: {name!r} differs"
            continue
        if x.dtype.kind != "f":
            assert np.abs(x.astype(np.int64) - y.astype(np.int64)).max(initial=0) <= 1, what
            continue
        tol = 1e-4 if x.dtype.itemsize < 8 else 1e-9
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol, err_msg=f"{what}: {name!r}")
    if exact:
        assert a.info == b.info, f"{what}: info differs"


def _assert_passes_unknown_events(
    step: Step, params: Weights, contributions: list[Contribution]
) -> None:
    state = step.init(params)
    state, _ = step.update(state, Begin(1, params))
    probe: Any = _Probe()
    state, out = step.update(state, probe)
    assert any(e is probe for e in out), "the step did not pass on an event it does not know"
    for c in contributions:
        state, _ = step.update(state, c)
    step.update(state, End(1))


class ThreadedAsyncTransport:
    """Drives any thread-safe synchronous transport asynchronously, one thread per task in flight.

    Each ``submit`` runs ``transport.exchange({cid: task}, timeout=timeout)`` on a
    worker thread; replies reach :meth:`next_reply` through a queue as they come.
    A network transport whose ``exchange`` may be called from several threads at
    once runs FedBuff this way without implementing :class:`AsyncTransport` itself.

    Args:
        transport: The synchronous transport (its ``exchange`` must be thread-safe).
        max_workers: Most tasks running at once (at least the strategy's concurrency).
    """

    def __init__(self, transport: Transport, *, max_workers: int = 32) -> None:
        """Wrap ``transport``, running at most ``max_workers`` tasks at once."""
        self._transport = transport
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="covey-async")
        self._replies: queue.Queue[tuple[int, int, Reply]] = queue.Queue()
        self._inflight: dict[int, int] = {}
        self._tokens = itertools.count()
        self._start = time.monotonic()

    def clients(self) -> Sequence[int]:
        """The clients of the wrapped transport."""
        return self._transport.clients()

    def now(self) -> float:
        """Seconds since this transport was made."""
        return time.monotonic() - self._start

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Start ``task`` on a worker thread.

        Args:
            cid: The client the task is for: one task in flight per client.
            task: The task, run through the wrapped transport's ``exchange``.
            timeout: Seconds the wrapped transport's ``exchange`` is given (None:
                no limit); a task that gets no reply in time fails with
                ``"no reply in time"``.

        Raises:
            ValueError: ``cid`` already has a task in flight.
        """
        if cid in self._inflight:
            raise ValueError(f"client {cid} already has a task in flight")
        token = next(self._tokens)
        self._inflight[cid] = token
        self._pool.submit(self._run, cid, token, task, timeout)

    def _run(self, cid: int, token: int, task: Task, timeout: float | None) -> None:
        try:
            replies = [r for r in self._transport.exchange({cid: task}, timeout=timeout)]
            reply = replies[0] if replies else Reply(cid, task.kind, error="no reply in time")
        except Exception:  # noqa: BLE001 - a failed exchange is that client's error
            reply = Reply(cid, task.kind, error=traceback.format_exc())
        self._replies.put((cid, token, reply))

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        """Block until a reply arrives (None after ``timeout`` s or if nothing is in flight).

        A reply to a task :meth:`cancel` dropped is skipped.

        Args:
            timeout: Seconds to wait at most; None waits while a task is in flight.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                cid, token, reply = self._replies.get(timeout=remaining)
            except queue.Empty:
                return None
            if self._inflight.get(cid) == token:
                del self._inflight[cid]
                return reply
        return None

    def cancel(self, cid: int) -> None:
        """Forget ``cid``'s task; its thread finishes but the reply is dropped.

        Args:
            cid: The client; one with no task in flight is ignored.
        """
        self._inflight.pop(cid, None)

    def close(self) -> None:
        """Close the wrapped transport (ending any exchange in progress), then the threads."""
        self._inflight.clear()
        self._transport.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


__dir__ = public_dir(__name__)  # its names, not the modules it imports
