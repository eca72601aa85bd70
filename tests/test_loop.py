"""RoundLoop over custom transports: reply ordering, lost replies, refused aggregates, tasks."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import covey
import covey.clients._client as client_module
from covey import EvaluateResult, FederationError, FitResult
from covey.aggregate import (
    Aggregate,
    Begin,
    Contribution,
    Event,
    Step,
    chain,
    run_round,
    weighted_mean,
)
from covey.core import Reply, Task
from covey.server import RoundLoop
from covey.server._sync import in_cid_order
from covey.sim import ProcessTransport, inline_transport
from covey.transport import MemoryTransport, Transport

Arrays = dict[str, np.ndarray]


def initial() -> Arrays:
    return {"w": np.zeros(64), "v": np.zeros((2, 3), dtype=np.float32)}


def wild(cid: int, rnd: int, like: Arrays) -> Arrays:
    """Values spanning many magnitudes, so a sum's result depends on its order."""
    rng = np.random.default_rng([cid, rnd, 7])
    return {
        k: np.asarray(
            rng.choice([-1.0, 1.0], size=v.shape) * 10.0 ** rng.uniform(-8, 16, size=v.shape),
            dtype=v.dtype,
        )
        for k, v in like.items()
    }


class WildClient(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        local = wild(self.cid, config["round"], weights)
        form = "delta" if self.cid % 3 == 0 else "weights"
        n = 1 + self.cid % 4
        if form == "delta":
            return FitResult(delta=local, num_examples=n)
        return FitResult(weights=local, num_examples=n)


class ReorderingTransport:
    """Runs clients inline but delivers their replies in a scrambled order."""

    def __init__(self, num_clients: int, order: str, drop: Sequence[int] = ()) -> None:
        self.inner = inline_transport(lambda cid: WildClient(cid), num_clients)
        self.order = order
        self.drop = set(drop)
        self.calls = 0

    def clients(self) -> Sequence[int]:
        return self.inner.clients()

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        self.calls += 1
        replies = [r for r in self.inner.exchange(tasks) if r.cid not in self.drop]
        if self.order == "reversed":
            replies.reverse()
        else:
            rng = np.random.default_rng(self.calls)
            replies = [replies[i] for i in rng.permutation(len(replies))]
        yield from replies

    def close(self) -> None:
        pass


def strategy(**kw: Any) -> covey.Strategy:
    kw.setdefault("fraction_evaluate", 0.0)
    kw.setdefault("fraction_fit", 0.6)
    return covey.FedAvg(**kw)


def identical(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


# -- in_cid_order -----------------------------------------------------------------------------


@given(st.permutations(list(range(8))), st.sets(st.integers(0, 7)))
def test_in_cid_order_sorts_any_arrival_order(arrival: list[int], missing: set[int]) -> None:
    replies = [Reply(cid, "fit", result=cid) for cid in arrival if cid not in missing]
    cids = list(range(8))
    assert [r.cid for r in in_cid_order(replies, cids)] == [c for c in cids if c not in missing]


def test_in_cid_order_follows_the_given_order_not_numeric_order() -> None:
    replies = [Reply(c, "fit") for c in (3, 10, 7)]
    assert [r.cid for r in in_cid_order(replies, [10, 7, 3])] == [10, 7, 3]


def test_in_cid_order_releases_replies_as_soon_as_possible() -> None:
    pulled: list[int] = []

    def arrivals() -> Iterator[Reply]:
        for cid in (0, 2, 1, 3):
            pulled.append(cid)
            yield Reply(cid, "fit")

    released = []
    for reply in in_cid_order(arrivals(), [0, 1, 2, 3]):
        released.append((reply.cid, list(pulled)))
    assert released == [
        (0, [0]),  # 0 leaves before anything else is read
        (1, [0, 2, 1]),
        (2, [0, 2, 1]),  # 2 was held until 1 came
        (3, [0, 2, 1, 3]),
    ]


def test_in_cid_order_drops_unknown_and_repeated_replies(caplog: pytest.LogCaptureFixture) -> None:
    replies = [Reply(1, "fit", result="a"), Reply(9, "fit"), Reply(1, "fit", result="b")]
    replies.append(Reply(0, "fit"))
    with caplog.at_level(logging.WARNING, logger="covey"):
        out = list(in_cid_order(replies, [0, 1]))
    assert [(r.cid, r.result) for r in out] == [(0, None), (1, "a")]
    messages = [r.getMessage() for r in caplog.records if r.name == "covey"]
    assert messages == [
        "dropping an unexpected reply from client 9",
        "dropping an unexpected reply from client 1",
    ]


# -- bit-identical results whatever the arrival order ------------------------------------------


def test_the_test_data_is_order_sensitive() -> None:
    # Without re-ordering, the same contributions summed in another order give other bits.
    params = initial()
    contributions = [Contribution(c, 1, weights=wild(c, 1, params)) for c in range(6)]
    step = weighted_mean()
    _, forward = run_round(step, step.init(params), 1, params, contributions)
    _, backward = run_round(step, step.init(params), 1, params, contributions[::-1])
    assert forward is not None
    assert backward is not None
    assert not identical(forward.apply(params), backward.apply(params))


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_arrival_order_does_not_change_a_single_bit(order: str) -> None:
    inline = covey.simulate(lambda cid: WildClient(cid), 10, 4, strategy(), initial(), seed=2)
    transport = ReorderingTransport(10, order)
    loop = RoundLoop(strategy(), transport, initial(), seed=2)
    history = loop.run(4)
    assert transport.calls == 4
    assert identical(loop.weights, inline.weights)
    for rnd in range(1, 5):
        assert history[rnd].fit_participants == inline.history[rnd].fit_participants
        assert history[rnd].fit_participants == sorted(history[rnd].fit_participants)
        assert history[rnd].fit_metrics == inline.history[rnd].fit_metrics


def test_without_reordering_the_arrival_order_would_leak_into_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same run with in_cid_order disabled is not bit-identical: the check above has teeth.
    import covey.server._sync as loop_module

    inline = covey.simulate(lambda cid: WildClient(cid), 10, 4, strategy(), initial(), seed=2)
    monkeypatch.setattr(loop_module, "in_cid_order", lambda replies, cids: iter(replies))
    loop = RoundLoop(strategy(), ReorderingTransport(10, "reversed"), initial(), seed=2)
    loop.run(4)
    assert not identical(loop.weights, inline.weights)


def test_a_missing_reply_is_recorded_as_no_reply() -> None:
    transport = ReorderingTransport(5, "reversed", drop=[3])
    loop = RoundLoop(strategy(fraction_fit=1.0), transport, initial())
    history = loop.run(2)
    for rnd in (1, 2):
        assert history[rnd].fit_participants == [0, 1, 2, 4]
        assert [(f.cid, f.error) for f in history[rnd].fit_failures] == [(3, "no reply in time")]
        assert history[rnd].aggregated


# -- transports that misbehave ----------------------------------------------------------------


class ScriptedTransport:
    """Answers every task with ``answer(cid, task)``; the client set may change."""

    def __init__(self, clients: Sequence[int], answer: Any) -> None:
        self.available = list(clients)
        self.answer = answer

    def clients(self) -> Sequence[int]:
        return self.available

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for cid in sorted(tasks):
            yield self.answer(cid, tasks[cid])

    def close(self) -> None:
        pass


def fit_reply(cid: int, task: Task) -> Reply:
    assert task.weights is not None
    local = {k: np.full_like(v, cid + 1) for k, v in task.weights.items()}
    return Reply(cid, task.kind, result=FitResult(weights=local, num_examples=1))


def test_transports_satisfy_the_protocol() -> None:
    assert isinstance(ScriptedTransport([0], fit_reply), Transport)
    assert isinstance(MemoryTransport([0], lambda cid, task: Reply(cid, "x")), Transport)
    with ProcessTransport(lambda cid: WildClient(cid), 2, num_workers=1) as transport:
        assert isinstance(transport, Transport)
        assert list(transport.clients()) == [0, 1]


def test_a_reply_that_is_not_a_fit_result_is_recorded() -> None:
    def answer(cid: int, task: Task) -> Reply:
        if cid == 1:
            return Reply(cid, task.kind, result="nonsense")
        return fit_reply(cid, task)

    loop = RoundLoop(strategy(fraction_fit=1.0), ScriptedTransport(range(3), answer), initial())
    history = loop.run(1)
    assert [(f.cid, f.error) for f in history[1].fit_failures] == [
        (1, "reply is str, expected FitResult")
    ]
    assert loop.weights["w"][0] == 2.0  # mean of clients 0 and 2: (1 + 3) / 2


def test_too_few_available_clients_raise_federation_error() -> None:
    transport = ScriptedTransport(range(4), fit_reply)
    loop = RoundLoop(strategy(min_available_clients=3), transport, initial())
    loop.run(1)
    transport.available = [0, 1]
    with pytest.raises(FederationError, match="round 2: 2 clients available, fewer than") as info:
        loop.run(2, start=2)
    assert info.value.history is loop.history
    # the round that stopped the run is kept, with why
    assert [r.round for r in loop.history.rounds] == [0, 1, 2]
    stopped = loop.history.rounds[-1]
    assert not stopped.aggregated
    assert stopped.aggregate_info["error"].startswith("2 clients available, fewer than")


def test_run_can_resume_from_a_later_round() -> None:
    seen: list[int] = []

    def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        seen.append(rnd)
        return 0.0, {}

    loop = RoundLoop(
        strategy(fraction_fit=1.0),
        ScriptedTransport(range(3), fit_reply),
        initial(),
        evaluate_fn=evaluate,
    )
    loop.run(3, start=2)
    assert [r.round for r in loop.history.rounds] == [2, 3]
    assert seen == [2, 3]


def test_a_round_with_only_zero_example_replies_leaves_the_model_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def answer(cid: int, task: Task) -> Reply:
        assert task.weights is not None
        n = 0 if task.round == 2 else 1
        local = {k: v + 1 for k, v in task.weights.items()}
        return Reply(cid, task.kind, result=FitResult(weights=local, num_examples=n))

    weights_after: dict[int, Arrays] = {}

    def evaluate(rnd: int, weights: Any) -> None:
        weights_after[rnd] = {k: v.copy() for k, v in weights.items()}

    loop = RoundLoop(
        strategy(fraction_fit=1.0),
        ScriptedTransport(range(3), answer),
        initial(),
        evaluate_fn=evaluate,
    )
    with caplog.at_level(logging.ERROR, logger="covey"):
        history = loop.run(3)
    assert history[1].aggregated
    assert not history[2].aggregated
    assert "num_examples=0" in history[2].aggregate_info["error"]
    assert history[2].aggregate_info["error"].startswith("AggregationError: round 2")
    assert identical(weights_after[2], weights_after[1])
    assert history[3].aggregated
    assert weights_after[3]["w"][0] == 2.0
    assert any("aggregation failed" in r.getMessage() for r in caplog.records)


def breaking_server_step(kind: str) -> Step:
    """A server-side step whose aggregate is invalid in round 2 and carries info."""

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return event.params, (event,)
        if isinstance(event, Aggregate):
            new = dict(event.apply(state))
            if event.round == 2:
                new["w"] = np.full(3, np.nan) if kind == "shape" else np.full(64, np.nan)
            out = Aggregate(
                event.round,
                event.num_clients,
                event.num_examples,
                weights=new,
                info={"seen": event.num_clients},
            )
            return state, (out,)
        return state, (event,)

    return Step(lambda params: None, update)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("shape", "round 2's aggregate: 'w' has shape (3,), expected (64,)"),
        ("nan", "round 2's aggregate: 'w' has 64 non-finite value(s) (NaN or Inf)"),
    ],
)
def test_an_invalid_aggregate_is_refused(kind: str, message: str) -> None:
    step = chain(weighted_mean(), breaking_server_step(kind))
    loop = RoundLoop(
        covey.Strategy(aggregator=step, fraction_evaluate=0.0),
        ScriptedTransport(range(2), fit_reply),
        initial(),
    )
    history = loop.run(3)
    assert [r.aggregated for r in history.rounds] == [False, True, False, True]
    assert history[2].aggregate_info == {"seen": 2, "error": message}
    assert history[1].aggregate_info == {"seen": 2}
    assert loop.weights["w"][0] == 1.5


