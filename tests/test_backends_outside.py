"""The same client code on the inline and process backends, checked from outside.

Stateful clients, top-k error feedback and SCAFFOLD's control variates carry
their per-client state across rounds identically; the same seed gives the same
bits (sampling, failing clients, evaluation on a sample); a researcher's
mistakes give one clear error naming the client, the same on both backends; and
federations of 20,000 clients run with clients built lazily. The Ray backend's
twin of these checks is at the end of ``test_ray.py``, on its two-node cluster.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

import covey
from _backends_outside import (
    MISTAKES,
    Diary,
    Noisy,
    ScaffoldClient,
    SlottedNoisy,
    Stateful,
    mistaken_fn,
    rows,
    run,
    same_bits,
)
from covey import FitResult
from covey.sim import SimulationResult

BACKENDS = ("inline", "process")


def expected_stateful(result: SimulationResult) -> np.ndarray:
    """FedAvg of :class:`Stateful` replayed by hand from the history's participants."""
    w = np.zeros(6)
    momentum: dict[int, np.ndarray] = {}
    for record in result.history.rounds[1:]:
        sampled = sorted(record.fit_participants + [f.cid for f in record.fit_failures])
        updates = {}
        for cid in sampled:  # every sampled client steps its momentum, failing or not
            grad = np.random.default_rng([cid, record.round]).normal(size=6)
            momentum[cid] = grad if cid not in momentum else 0.9 * momentum[cid] + grad
            updates[cid] = w - 0.1 * momentum[cid]
        n = {cid: cid + 1 for cid in record.fit_participants}
        w = np.sum([n[c] * updates[c] for c in record.fit_participants], axis=0) / sum(n.values())
    return w


def test_stateful_clients_give_the_same_bits_on_every_backend_and_run() -> None:
    inline = run(Stateful, "inline")
    again = run(Stateful, "inline")
    process = run(Stateful, "process")
    same_bits(inline, again)
    same_bits(inline, process)
    # The state on each client object carries over between the rounds it is sampled in,
    # including a client sampled in rounds 1 and 3 and not in 2.
    sampled = [
        set(r.fit_participants) | {f.cid for f in r.fit_failures} for r in inline.history.rounds
    ]
    assert any(c in sampled[1] and c in sampled[3] and c not in sampled[2] for c in range(8))
    assert [f.cid for f in inline.history.rounds[2].fit_failures] == [3]
    np.testing.assert_allclose(inline.weights["w"], expected_stateful(inline), rtol=1e-12)
    # Built for every task, a client forgets; the process backend keeps every client.
    forgetful = run(Stateful, "inline", client_cache=0)
    assert rows(forgetful)[1][:4] == rows(inline)[1][:4]  # round 1 fit: nothing to forget yet
    assert forgetful.weights["w"].tobytes() != inline.weights["w"].tobytes()
    with pytest.raises(ValueError, match="client_cache applies to"):
        run(Stateful, "process", client_cache=0)
    # Evaluation ran on a sample, and a different seed draws a different sample.
    assert all(len(r.evaluate_participants) == 4 for r in inline.history.rounds[1:])
    other = run(Stateful, "inline", seed=2)
    assert [r.fit_participants for r in other.history.rounds] != [
        r.fit_participants for r in inline.history.rounds
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_error_feedback_carries_over_per_client(backend: str) -> None:
    kw: dict[str, Any] = {
        "compression": "topk:0.2",
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial": {"w": np.zeros(40)},
    }
    inline = run(Noisy, "inline", **kw)
    same_bits(inline, run(Noisy, backend, **kw))
    # Rebuilding the clients every task drops their residuals: the result differs.
    forgetful = run(Noisy, "inline", client_cache=0, **kw)
    assert inline.weights["w"].tobytes() != forgetful.weights["w"].tobytes()


def test_top_k_refuses_a_client_that_takes_no_weak_reference() -> None:
    # Its error feedback was kept under id(client): a client built later at the same
    # address (client_cache=0, or the next run) took over another client's residual.
    kw: dict[str, Any] = {
        "compression": "topk:0.2",
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial": {"w": np.zeros(40)},
        "client_cache": 0,
    }
    with pytest.raises(covey.FederationError, match="__weakref__") as info:
        run(SlottedNoisy, "inline", **kw)
    failures = info.value.history.rounds[-1].fit_failures
    assert failures
    assert all("SlottedNoisy" in f.error for f in failures)
    # With a weak reference the same client loses its residual when rebuilt, nothing more.
    assert run(Noisy, "inline", **kw).history.rounds[-1].fit_failures == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaffold_control_variates_carry_over_per_client(backend: str) -> None:
    strategy = covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0.0)
    inline = run(ScaffoldClient, "inline", strategy=strategy)
    strategy = covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0.0)
    same_bits(inline, run(ScaffoldClient, backend, strategy=strategy))


