"""Large federations and simulated heterogeneity: memory independent of N, dropouts, stragglers."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import Task, WeightsError
from covey.sim import ClientClock, ClockedTransport, inline_transport
from covey.sim._clock import uniform

Arrays = dict[str, np.ndarray]


class Seeded(covey.Client):
    """A stateless client built from its id alone: weights plus noise seeded by (cid, round)."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        new = {k: v + rng.normal(scale=0.01, size=v.shape) for k, v in weights.items()}
        return FitResult(weights=new, num_examples=1 + self.cid % 7)


def init() -> Arrays:
    return {"W": np.zeros((64, 10)), "b": np.zeros(10)}


def peak_bytes(num_clients: int) -> int:
    """Peak Python allocations of 3 rounds with 10 sampled clients out of ``num_clients``."""
    return strategy_peak_bytes(
        lambda: covey.FedAvg(fraction_fit=1e-6, min_fit_clients=10, fraction_evaluate=0.0),
        num_clients,
    )


def test_memory_does_not_grow_with_the_number_of_clients() -> None:
    peak_bytes(1_000)  # warm up imports and caches
    small = peak_bytes(1_000)
    large = peak_bytes(1_000_000)
    # One byte per client would already be 1 MB more: the run holds nothing per client.
    assert large < small + 100_000, (small, large)


def first_ten(candidates: Any, round: int, rng: np.random.Generator) -> list[int]:
    """A selector that looks at ten candidates only, whatever the federation's size."""
    return [int(candidates[i]) for i in range(10)]


def strategy_peak_bytes(make: Callable[[], covey.Strategy], num_clients: int) -> int:
    """Peak Python allocations of 3 rounds (or updates) of ``make()`` over ``num_clients``."""
    tracemalloc.start()
    try:
        covey.simulate(Seeded, num_clients, 3, make(), init(), client_cache=0, seed=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def selector_peak_bytes(num_clients: int) -> int:
    """Peak allocations of 3 rounds whose clients a custom selector picks."""
    return strategy_peak_bytes(
        lambda: covey.FedAvg(selector=first_ten, fraction_evaluate=0.0), num_clients
    )


def test_a_custom_selector_costs_nothing_per_client() -> None:
    # The check that the selector chose available clients made a set of every client.
    selector_peak_bytes(1_000)
    small = selector_peak_bytes(1_000)
    large = selector_peak_bytes(1_000_000)
    assert large < small + 100_000, (small, large)


def fedbuff_peak_bytes(num_clients: int) -> int:
    """Peak allocations of 3 asynchronous updates of 10 clients of ``num_clients``."""
    return strategy_peak_bytes(lambda: covey.FedBuff(buffer_size=5, concurrency=10), num_clients)


def test_fedbuff_holds_nothing_per_client() -> None:
    # Each task given out listed (and sorted) every idle client of the federation.
    fedbuff_peak_bytes(1_000)
    small = fedbuff_peak_bytes(1_000)
    large = fedbuff_peak_bytes(1_000_000)
    assert large < small + 100_000, (small, large)


def test_client_cache_bounds_the_clients_kept_built() -> None:
    built: list[int] = []

    def client_fn(cid: int) -> Seeded:
        built.append(cid)
        return Seeded(cid)

    transport = inline_transport(client_fn, 10, client_cache=2)
    task = Task("fit", 1, {}, init())
    for cids in ([0, 1], [0, 1], [2], [0], [1]):
        list(transport.exchange(dict.fromkeys(cids, task)))
    # 0 and 1 stay built; 2 evicts 0 (the least recently used), 1 was evicted by 0.
    assert built == [0, 1, 2, 0, 1]


def test_availability_probability_gives_the_expected_dropouts() -> None:
    p, rounds, n = 0.7, 4, 1000
    result = covey.simulate(
        Seeded,
        n,
        rounds,
        covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        init(),
        availability=p,
        seed=3,
    )
    asked = offline = 0
    for record in result.history.rounds[1:]:
        asked += len(record.fit_participants) + len(record.fit_failures)
        assert all("offline" in f.error for f in record.fit_failures)
        offline += len(record.fit_failures)
    assert asked == rounds * n // 2
    expected, sd = asked * (1 - p), math.sqrt(asked * p * (1 - p))
    assert abs(offline - expected) < 4 * sd, (offline, expected)


def test_an_availability_trace_is_followed_exactly() -> None:
    trace = np.random.default_rng(0).random((20, 3)) < 0.6
    result = covey.simulate(
        Seeded,
        20,
        5,
        covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0),
        init(),
        availability=trace,
    )
    for record in result.history.rounds[1:]:
        column = trace[:, (record.round - 1) % 3]
        assert record.fit_participants == [c for c in range(20) if column[c]]
        assert [f.cid for f in record.fit_failures] == [c for c in range(20) if not column[c]]