def test_clients_get_the_global_model_read_only_and_by_reference() -> None:
    seen: list[bool] = []

    class Peeker(covey.Client):
        def fit(self, weights: Any, config: Any) -> FitResult:
            shares = all(np.shares_memory(weights[k], loop.weights[k]) for k in weights)
            seen.append(shares)
            with pytest.raises(ValueError, match="read-only"):
                weights["w"][0] = 1.0
            return FitResult(delta={k: np.ones_like(v) for k, v in weights.items()}, num_examples=1)

    loop = RoundLoop(strategy(fraction_fit=1.0), inline_transport(lambda c: Peeker(), 3), initial())
    loop.run(2)
    assert seen == [True] * 6
    assert loop.weights["w"][0] == 2.0


def test_inline_clients_are_built_once_and_reused() -> None:
    built: list[int] = []

    class Counter(covey.Client):
        def __init__(self) -> None:
            self.calls = 0

        def fit(self, weights: Any, config: Any) -> FitResult:
            self.calls += 1
            return FitResult(
                delta={k: np.full_like(v, self.calls) for k, v in weights.items()}, num_examples=1
            )

    def client_fn(cid: int) -> covey.Client:
        built.append(cid)
        return Counter()

    result = covey.simulate(client_fn, 3, 3, strategy(fraction_fit=1.0), initial())
    assert sorted(built) == [0, 1, 2]
    assert result.weights["w"][0] == 1.0 + 2.0 + 3.0


