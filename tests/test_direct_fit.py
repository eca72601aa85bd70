"""The fit round's short way (inline clients folded straight into a mean) changes nothing.

Each run is made twice: as it runs (the short way where it applies) and with
the short way turned off (every reply through the transport's stream and the
aggregation chain). The global model must be the same to the bit, and every
record the same: participants, examples, metrics, failures, bytes both ways.
Tests also check the short way is taken where it should be, and not elsewhere.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import sys
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.aggregate import chain, mean, server_adam, weighted_mean
from covey.compress._runtime import CompressedTransport
from covey.server._sync import RoundLoop

Weights = dict[str, np.ndarray]


def model(dtype: Any = np.float64) -> Weights:
    return {"w": np.zeros((4, 3), dtype=dtype), "b": np.zeros(3, dtype=dtype)}


class Plain(covey.Client):
    """Client ``cid``: moves the model a seeded step, reports its examples and a metric."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def step(self, weights: Mapping[str, np.ndarray], rnd: int) -> Weights:
        rng = np.random.default_rng([self.cid, rnd])
        return {k: v + rng.normal(0.0, 0.1, v.shape).astype(v.dtype) for k, v in weights.items()}

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        rnd = int(config["round"])
        return covey.FitResult(
            weights=self.step(weights, rnd),
            num_examples=10 + self.cid,
            metrics={"loss": 1.0 / (1 + self.cid + rnd)},
        )


class Unruly(Plain):
    """Plain, except that some clients in some rounds do each thing off the common case."""

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        rnd, cid = int(config["round"]), self.cid
        new = self.step(weights, rnd)
        case = (cid + rnd) % 11
        if case == 1:
            raise ValueError(f"client {cid} failed in round {rnd}")
        if case == 2:
            new["w"][0, 0] = np.nan
        if case == 3:
            new["b"] = np.zeros(4)
        if case == 4:
            return covey.FitResult(weights=new, num_examples=0)
        if case == 5:
            delta = {k: new[k] - weights[k] for k in new}
            return covey.FitResult(delta=delta, num_examples=7)
        if case == 6:
            return new, 3  # a Flower-style tuple: refused
        if case == 7 and cid > 16:  # late in the round: the rest of it goes the general way
            new["w"][1, 1] = 1e200  # finite, but its square is not: the guarded fold
        if case == 8 and rnd == 2:
            sys.exit(3)
        return covey.FitResult(weights=new, num_examples=5 + cid, metrics={"loss": float(cid)})


def simulate(
    monkeypatch: pytest.MonkeyPatch,
    *,
    short: bool,
    client: Callable[[int], Any] = Plain,
    clients: int = 12,
    rounds: int = 4,
    dtype: Any = np.float64,
    **options: Any,
) -> tuple[Weights, covey.History, list[int]]:
    """Run a simulation; the weights, the history and the replies that went the general way."""
    general: list[int] = []
    take = RoundLoop._take_reply

    def counted(self: RoundLoop, state: Any, reply: Any, record: Any, metrics: Any) -> Any:
        general.append(reply.cid)
        return take(self, state, reply, record, metrics)

    with monkeypatch.context() as m:
        m.setattr(RoundLoop, "_take_reply", counted)
        if not short:
            m.setattr(CompressedTransport, "direct", lambda self: None)
        options.setdefault("strategy", covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0))
        result = covey.simulate(
            client_fn=client,
            num_clients=clients,
            rounds=rounds,
            initial_weights=model(dtype),
            seed=3,
            **options,
        )
    return dict(result.weights), result.history, general


def records(history: covey.History) -> list[dict[str, Any]]:
    """Every round's record but its timings (and failures' tracebacks, which name frames)."""
    out = []
    for record in history.rounds:
        fields = dataclasses.asdict(record)
        del fields["durations"]
        for key in ("fit_failures", "evaluate_failures"):
            fields[key] = [(f["cid"], f["stage"], f["error"]) for f in fields[key]]
        out.append(fields)
    return out