def test_durations_and_a_deadline_make_the_expected_stragglers() -> None:
    sigma, deadline, rounds, n = 0.5, 1.5, 4, 1000
    result = covey.simulate(
        Seeded,
        n,
        rounds,
        covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        init(),
        client_durations=lambda cid, rng: rng.lognormal(0.0, sigma),
        round_deadline=deadline,
        seed=4,
    )
    late = sum(len(r.fit_failures) for r in result.history.rounds[1:])
    assert all(
        f.error.startswith("straggler") for r in result.history.rounds[1:] for f in r.fit_failures
    )
    asked = rounds * n // 2
    q = 0.5 * math.erfc(math.log(deadline) / sigma / math.sqrt(2))  # P(lognormal > deadline)
    assert abs(late - asked * q) < 4 * math.sqrt(asked * q * (1 - q)), (late, asked * q)


def test_the_virtual_clock_advances_by_the_slowest_on_time_client() -> None:
    durations = [1.0, 2.0, 9.0, 0.5]
    clock = ClientClock(durations)
    transport = ClockedTransport(inline_transport(Seeded, 4), clock, deadline=5.0)
    task = Task("fit", 1, {}, init())
    replies = {r.cid: r for r in transport.exchange(dict.fromkeys([0, 1, 3], task))}
    assert all(r.ok for r in replies.values())
    assert transport.now == 2.0
    replies = {r.cid: r for r in transport.exchange(dict.fromkeys([0, 2], task))}
    assert replies[0].ok
    assert not replies[2].ok
    assert "past the round deadline" in (replies[2].error or "")
    assert transport.now == 7.0  # a round with a straggler lasts until the deadline
    assert transport.rounds == [(1, 3, 0, 2.0), (1, 2, 1, 5.0)]


def test_availability_draws_are_uniform_and_do_not_depend_on_the_sample() -> None:
    cids = np.arange(200_000)
    u = uniform(11, 3, cids)
    counts = np.histogram(u, bins=20, range=(0.0, 1.0))[0]
    expected = len(cids) / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # 19 degrees of freedom: p < 1e-4 above 45
    assert np.array_equal(uniform(11, 3, cids[7::13]), u[7::13])
    assert not np.array_equal(uniform(11, 4, cids[:100]), u[:100])
    assert not np.array_equal(uniform(12, 3, cids[:100]), u[:100])


def test_the_same_seed_gives_the_same_dropouts_and_weights_on_the_process_backend() -> None:
    kw: dict[str, Any] = {
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial_weights": init(),
        "availability": 0.8,
        "client_durations": lambda cid, rng: rng.exponential(1.0),
        "round_deadline": 2.0,
        "seed": 9,
    }
    inline = covey.simulate(Seeded, 40, 3, **kw)
    process = covey.simulate(Seeded, 40, 3, backend="process", num_workers=2, **kw)
    for a, b in zip(inline.history.rounds, process.history.rounds, strict=True):
        assert a.fit_participants == b.fit_participants
        assert [f.error for f in a.fit_failures] == [f.error for f in b.fit_failures]
    for k in inline.weights:
        assert inline.weights[k].tobytes() == process.weights[k].tobytes()