def test_federated_evaluation_below_the_minimum_gives_no_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def answer(cid: int, task: Task) -> Reply:
        if task.kind == "fit":
            return fit_reply(cid, task)
        if cid == 0:
            return Reply(cid, task.kind, result=EvaluateResult(loss=1.0, num_examples=3))
        return Reply(cid, task.kind, error="Traceback...\nRuntimeError: offline\n")

    loop = RoundLoop(
        covey.FedAvg(min_evaluate_clients=2), ScriptedTransport(range(3), answer), initial()
    )
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = loop.run(1)
    assert history[1].evaluate_participants == [0]
    assert [f.error for f in history[1].evaluate_failures] == ["RuntimeError: offline"] * 2
    assert history[1].evaluate_loss is None
    assert any("fewer than min_evaluate_clients=2" in r.getMessage() for r in caplog.records)


# -- the client runtime -----------------------------------------------------------------------


def test_run_task_turns_exceptions_and_unknown_kinds_into_errors() -> None:
    class Broken(covey.Client):
        def fit(self, weights: Any, config: Any) -> FitResult:
            raise KeyError("missing shard")

    reply = covey.clients.run_task(Broken(), 4, Task("fit", 1, {}, {"w": np.zeros(1)}))
    assert not reply.ok
    assert reply.cid == 4
    assert reply.kind == "fit"
    assert reply.error is not None
    assert "KeyError: 'missing shard'" in reply.error
    unknown = covey.clients.run_task(Broken(), 4, Task("dance", 1))
    assert unknown.error == (
        "unknown task kind 'dance': no handler is registered for it where this client runs: "
        "register it in a module the client's code imports (covey.clients.register_task)"
    )
    no_weights = covey.clients.run_task(Broken(), 4, Task("fit", 1))
    assert no_weights.error is not None
    assert "carries no weights" in no_weights.error
    base = covey.clients.run_task(covey.Client(), 0, Task("evaluate", 1, {}, {"w": np.zeros(1)}))
    assert base.error is not None
    assert "Client does not implement evaluate()" in base.error
    props = covey.clients.run_task(covey.Client(), 0, Task("properties", 0))
    assert props.ok
    assert props.result == {}


