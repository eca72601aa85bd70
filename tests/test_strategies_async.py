"""FedBuff: asynchronous transports on a virtual clock and in threads, and the AsyncLoop."""

from __future__ import annotations

import math
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

import covey
from covey.core import Reply, Task
from covey.data import dirichlet, load_digits
from covey.models import LogisticClient, logistic_init
from covey.server import AsyncLoop
from covey.sim import inline_transport
from covey.testing import ThreadedAsyncTransport
from covey.transport import MemoryTransport, SimulatedAsyncTransport

DATA = load_digits(seed=0)
PARTS = dirichlet(DATA.y_train, 10, alpha=0.5, seed=0)


def digits_client(cid: int) -> LogisticClient:
    x, y = DATA.client(PARTS[cid])
    return LogisticClient(cid, x, y, lr=0.1)


def echo(cid: int, task: Task) -> Reply:
    return Reply(cid, task.kind, result=(cid, task.round))


class Const(covey.Client):
    """Sends ``delta = cid + 1`` (or the equivalent weights) whatever it receives."""

    def __init__(self, cid: int, as_weights: bool = False, fail: bool = False) -> None:
        self.cid, self.as_weights, self.fail = cid, as_weights, fail

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        if self.fail:
            raise RuntimeError(f"client {self.cid} is broken")
        step = np.full(2, float(self.cid + 1))
        if self.as_weights:
            return covey.FitResult(weights={"w": weights["w"] + step}, num_examples=1)
        return covey.FitResult(delta={"w": step}, num_examples=1)

    def properties(self) -> dict[str, Any]:
        return {"even": self.cid % 2 == 0}


# -- SimulatedAsyncTransport -------------------------------------------------------------


def test_replies_come_in_virtual_time_order() -> None:
    transport = SimulatedAsyncTransport(MemoryTransport(range(3), echo), durations=[3.0, 1.0, 2.0])
    for cid in range(3):
        transport.submit(cid, Task("fit", 1))

    got = []
    while (reply := transport.next_reply()) is not None:
        got.append((reply.cid, transport.now()))
    assert got == [(1, 1.0), (2, 2.0), (0, 3.0)]
    assert transport.next_reply() is None  # nothing in flight


def test_other_task_kinds_take_no_time_and_ties_keep_submission_order() -> None:
    transport = SimulatedAsyncTransport(MemoryTransport(range(3), echo))
    transport.submit(2, Task("fit", 1))
    transport.submit(0, Task("properties", 1))
    transport.submit(1, Task("fit", 1))
    assert [transport.next_reply().cid for _ in range(3)] == [0, 2, 1]  # type: ignore[union-attr]
    assert transport.now() == 1.0


def test_timeouts_cancel_and_waiting() -> None:
    calls: list[int] = []

    def handler(cid: int, task: Task) -> Reply:
        calls.append(cid)
        return echo(cid, task)

    transport = SimulatedAsyncTransport(
        MemoryTransport(range(3), handler), durations=[5.0, 1.0, 2.0]
    )
    transport.submit(0, Task("fit", 1), timeout=2.5)
    transport.submit(1, Task("fit", 1))
    transport.submit(2, Task("fit", 1))
    with pytest.raises(ValueError, match="already has a task"):
        transport.submit(2, Task("fit", 1))
    assert transport.next_reply(timeout=0.5) is None  # nothing due within 0.5 virtual seconds
    assert transport.now() == 0.5
    transport.cancel(1)
    first = transport.next_reply()
    assert first is not None
    assert first.cid == 2
    late = transport.next_reply()
    assert late is not None
    assert (late.cid, transport.now()) == (0, 2.5)
    assert late.error is not None
    assert late.error.startswith("no reply in time: its simulated duration (from client_durations)")
    assert transport.next_reply() is None
    assert calls == [2]  # cancelled and timed-out tasks never ran


def test_prefetch_computes_several_tasks_per_exchange() -> None:
    sizes: list[int] = []

    class Counting(MemoryTransport):
        def exchange(self, tasks: Any, *, timeout: float | None = None) -> Any:
            sizes.append(len(tasks))
            return super().exchange(tasks, timeout=timeout)

    transport = SimulatedAsyncTransport(Counting(range(5), echo), prefetch=3)
    for cid in range(5):
        transport.submit(cid, Task("fit", 1))
    assert [transport.next_reply().cid for _ in range(5)] == list(range(5))  # type: ignore[union-attr]
    assert sizes == [3, 2]


