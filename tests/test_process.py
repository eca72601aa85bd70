"""The process backend: the same bits as inline, survives dying workers, cleans up."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import Reply, Task
from covey.data import Dataset, iid, load_digits
from covey.models import LogisticClient, logistic_evaluate, logistic_init
from covey.sim import ProcessTransport

Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def identical(a: Arrays, b: Arrays) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert np.array_equal(a[k], b[k]), k
        assert a[k].tobytes() == b[k].tobytes(), k


def comparable(history: covey.History) -> list[dict[str, Any]]:
    """Everything in a history except wall-clock durations."""
    out = []
    for record in history.rounds:
        row = dataclasses.asdict(record)
        del row["durations"]
        for failure in row["fit_failures"] + row["evaluate_failures"]:
            del failure["traceback"]  # the same error, raised in another process
        out.append(row)
    return out


def digits_run(data: Dataset, backend: str, num_workers: int | None = None) -> Any:
    parts = iid(data.y_train, 9, seed=1)

    def client_fn(cid: int) -> LogisticClient:
        x, y = data.client(parts[cid])
        return LogisticClient(cid, x, y, lr=0.2, seed=3)

    def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        loss, acc = logistic_evaluate(weights, data.x_test, data.y_test)
        return loss, {"accuracy": acc}

    strategy = covey.FedAvg(
        fraction_fit=0.5,
        fraction_evaluate=0.4,
        on_fit_config=lambda rnd: {"epochs": 1 + rnd % 2},
    )
    return covey.simulate(
        client_fn,
        9,
        4,
        strategy,
        logistic_init(data.num_features, data.num_classes),
        evaluate,
        backend=backend,  # type: ignore[arg-type]
        seed=5,
        num_workers=num_workers,
    )


@pytest.mark.parametrize("num_workers", [1, 3])
def test_digits_workload_is_bit_identical_to_inline(
    digits: Dataset, num_workers: int, shm_files: list[str]
) -> None:
    inline = digits_run(digits, "inline")
    process = digits_run(digits, "process", num_workers)
    assert shm_files, "the process backend should publish weights in shared memory"
    identical(process.weights, inline.weights)
    assert comparable(process.history) == comparable(inline.history)
    # The run did something: the model trained and only some clients took part.
    assert inline.history.metric("accuracy")[-1][1] > 0.8
    for rnd in range(1, 5):
        assert len(inline.history[rnd].fit_participants) == 4
        assert len(inline.history[rnd].evaluate_participants) == 3
        assert inline.history[rnd].fit_failures == []


class Stateful(covey.Client):
    """Remembers how often it trained; its update depends on that count."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.calls = 0

    def fit(self, weights: Any, config: Any) -> FitResult:
        self.calls += 1
        delta = {k: np.full_like(v, self.calls * (self.cid + 1)) for k, v in weights.items()}
        return FitResult(
            delta=delta, num_examples=self.cid + 1, metrics={"calls": float(self.calls)}
        )


@pytest.mark.parametrize("num_workers", [1, 3])
def test_stateful_clients_are_built_once_per_worker_and_reused(
    num_workers: int, shm_files: list[str]
) -> None:
    def run(backend: str) -> Any:
        return covey.simulate(
            Stateful,
            7,
            5,
            covey.FedAvg(fraction_fit=0.6, fraction_evaluate=0.0),
            {"w": np.zeros(3), "i": np.zeros(2, dtype=np.int32)},
            backend=backend,  # type: ignore[arg-type]
            seed=9,
            num_workers=num_workers,
        )

    inline, process = run("inline"), run("process")
    identical(process.weights, inline.weights)
    assert comparable(process.history) == comparable(inline.history)
    # A client sampled for the k-th time reports calls == k: state survived across rounds.
    times: dict[int, int] = {}
    for rnd in range(1, 6):
        record = process.history[rnd]
        for cid in record.fit_participants:
            times[cid] = times.get(cid, 0) + 1
        assert max(times.values()) >= 1
    assert max(times.values()) >= 3
    assert process.history[5].fit_metrics["calls"] > 1.0


class Exploding(covey.Client):
    """Client 3 fails in round 2: it raises, or kills its worker process."""

    def __init__(self, cid: int, how: str) -> None:
        self.cid = cid
        self.how = how

    def fit(self, weights: Any, config: Any) -> FitResult:
        if config["round"] == 2 and self.cid in (3, 5 if self.how == "both" else 3):
            if self.how == "exit" and self.cid == 3:
                os._exit(7)
            raise ValueError(f"client {self.cid} exploded")
        rng = np.random.default_rng([self.cid, config["round"]])
        local = {k: rng.normal(size=v.shape) for k, v in weights.items()}
        return FitResult(weights=local, num_examples=10 + self.cid)


def test_a_client_raising_in_a_worker_is_recorded(shm_files: list[str]) -> None:
    result = covey.simulate(
        lambda cid: Exploding(cid, "raise"),
        6,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(4)},
        backend="process",
        num_workers=2,
    )
    failures = result.history[2].fit_failures
    assert [f.cid for f in failures] == [3]
    assert failures[0].error == "ValueError: client 3 exploded"
    assert "Traceback (most recent call last)" in failures[0].traceback
    assert "client 3 exploded" in failures[0].traceback
    assert result.history[2].fit_participants == [0, 1, 2, 4, 5]
    assert result.history[3].fit_participants == list(range(6))