def test_registered_task_kinds_run_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_HANDLERS", dict(client_module._HANDLERS))

    def count(client: Any, task: Task) -> int:
        return int(client.size) * int(task.payload)

    covey.clients.register_task("count", count)
    assert "count" in covey.clients.task_kinds()

    class Sized(covey.Client):
        size = 7

    transport = MemoryTransport(
        [0, 1], lambda cid, task: covey.clients.run_task(Sized(), cid, task)
    )
    replies = list(
        transport.exchange({1: Task("count", 0, payload=3), 0: Task("count", 0, payload=2)})
    )
    assert [(r.cid, r.result) for r in replies] == [(0, 14), (1, 21)]
    with pytest.raises(ValueError, match="built in"):
        covey.clients.register_task("fit", count)
    with pytest.raises(ValueError, match="non-empty string"):
        covey.clients.register_task("", count)


def test_memory_transport_turns_handler_exceptions_into_errors() -> None:
    def handler(cid: int, task: Task) -> Reply:
        if cid == 1:
            raise RuntimeError("transport broke")
        return Reply(cid, task.kind, result=cid)

    replies = list(MemoryTransport([0, 1], handler).exchange({0: Task("x", 0), 1: Task("x", 0)}))
    assert replies[0].result == 0
    assert replies[1].error is not None
    assert "transport broke" in replies[1].error