def test_prefetch_takes_the_earliest_tasks_without_sorting_every_task_in_flight() -> None:
    # Each batch sorted every task in flight to find the next few: with a properties
    # task per client in flight (FedBuff with where=), quadratic in the clients.
    batches: list[list[int]] = []

    class Counting(MemoryTransport):
        def exchange(self, tasks: Any, *, timeout: float | None = None) -> Any:
            batches.append(sorted(tasks))
            return super().exchange(tasks, timeout=timeout)

    n = 100_000
    transport = SimulatedAsyncTransport(
        Counting(range(n), echo), prefetch=4, durations=lambda cid, rng: 1.0 + cid % 3
    )
    for cid in range(n):
        transport.submit(cid, Task("fit" if cid < 6 else "properties", 1))
    tracemalloc.start()
    try:
        first = transport.next_reply()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first is not None
    assert first.cid == 6
    assert batches == [[6, 7, 8, 9]]
    assert peak < 1_000_000, peak  # a list of every task in flight is several MB
    got = [transport.next_reply() for _ in range(n - 1)]
    assert [r.cid for r in got[-6:] if r is not None] == [0, 3, 1, 4, 2, 5]  # 1, 2, 3 s


def test_durations_are_checked() -> None:
    transport = SimulatedAsyncTransport(
        MemoryTransport(range(1), echo), durations=lambda c, r: -1.0
    )
    with pytest.raises(ValueError, match="simulated duration"):
        transport.submit(0, Task("fit", 1))


# -- ThreadedAsyncTransport -------------------------------------------------------------


def test_threaded_transport_runs_tasks_concurrently() -> None:
    release = threading.Event()

    def handler(cid: int, task: Task) -> Reply:
        if cid == 0:
            release.wait(10)
        return echo(cid, task)

    transport = ThreadedAsyncTransport(MemoryTransport(range(3), handler), max_workers=3)
    try:
        for cid in range(3):
            transport.submit(cid, Task("fit", 1))
        first = {transport.next_reply(5).cid, transport.next_reply(5).cid}  # type: ignore[union-attr]
        assert first == {1, 2}  # client 0 is still running: nothing waits for it
        release.set()
        last = transport.next_reply(5)
        assert last is not None
        assert last.cid == 0
        assert transport.next_reply(5) is None
        assert transport.now() > 0
    finally:
        release.set()
        transport.close()


def test_threaded_transport_drops_cancelled_replies() -> None:
    transport = ThreadedAsyncTransport(MemoryTransport(range(2), echo), max_workers=2)
    try:
        transport.submit(0, Task("fit", 1))
        transport.cancel(0)
        transport.submit(1, Task("fit", 1))
        reply = transport.next_reply(5)
        assert reply is not None
        assert reply.cid == 1
        assert transport.next_reply(0.01) is None
    finally:
        transport.close()


# -- the loop ----------------------------------------------------------------------------


def test_fedbuff_with_buffer_equal_to_clients_and_no_staleness_is_fedavg() -> None:
    init = logistic_init(64, 10)
    fedavg = covey.simulate(digits_client, 10, 4, covey.FedAvg(fraction_evaluate=0.0), init)
    fedbuff = covey.simulate(digits_client, 10, 4, covey.FedBuff(buffer_size=10), init)
    for name in init:
        np.testing.assert_array_equal(fedbuff.weights[name], fedavg.weights[name])
    assert all(r.aggregate_info["staleness"] == [0] * 10 for r in fedbuff.history.rounds[1:])
    uneven = covey.simulate(
        digits_client,
        10,
        4,
        covey.FedBuff(buffer_size=10),
        init,
        client_durations=lambda cid, rng: rng.exponential(1.0 + cid),
    )
    for name in init:  # same math, another order of summation
        np.testing.assert_allclose(uneven.weights[name], fedavg.weights[name], atol=1e-13)


def two_clients_run(**strategy: Any) -> covey.sim.SimulationResult:
    """Client 0 takes 1 s, client 1 takes 3 s; each update is one reply (K=1)."""
    as_weights = strategy.pop("as_weights", False)
    return covey.simulate(
        lambda cid: Const(cid, as_weights),
        2,
        4,
        covey.FedBuff(buffer_size=1, concurrency=2, **strategy),
        {"w": np.zeros(2)},
        client_durations=[1.0, 3.0],
    )