def test_a_killed_worker_is_recorded_and_the_run_continues(
    caplog: pytest.LogCaptureFixture, shm_files: list[str]
) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(
            lambda cid: Exploding(cid, "exit"),
            6,
            4,
            strategy,
            {"w": np.zeros(4)},
            backend="process",
            num_workers=2,
        )
    # Worker 1 holds clients 1, 3, 5: 1 replied before 3 killed it, 5 never ran.
    record = result.history[2]
    assert record.fit_participants == [0, 1, 2, 4]
    assert [(f.cid, f.error) for f in record.fit_failures] == [
        (3, "worker process died (exit code 7) running this client"),
        (5, "worker process died (exit code 7) running client 3, before this one"),
    ]
    assert record.aggregated
    for rnd in (3, 4):
        assert result.history[rnd].fit_participants == list(range(6))
        assert result.history[rnd].aggregated
    assert any("worker 1 had died (exit code 7)" in r.getMessage() for r in caplog.records)
    # The same as an inline run in which clients 3 and 5 fail in round 2.
    inline = covey.simulate(
        lambda cid: Exploding(cid, "both"), 6, 4, strategy, {"w": np.zeros(4)}, backend="inline"
    )
    assert [f.cid for f in inline.history[2].fit_failures] == [3, 5]
    identical(result.weights, inline.weights)


def test_an_unsendable_reply_is_recorded(shm_files: list[str]) -> None:
    class Unsendable(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Any, config: Any) -> FitResult:
            metrics: dict[str, Any] = {"f": (lambda: 0)} if self.cid == 1 else {}
            return FitResult(weights=dict(weights), num_examples=1, metrics=metrics)

    result = covey.simulate(
        Unsendable,
        3,
        1,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.ones(2)},
        backend="process",
        num_workers=2,
    )
    failures = result.history[1].fit_failures
    assert [f.cid for f in failures] == [1]
    # Replies travel as JSON and shared-memory arrays, never pickled: a function cannot,
    # and FitResult refuses it on every backend, naming the metric.
    assert "FitResult.metrics['f'] is function" in failures[0].error
    assert result.history[1].fit_participants == [0, 2]


def test_no_shared_memory_files_are_left_after_a_failed_run(shm_files: list[str]) -> None:
    with pytest.raises(covey.FederationError):
        covey.simulate(
            lambda cid: Exploding(cid, "raise"),
            4,
            3,
            covey.FedAvg(fraction_evaluate=0.0, accept_failures=False),
            {"w": np.zeros(4)},
            backend="process",
            num_workers=2,
        )
    assert shm_files


def test_process_transport_directly(shm_files: list[str]) -> None:
    with ProcessTransport(lambda cid: Exploding(cid, "raise"), 5, num_workers=9) as transport:
        assert transport.num_workers == 5  # never more workers than clients
        weights = covey.core._weights.freeze({"w": np.arange(3.0)})
        tasks = {cid: Task("fit", 1, {}, weights) for cid in (4, 0, 2)}
        tasks[1] = Task("properties", 0)
        replies = sorted(transport.exchange(tasks), key=lambda r: r.cid)
        assert [r.cid for r in replies] == [0, 1, 2, 4]
        assert replies[1].result == {}
        for reply in (replies[0], replies[2], replies[3]):
            assert isinstance(reply, Reply)
            assert reply.ok
            assert reply.result.num_examples == 10 + reply.cid
        # The same weights object is published once; a new one gets a new file.
        list(transport.exchange({0: Task("fit", 1, {}, weights)}))
        assert len(shm_files) == 1
        list(
            transport.exchange(
                {0: Task("fit", 1, {}, covey.core._weights.freeze({"w": np.ones(3)}))}
            )
        )
        assert len(shm_files) == 2
        assert not os.path.exists(shm_files[0])  # the stale file is gone already
        late = transport.exchange({0: Task("fit", 1, {}, weights)})
    # Read after the block, an exchange would start workers again that outlived it, with
    # their files: it is refused instead.
    with pytest.raises(RuntimeError, match="this ProcessTransport is closed"):
        next(late)
    assert transport.num_workers == 5
    assert not any(w.process.is_alive() for w in transport._workers)
    with pytest.raises(ValueError, match="num_workers must be at least 1"):
        ProcessTransport(lambda cid: Exploding(cid, "raise"), 5, num_workers=0)


def _payload_size(client: Any, task: Task) -> int:
    return sum(len(part) for part in task.payload.values())


MB = 1024 * 1024


def test_a_task_payload_a_deployed_server_cannot_send_fails_that_client_alone(
    shm_files: list[str],
) -> None:
    """The pipe carried up to 64 MiB of it; a deployed server sends at most 4 MiB of JSON."""
    covey.clients.register_task("payload_size", _payload_size)
    large = {f"part{i}": "z" * (MB - 100 * i) for i in range(5)}
    named = {"arrays": {"a": np.zeros(MB // 2 + 1)}}  # sent as arrays, as a deployed server does
    with ProcessTransport(lambda cid: covey.Client(), 3, num_workers=1) as transport:
        tasks = {
            0: Task("payload_size", 1, payload=large),
            1: Task("payload_size", 1, payload={"small": "z" * 10}),
            2: Task("payload_size", 1, payload=named),
        }
        replies = {r.cid: r for r in transport.exchange(tasks)}
    assert replies[0].error == (
        "cannot send the payload_size task to client 0: its payload: 5241936 bytes of JSON "
        "exceed the limit of 4194304; the largest entry takes 1048578 bytes (at 'part0')"
    )
    assert replies[1].result == 10
    assert replies[2].result == 1