def same_run(
    monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[covey.History, list[int], list[int]]:
    """Run both ways, check they agree; the history and the replies each took the general way."""
    w_short, h_short, g_short = simulate(monkeypatch, short=True, **options)
    w_long, h_long, g_long = simulate(monkeypatch, short=False, **options)
    assert w_short.keys() == w_long.keys()
    for name in w_short:
        assert w_short[name].dtype == w_long[name].dtype
        assert w_short[name].tobytes() == w_long[name].tobytes(), name
    assert records(h_short) == records(h_long)
    assert h_short.stopped_reason == h_long.stopped_reason
    return h_short, g_short, g_long


def test_fedavg_takes_the_short_way_and_gives_the_same_model_and_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history, slow, every = same_run(monkeypatch, clients=12, rounds=4)
    # The first two replies of each round start the sums and the scratch the general way.
    assert slow == [0, 1] * 4
    assert every == list(range(12)) * 4
    last = history.rounds[-1]
    assert last.fit_participants == list(range(12))
    assert last.fit_examples == sum(10 + c for c in range(12))
    assert last.bytes_sent == 12 * (12 + 3) * 8
    assert last.bytes_received == last.bytes_sent
    assert last.durations["aggregate"] > 0.0
    assert math.isclose(
        float(last.fit_metrics["loss"]),
        sum((10 + c) / (1 + c + 4) for c in range(12)) / last.fit_examples,
    )


def test_every_reply_off_the_common_case_is_recorded_as_the_general_way_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history, slow, _ = same_run(monkeypatch, client=Unruly, clients=23, rounds=4)
    errors = [f.error for r in history.rounds for f in r.fit_failures]
    assert any("failed in round" in e for e in errors)
    assert any("shape" in e for e in errors), errors
    assert any("tuple" in e for e in errors), errors
    assert any("sys.exit(3)" in e for e in errors), errors
    assert len(set(errors)) >= 5, errors  # the NaN too
    # The rest went short.
    assert 4 <= len(slow) < 4 * 23
    assert all(r.fit_participants for r in history.rounds if r.round > 0)


@pytest.mark.parametrize(
    "aggregator",
    [
        pytest.param(lambda: chain(weighted_mean(), server_adam(eta=0.05)), id="fedadam"),
        pytest.param(mean, id="unweighted"),
    ],
)
def test_chains_that_start_with_a_mean_take_the_short_way(
    monkeypatch: pytest.MonkeyPatch, aggregator: Callable[[], Any]
) -> None:
    strategy = covey.Strategy(aggregator=aggregator(), fraction_fit=1.0, fraction_evaluate=0.0)
    _, slow, every = same_run(monkeypatch, strategy=strategy, client=Unruly, clients=15)
    assert len(slow) < len(every) == 4 * 15


def test_float32_models_and_failures_that_stop_the_run_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    same_run(monkeypatch, dtype=np.float32, client=Unruly, clients=15)
    _, slow, _ = same_run(monkeypatch, dtype=np.float16, clients=15)  # summed in float32
    assert slow == [0, 1] * 4
    strict = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, accept_failures=False)
    messages = []
    for short in (True, False):
        with pytest.raises(covey.FederationError) as info:
            simulate(monkeypatch, short=short, client=Unruly, clients=15, strategy=strict)
        messages.append(str(info.value))
        assert info.value.history.rounds[-1].fit_participants
    assert messages[0] == messages[1]


def test_integer_arrays_go_the_general_way_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Counting(Plain):
        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            new = self.step({"w": weights["w"]}, int(config["round"]))
            new["steps"] = weights["steps"] + self.cid
            return covey.FitResult(weights=new, num_examples=3 + self.cid)

    initial = {"w": np.zeros((4, 3)), "steps": np.zeros(2, dtype=np.int64)}
    runs = []
    for short in (True, False):
        general: list[int] = []
        take = RoundLoop._take_reply

        def counted(self: RoundLoop, *args: Any, _g: list[int] = general, _take: Any = take) -> Any:
            _g.append(args[1].cid)
            return _take(self, *args)

        with monkeypatch.context() as m:
            m.setattr(RoundLoop, "_take_reply", counted)
            if not short:
                m.setattr(CompressedTransport, "direct", lambda self: None)
            result = covey.simulate(
                client_fn=Counting,
                num_clients=6,
                rounds=3,
                initial_weights=initial,
                strategy=covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0),
            )
        runs.append((result, general))
    (a, general_a), (b, general_b) = runs
    assert len(general_a) == len(general_b) == 18  # integer sums are never taken short
    for name in initial:
        assert a.weights[name].tobytes() == b.weights[name].tobytes()
    assert records(a.history) == records(b.history)


def test_checkpointed_runs_take_the_short_way_and_resume_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    w_short, h_short, slow = simulate(monkeypatch, short=True, run_dir=tmp_path / "a")
    w_long, h_long, _ = simulate(monkeypatch, short=False, run_dir=tmp_path / "b")
    assert slow == [0, 1] * 4
    for name in w_long:
        assert w_short[name].tobytes() == w_long[name].tobytes()
    assert records(h_short) == records(h_long)
    simulate(monkeypatch, short=True, run_dir=tmp_path / "c", rounds=2)
    again, history, _ = simulate(
        monkeypatch, short=True, run_dir=tmp_path / "c", rounds=4, resume=True
    )
    for name in w_long:
        assert again[name].tobytes() == w_long[name].tobytes()
    assert records(history) == records(h_long)


def test_a_selector_s_choice_goes_short_and_a_round_timeout_keeps_the_general_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def backwards(available: Any, rnd: int, rng: Any) -> list[int]:
        return sorted(available, reverse=True)[:5]

    strategy = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, selector=backwards)
    _, slow, every = same_run(monkeypatch, strategy=strategy, clients=9, rounds=2)
    assert slow == [4, 5] * 2  # the loop takes a selector's choice in client-id order
    assert every == [4, 5, 6, 7, 8] * 2
    _, slow, _ = same_run(monkeypatch, round_timeout=60.0, clients=5, rounds=2)
    assert slow == list(range(5)) * 2