@pytest.mark.parametrize("as_weights", [False, True])
def test_stale_updates_are_scaled_by_one_over_sqrt_one_plus_tau(as_weights: bool) -> None:
    # t=1: client 0 (tau 0) -> w=1; t=2: client 0 -> w=2; t=3: client 1 sent at
    # version 0 arrives at version 2 (tau 2), then client 0 sent at version 2 (tau 1).
    result = two_clients_run(as_weights=as_weights)
    expected = 1 + 1 + 2 / math.sqrt(3) + 1 / math.sqrt(2)
    np.testing.assert_allclose(result.weights["w"], [expected, expected])
    rounds = result.history.rounds[1:]
    assert [r.fit_participants for r in rounds] == [[0], [0], [1], [0]]
    assert [r.aggregate_info["staleness"] for r in rounds] == [[0], [0], [2], [1]]
    assert [r.aggregate_info["clock"] for r in rounds] == [1.0, 2.0, 3.0, 3.0]


def test_max_staleness_drops_old_updates() -> None:
    result = two_clients_run(max_staleness=1)
    rounds = result.history.rounds[1:]
    assert rounds[2].aggregate_info["too_stale"] == [1]
    assert all(1 not in r.fit_participants for r in rounds[:3])


def test_a_staleness_function_that_raises_stops_the_run_naming_it() -> None:
    # Its ZeroDivisionError used to escape bare: no function, client or update named,
    # and the update under way missing from the history.
    def mine(tau: int) -> float:
        return 1.0 if tau == 0 else 1 / 0

    with pytest.raises(covey.FederationError) as stopped:
        two_clients_run(staleness=mine)
    message = str(stopped.value)
    assert message.startswith("update 3: the aggregation step failed on client 1's update")
    assert "staleness function 'test_a_staleness" in message
    assert "raised ZeroDivisionError: division by zero" in message
    assert "for client 1's update of staleness 2" in message
    history = stopped.value.history
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert history.stopped_reason == message


def test_fedbuff_never_waits_for_the_slowest_client() -> None:
    durations = [1.0] * 9 + [1e6]
    result = covey.simulate(
        lambda cid: Const(cid),
        10,
        20,
        covey.FedBuff(buffer_size=3, concurrency=10),
        {"w": np.zeros(2)},
        client_durations=durations,
    )
    rounds = result.history.rounds[1:]
    assert len(rounds) == 20
    assert all(9 not in r.fit_participants for r in rounds)
    assert rounds[-1].aggregate_info["clock"] < 100


def test_process_backend_gives_the_same_run() -> None:
    kwargs: dict[str, Any] = {
        "client_fn": digits_client,
        "num_clients": 10,
        "rounds": 5,
        "strategy": covey.FedBuff(buffer_size=3, concurrency=6),
        "initial_weights": logistic_init(64, 10),
        "client_durations": lambda cid, rng: (1 + cid) * rng.uniform(0.5, 1.5),
    }
    inline = covey.simulate(**kwargs)
    process = covey.simulate(**kwargs, backend="process", num_workers=2)
    for name in inline.weights:
        np.testing.assert_array_equal(inline.weights[name], process.weights[name])
    assert [r.fit_participants for r in inline.history.rounds] == [
        r.fit_participants for r in process.history.rounds
    ]


def test_compressed_bytes_count_in_the_update_a_reply_arrives_in_on_every_backend() -> None:
    # Before: the process backend computes prefetched tasks in batches and counted their
    # bytes then, not when the virtual clock delivers them: an update of three replies
    # recorded 0 bytes or four replies' worth, and replies never used were counted.
    kwargs: dict[str, Any] = {
        "client_fn": digits_client,
        "num_clients": 6,
        "rounds": 4,
        "strategy": covey.FedBuff(buffer_size=3, fraction_evaluate=0.0),
        "initial_weights": logistic_init(64, 10),
        "compression": "q8",
    }
    model = (64 * 10 + 10) * 8
    upload = 64 * 10 + 10 + 2 * 2 * 8  # codes, and a minimum and a step per array
    for backend in ("inline", "process"):
        history = covey.simulate(**kwargs, backend=backend, num_workers=2).history
        for record in history.rounds[1:]:
            assert len(record.fit_participants) == 3, backend
            assert (record.bytes_sent, record.bytes_received) == (3 * model, 3 * upload), backend


def test_failures_are_recorded_and_the_run_goes_on() -> None:
    result = covey.simulate(
        lambda cid: Const(cid, fail=cid == 3),
        6,
        5,
        covey.FedBuff(buffer_size=2, concurrency=6),
        {"w": np.zeros(2)},
    )
    failures = result.history.failures()
    assert failures
    assert all(f.cid == 3 and "client 3 is broken" in f.error for _, f in failures)
    assert all(3 not in r.fit_participants for r in result.history.rounds)
    with pytest.raises(covey.FederationError, match="accept_failures=False"):
        covey.simulate(
            lambda cid: Const(cid, fail=cid == 3),
            6,
            5,
            covey.FedBuff(buffer_size=2, concurrency=6, accept_failures=False),
            {"w": np.zeros(2)},
        )
    with pytest.raises(covey.FederationError, match="in a row failed"):
        covey.simulate(
            lambda cid: Const(cid, fail=True),
            3,
            2,
            covey.FedBuff(buffer_size=1),
            {"w": np.zeros(2)},
        )