def test_fedbuff_shares_the_model_offline_clients_fail_and_durations_are_the_same() -> None:
    kw: dict[str, Any] = {
        "strategy": covey.FedBuff(buffer_size=4, concurrency=8),
        "initial_weights": init(),
        "client_durations": lambda cid, rng: (1 + cid % 3) * rng.uniform(0.5, 1.5),
        "seed": 2,
    }
    plain = covey.simulate(Seeded, 30, 6, **kw)
    always = covey.simulate(Seeded, 30, 6, availability=1.0, **kw)
    for k in plain.weights:
        assert plain.weights[k].tobytes() == always.weights[k].tobytes()
    assert [r.aggregate_info for r in plain.history.rounds] == [
        r.aggregate_info for r in always.history.rounds
    ]
    flaky = covey.simulate(Seeded, 30, 6, availability=0.5, **kw)
    errors = [f.error for r in flaky.history.rounds for f in r.fit_failures]
    assert errors
    assert all("offline" in e for e in errors)


@pytest.mark.parametrize("bad", [-0.1, 1.5, np.zeros(3), "often"])
def test_bad_availability_is_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="availability"):
        ClientClock(availability=bad)


def test_client_state_membership_takes_numpy_ids_and_never_raises(tmp_path: Any) -> None:
    # `np.int64(7) in store` said False for a saved client, and `-1 in store` raised.
    from covey.sim import ClientState

    store = ClientState(tmp_path)
    store.save(7, {"count": np.array(3)})
    assert 7 in store
    assert np.int64(7) in store
    assert 8 not in store
    assert -1 not in store
    assert "7" not in store
    assert True not in store


def test_client_state_keeps_numpy_scalars_and_names_the_client_it_refuses(tmp_path: Any) -> None:
    # `state["n"] + 1` of a 0-d array is a NumPy scalar, which save() refused as
    # "weight 'n' must be a NumPy array", naming neither the store nor the client.
    from covey.sim import ClientState

    store = ClientState(tmp_path)
    store.save(4, {"n": np.array(2)[()] + 1, "lr": np.float32(0.5)})
    loaded = store.load(4)
    assert loaded is not None
    assert loaded["n"].shape == ()
    assert int(loaded["n"]) == 3
    assert loaded["lr"].dtype == np.float32
    with pytest.raises(WeightsError, match=r"client 4's state: weight 'n' must be a NumPy array"):
        store.save(4, {"n": 3})  # type: ignore[dict-item]
    assert int(store.load(4)["n"]) == 3  # type: ignore[index]  # the old state stays


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_client_state_file_is_named_with_what_to_do(tmp_path: Any, damage: str) -> None:
    # Before, "truncated: 7 bytes is shorter than the 32-byte prefix", naming no file.
    from covey import CodecError
    from covey.sim import ClientState

    store = ClientState(tmp_path)
    store.save(3, {"count": np.arange(100.0)})
    path = store.path(3)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:7]
    else:
        data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CodecError, match=r"client 3.s state file .*3\.covey is damaged .*delete"):
        store.load(3)
    path.unlink()
    assert store.load(3) is None


def test_fedbuff_checks_its_client_model_once_not_every_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from covey.transport._async import ClientModel

    checks: list[object] = []
    meta = type(ClientModel)
    check = meta.__instancecheck__

    def counted(cls: Any, instance: object) -> bool:
        if cls is ClientModel:
            checks.append(instance)
        return bool(check(cls, instance))

    monkeypatch.setattr(meta, "__instancecheck__", counted)
    result = covey.simulate(
        Seeded, 100, 20, covey.FedBuff(buffer_size=5, concurrency=10), init(), availability=0.9
    )
    assert len(result.history.rounds) == 21
    # Two checks a task (is it online, how long it takes): about 60 us each, per task.
    assert len(checks) <= 2, len(checks)