def test_result_records_validate_their_fields() -> None:
    w = {"w": np.zeros(1)}
    with pytest.raises(ValueError, match="exactly one of weights= or delta="):
        FitResult(num_examples=1)
    with pytest.raises(ValueError, match="exactly one of weights= or delta="):
        FitResult(weights=w, delta=w, num_examples=1)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="num_examples must be a non-negative int"):
            FitResult(weights=w, num_examples=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metrics must be a dict"):
        FitResult(weights=w, num_examples=1, metrics=[1])  # type: ignore[arg-type]
    assert EvaluateResult(loss=np.float32(0.5), num_examples=1).loss == 0.5
    assert isinstance(EvaluateResult(loss=np.float32(0.5), num_examples=1).loss, float)
    with pytest.raises(TypeError, match="loss must be a number, got str"):
        EvaluateResult(loss="low", num_examples=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_examples"):
        EvaluateResult(loss=1.0, num_examples=-2)
    assert Reply(0, "fit").ok
    assert not Reply(0, "fit", error="x").ok


def test_a_result_without_num_examples_says_what_to_pass() -> None:
    # Before, Python's bare "missing 1 required keyword-only argument: 'num_examples'".
    w = {"w": np.zeros(1)}
    with pytest.raises(
        TypeError,
        match=r"FitResult needs num_examples=, the number of examples "
        r"trained on .*FitResult\(weights=new, num_examples=len\(y\)\)",
    ):
        FitResult(weights=w)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"FitResult\(delta=update, num_examples="):
        FitResult(delta=w)  # type: ignore[call-arg]
    with pytest.raises(
        TypeError,
        match=r"EvaluateResult needs num_examples=, the number of "
        r"examples evaluated .*EvaluateResult\(loss=loss, num_examples=len\(y\)\)",
    ):
        EvaluateResult(loss=0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"FitResult takes keyword arguments only, e\.g\. Fit"):
        FitResult(w, 5)  # type: ignore[arg-type, call-arg]
    fit = FitResult(weights=w, num_examples=2)
    for same in (pickle.loads(pickle.dumps(fit)), copy.copy(fit), copy.deepcopy(fit)):  # noqa: S301
        assert same.num_examples == 2
        assert np.array_equal(same.weights["w"], w["w"])  # type: ignore[index]
    evaluated = EvaluateResult(loss=0.5, num_examples=3, metrics={"accuracy": 0.9})
    assert pickle.loads(pickle.dumps(evaluated)) == copy.deepcopy(evaluated) == evaluated  # noqa: S301
    assert (evaluated.loss, evaluated.num_examples) == (0.5, 3)
    assert evaluated == EvaluateResult(loss=0.5, num_examples=3, metrics={"accuracy": 0.9})
    assert EvaluateResult(loss=0.5, num_examples=3).metrics == {}