def test_an_offline_client_is_not_asked_again_while_others_train() -> None:
    # Two of five clients are always offline: their tasks fail at once, at the same
    # virtual time. Retried at once, they failed again and again until the run
    # stopped with "replies in a row failed", though three clients were online.
    result = covey.simulate(
        Const,
        5,
        6,
        covey.FedBuff(buffer_size=2, concurrency=3),
        {"w": np.zeros(2)},
        client_durations=[1.0, 2.0, 3.0, 4.0, 5.0],
        availability=lambda cid, version: cid >= 2,
    )
    assert len(result.history.rounds) == 7
    for record in result.history.rounds[1:]:
        failed = [f.cid for f in record.fit_failures]
        assert set(failed) <= {0, 1}
        assert len(failed) == len(set(failed)), (record.round, failed)
        assert len(record.fit_participants) == 2


def test_an_offline_clients_failure_names_the_update_as_a_rounds_names_the_round() -> None:
    # It read "offline at version 1 (simulated)" in the record of update 1.
    result = covey.simulate(
        Const,
        3,
        1,
        covey.FedBuff(buffer_size=2, concurrency=3),
        {"w": np.zeros(2)},
        availability=lambda cid, version: cid >= 1,
    )
    errors = {f.error for f in result.history.rounds[1].fit_failures}
    assert errors == {"offline in update 1 (simulated availability)"}


def test_task_timeouts_free_the_client() -> None:
    result = covey.simulate(
        lambda cid: Const(cid),
        4,
        30,
        covey.FedBuff(buffer_size=2, concurrency=4),
        {"w": np.zeros(2)},
        client_durations=[1.0, 1.0, 1.0, 50.0],
        round_timeout=10.0,
    )
    timeouts = [f for _, f in result.history.failures() if f.error.startswith("no reply in time")]
    assert len(timeouts) >= 2  # timed out, sent a new task, timed out again
    assert {f.cid for f in timeouts} == {3}
    assert all(3 not in r.fit_participants for r in result.history.rounds)


def test_a_buffer_larger_than_the_clients_is_an_error() -> None:
    with pytest.raises(ValueError, match="buffer_size=4 exceeds num_clients=3"):  # up front
        covey.simulate(
            lambda cid: Const(cid), 3, 1, covey.FedBuff(buffer_size=4), {"w": np.zeros(2)}
        )


def test_bad_extras_are_refused_like_bad_updates() -> None:
    class BadExtra(Const):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            extras = {"x": {"w": np.zeros(3)}} if self.cid == 0 else {}
            return covey.FitResult(delta={"w": np.ones(2)}, num_examples=1, extras=extras)

    result = covey.simulate(
        lambda cid: BadExtra(cid), 3, 2, covey.FedBuff(buffer_size=2), {"w": np.zeros(2)}
    )
    errors = {f.error for _, f in result.history.failures()}
    assert errors == {"client 0's extra 'x': 'w' has shape (3,), expected (2,)"}


class _Shifted(SimulatedAsyncTransport):
    """A clock that starts far from 0, as a deployed transport's monotonic clock does."""

    def now(self) -> float:
        return super().now() + 86_400.0


def test_the_clock_of_the_records_counts_from_the_start_of_training() -> None:
    def run(kind: type[SimulatedAsyncTransport]) -> list[float]:
        transport = kind(inline_transport(Const, 4), durations=[1.0, 2.0, 3.0, 4.0])
        loop = AsyncLoop(covey.FedBuff(buffer_size=2, concurrency=4), transport, {"w": np.zeros(2)})
        return [r.aggregate_info["clock"] for r in loop.run(3).rounds[1:]]

    plain = run(SimulatedAsyncTransport)
    assert plain == [2.0, 3.0, 4.0]
    assert run(_Shifted) == plain