def test_a_client_writing_into_lent_weights_stops_the_run_either_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Writer(Plain):
        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            if self.cid == 2 and int(config["round"]) == 2:
                w = weights["w"]
                pointer = ctypes.cast(w.ctypes.data, ctypes.POINTER(ctypes.c_double))
                raw = np.ctypeslib.as_array(pointer, shape=w.shape)
                raw[0, 0] += 1.0  # past NumPy's read-only flag, as a compiled library can
            return super().fit(weights, config)

    messages = []
    for short in (True, False):
        with pytest.raises(RuntimeError, match="changed in place") as info:
            simulate(monkeypatch, short=short, client=Writer, clients=5, rounds=3)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_clients_that_cannot_be_built_and_a_small_client_cache_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def client_fn(cid: int) -> Any:
        if cid == 7:
            raise OSError("no data for client 7")
        return Plain(cid)

    history, slow, _ = same_run(monkeypatch, client=client_fn, clients=12, client_cache=4)
    assert all(f.cid == 7 and "no data" in f.error for f in history.rounds[1].fit_failures)
    assert len(history.rounds[1].fit_failures) == 1
    assert 7 in slow
    assert len(slow) < 4 * 12
    _, slow, _ = same_run(monkeypatch, client=client_fn, clients=12, client_cache=0)
    assert len(slow) < 4 * 12


@pytest.mark.parametrize(
    ("shape", "batch"),
    [pytest.param((4, 3), 16, id="small-model"), pytest.param((400, 400), 1, id="1.3-MB-model")],
)
def test_small_models_clients_run_in_batches_and_large_ones_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int], batch: int
) -> None:
    """A batch of clients runs before their replies are folded, unless it would hold a megabyte."""
    from covey.aggregate._short import ShortFold

    events: list[str] = []  # "fit" when a client runs, "fold" when its reply is offered

    class Logged(Plain):
        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            events.append("fit")
            return super().fit(weights, config)

    take = ShortFold.take

    def logged_take(self: ShortFold, *args: Any) -> bool:
        events.append("fold")
        return take(self, *args)

    monkeypatch.setattr(ShortFold, "take", logged_take)
    covey.simulate(
        client_fn=Logged,
        num_clients=40,
        rounds=1,
        initial_weights={"w": np.zeros(shape), "b": np.zeros(shape[1])},
        strategy=covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0),
    )
    order = "".join("c" if e == "fit" else "f" for e in events)
    # Every reply is offered to the short fold (the first two of a round go on the general way).
    assert order.count("c") == order.count("f") == 40
    if batch == 1:
        assert order == "cf" * 40
    else:
        assert order == "c" * 16 + "f" * 16 + "c" * 16 + "f" * 16 + "c" * 8 + "f" * 8


def test_clients_that_train_in_place_or_return_a_subclass_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class InPlace(Plain):
        writes_weights = True

        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            new = self.step(weights, int(config["round"]))
            for name, array in weights.items():
                array[...] = new[name]  # its own copy: the shared model stays intact
            return covey.FitResult(weights=dict(weights), num_examples=4 + self.cid)

    class Tagged(covey.FitResult):
        pass

    class Subclassed(Plain):
        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            new = self.step(weights, int(config["round"]))
            return Tagged(weights=new, num_examples=2 + self.cid)

    history, slow, _ = same_run(monkeypatch, client=InPlace, clients=20, rounds=3)
    assert len(slow) < 3 * 20  # folded short, through the runtime's general call
    assert history.rounds[-1].fit_participants == list(range(20))
    history, slow, _ = same_run(monkeypatch, client=Subclassed, clients=20, rounds=3)
    assert slow == list(range(20)) * 3  # not a FitResult itself: every reply the general way
    assert history.rounds[-1].fit_examples == sum(2 + c for c in range(20))


@pytest.mark.parametrize("short", [True, False], ids=["short-way", "general-way"])
def test_a_large_model_s_reply_is_let_go_before_the_next_client_runs(
    monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """Folded replies of a 1.3 MB model are not held (by a loop variable, say) past their turn."""
    replies: list[weakref.ref[np.ndarray]] = []
    held: list[tuple[int, int]] = []

    class Tracked(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            if replies and replies[-1]() is not None:
                held.append((int(config["round"]), self.cid))
            new = {name: array + 1.0 for name, array in weights.items()}
            replies.append(weakref.ref(new["w"]))
            return covey.FitResult(weights=new, num_examples=1 + self.cid)

    if not short:
        monkeypatch.setattr(CompressedTransport, "direct", lambda self: None)
    covey.simulate(
        client_fn=Tracked,
        num_clients=6,
        rounds=2,
        initial_weights={"w": np.zeros((400, 400)), "b": np.zeros(400)},
        strategy=covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0),
    )
    assert len(replies) == 12
    assert held == []