def test_scaffold_control_variates_on_disk_survive_rebuilt_clients(tmp_path: Any) -> None:
    def scaffold() -> dict[str, Any]:
        return {"strategy": covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0)}

    kept = run(ScaffoldClient, "inline", **scaffold())
    rebuilt = run(
        lambda cid: ScaffoldClient(cid, str(tmp_path)), "inline", client_cache=0, **scaffold()
    )
    same_bits(kept, rebuilt)
    forgetful = run(ScaffoldClient, "inline", client_cache=0, **scaffold())
    assert forgetful.weights["w"].tobytes() != kept.weights["w"].tobytes()


@pytest.mark.parametrize("mode", sorted(MISTAKES))
def test_a_mistake_fails_its_client_alone_the_same_on_every_backend(mode: str) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    results = [
        run(mistaken_fn(mode), b, strategy=strategy, num_clients=3, rounds=2) for b in BACKENDS
    ]
    for result in results:
        for record in result.history.rounds[1:]:
            assert record.fit_participants == [0, 2]
            [failure] = record.fit_failures
            assert failure.cid == 1
            assert MISTAKES[mode] in failure.error, failure.error
        # The others' update is intact: 0 + 1 per round, whatever client 1 did.
        assert result.weights["w"].tolist() == [2.0] * 6
    assert rows(results[0]) == rows(results[1])


def test_a_client_unlocking_the_global_weights_cannot_change_them() -> None:
    initial = {"w": np.zeros(6)}
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    result = run(mistaken_fn("unlock"), "inline", strategy=strategy, num_clients=3, initial=initial)
    assert result.weights["w"].tolist() == [4.0] * 6  # the others' 0 + 1 per round, 4 rounds
    assert initial["w"].tolist() == [0.0] * 6  # the caller's array is untouched too


def test_unpicklable_clients_run_on_the_process_backend() -> None:
    # The workers are forked: neither client_fn nor the clients are ever pickled.
    same_bits(
        run(mistaken_fn("unpicklable"), "inline", num_clients=3),
        run(mistaken_fn("unpicklable"), "process", num_clients=3),
    )


def test_a_replaced_process_worker_rebuilds_its_clients_with_client_fn(tmp_path: Any) -> None:
    # As documented: the clients of a dead worker start again from client_fn in the
    # new worker, so state kept on the client object restarts (ClientState survives).
    result = run(
        lambda cid: Diary(cid, str(tmp_path)),
        "process",
        strategy=covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1),
        num_clients=2,
        rounds=3,
    )
    [failure] = result.history.rounds[2].fit_failures
    assert failure.cid == 1
    assert "worker process died" in failure.error
    assert result.history.rounds[3].fit_participants == [0, 1]
    calls = {p.name: int(p.read_text()) for p in tmp_path.glob("*-*")}
    assert calls == {"0-1": 1, "0-2": 2, "0-3": 3, "1-1": 1, "1-2": 2, "1-3": 1}


class Tiny(covey.Client):
    """A client built from its id alone, for large federations."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        return FitResult(delta={"w": rng.normal(size=4)}, num_examples=1 + self.cid % 5)


@pytest.mark.slow
def test_20000_clients_are_built_lazily_and_agree_across_backends() -> None:
    built: Counter[int] = Counter()

    def client_fn(cid: int) -> Tiny:
        built[cid] += 1
        return Tiny(cid)

    strategy = covey.FedAvg(fraction_fit=0.005, fraction_evaluate=0.0)
    kw: dict[str, Any] = {"strategy": strategy, "num_clients": 20_000, "rounds": 3}
    kw["initial"] = {"w": np.zeros(4)}
    inline = run(client_fn, "inline", **kw)
    sampled = Counter(c for r in inline.history.rounds for c in r.fit_participants)
    assert sum(sampled.values()) == 300
    assert built == Counter(dict.fromkeys(sampled, 1))  # each sampled client built once
    built.clear()
    cached = run(client_fn, "inline", client_cache=0, **kw)
    assert built == sampled  # built for every task it ran
    same_bits(inline, cached)
    same_bits(inline, run(Tiny, "process", **kw))


def test_top_k_keeps_one_residual_per_client_id_of_a_shared_client_object() -> None:
    # client_fn returning one object for every id: inline shared one residual among all
    # ids, each process worker one among its ids, so the backends disagreed.
    shared = Noisy(0)
    kw: dict[str, Any] = {
        "compression": "topk:0.2",
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial": {"w": np.zeros(40)},
    }
    inline = run(lambda cid: shared, "inline", **kw)
    same_bits(inline, run(lambda cid: shared, "process", **kw))


def test_top_k_residuals_of_one_run_do_not_leak_into_the_next() -> None:
    # Clients built once and handed out by client_fn run after run: the second run
    # started with the residuals the first left on the objects.
    clients = [Noisy(cid) for cid in range(8)]
    kw: dict[str, Any] = {
        "compression": "topk:0.2",
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial": {"w": np.zeros(40)},
    }
    first = run(clients.__getitem__, "inline", **kw)
    same_bits(first, run(clients.__getitem__, "inline", **kw))
    same_bits(first, run(Noisy, "inline", **kw))