def test_the_loop_over_real_threads() -> None:
    init = logistic_init(64, 10)
    transport = ThreadedAsyncTransport(inline_transport(digits_client, 10), max_workers=4)
    try:
        loop = AsyncLoop(covey.FedBuff(buffer_size=10, concurrency=10), transport, init)
        history = loop.run(2)
    finally:
        transport.close()
    fedavg = covey.simulate(digits_client, 10, 2, covey.FedAvg(fraction_evaluate=0.0), init)
    assert len(history) == 3
    for name in init:
        np.testing.assert_allclose(loop.weights[name], fedavg.weights[name], atol=1e-13)


def test_history_callbacks_and_evaluation() -> None:
    seen: list[int] = []
    result = covey.simulate(
        digits_client,
        10,
        3,
        covey.FedBuff(buffer_size=4, concurrency=5),
        logistic_init(64, 10),
        evaluate_fn=lambda rnd, w: (float(rnd), {"r": rnd}),
        on_round=lambda record: seen.append(record.round),
    )
    assert seen == [0, 1, 2, 3]
    assert result.history.metric("r") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert '"staleness"' in result.history.to_json()
    assert all(len(r.fit_participants) == 4 for r in result.history.rounds[1:])


def test_asynchronous_strategies_are_validated() -> None:
    with pytest.raises(ValueError, match="fraction_evaluate=0"):
        covey.Strategy(buffer_size=4)
    with pytest.raises(ValueError, match="buffer_size"):
        covey.Strategy(buffer_size=0, fraction_evaluate=0.0)
    with pytest.raises(ValueError, match="max_staleness"):
        covey.FedBuff(max_staleness=-1)
    with pytest.raises(ValueError, match="asynchronous strategy"):
        AsyncLoop(
            covey.FedAvg(), SimulatedAsyncTransport(MemoryTransport([0], echo)), {"w": np.zeros(1)}
        )
    with pytest.raises(TypeError, match="not both"):
        covey.FedBuff(concurrency=3, fraction_fit=0.5)
    strategy = covey.FedBuff(buffer_size=5, concurrency=20, max_staleness=3)
    assert strategy.asynchronous
    assert (strategy.buffer_size, strategy.max_staleness, strategy.num_fit(100)) == (5, 3, 20)
    assert not covey.FedAvg().asynchronous


@pytest.mark.parametrize(
    ("size", "error", "got"),
    [
        (None, ValueError, "None"),
        (0, ValueError, "0"),
        (-1, ValueError, "-1"),
        (2.0, TypeError, "float 2.0"),
        (True, TypeError, "bool True"),
        ("4", TypeError, "str '4'"),
    ],
)
def test_fedbuff_refuses_a_buffer_size_that_is_no_count_of_replies(
    size: Any, error: type[Exception], got: str
) -> None:
    # None built synchronous rounds named FedBuff, without a word; 0 was refused as
    # "None or an int >= 1", offering None. No int at all is a TypeError naming the type.
    with pytest.raises(error, match="FedBuff's buffer_size must be an int >= 1") as refused:
        covey.FedBuff(buffer_size=size)
    assert f"got {got}; for synchronous rounds use covey.FedAvg()" in str(refused.value)


def test_a_concurrency_past_the_clients_is_named() -> None:
    strategy = covey.FedBuff(buffer_size=2, concurrency=10)
    with pytest.raises(ValueError, match=r"FedBuff's concurrency, min_fit_clients=10\) but num"):
        covey.simulate(lambda cid: covey.Client(), 4, 1, strategy, {"w": np.zeros(2)})


def test_updates_whose_clients_all_time_out_name_the_timeout_to_raise() -> None:
    # It said "17 replies in a row failed; last: no reply in time ..." and named no setting.
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(
            lambda cid: Const(cid),
            3,
            1,
            covey.FedBuff(buffer_size=2, concurrency=3),
            {"w": np.zeros(2)},
            client_durations=[50.0, 50.0, 50.0],
            round_timeout=10.0,
        )
    said = str(caught.value)
    assert "replies in a row failed" in said
    assert said.endswith(
        "no client replied within the round timeout of 10 s: allow more time (round_timeout)"
    ), said  # simulate()'s keyword: covey server's --round-timeout is no setting of it


def test_too_many_available_clients_says_no_update_would_start() -> None:
    # FedBuff counts updates, not rounds: it said "no round would start".
    with pytest.raises(ValueError, match="no update would start") as caught:
        covey.simulate(
            lambda cid: Const(cid),
            2,
            3,
            covey.FedBuff(buffer_size=2, min_available_clients=3, fraction_evaluate=0.0),
            {"w": np.zeros(2)},
        )
    assert str(caught.value) == (
        "min_available_clients=3 exceeds num_clients=2: no update would start; lower it to "
        "at most 2, or simulate more clients"
    )
