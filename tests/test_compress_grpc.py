"""Compressed FedAvg deployed over real gRPC on 127.0.0.1: it learns, and it sends fewer bytes.

Each scheme runs the digits workload of ``test_compress`` (10 clients, 10
rounds, every client every round) with a served server and connected clients
on threads in this process, without TLS. The final accuracy must be within the
margin the simulation test states of the uncompressed simulated run, the
history must record the exact array bytes of each round both ways, and the
final model must equal the compressed simulation's (clients join in order, so
ids and rounding seeds match). A client
that sends hostile encoded updates gets each refused as its own failure while
the run goes on; a `covey server --compression` run in processes, with mTLS,
resumes with the scheme it was started with.
"""

from __future__ import annotations

import json
import math
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

import covey
from _live import Joined, Served
from covey.clients._client import _HANDLERS
from covey.compress._runtime import _fit_compressed
from covey.compress._task import KIND
from covey.core._messages import Task
from covey.deploy import ServeResult
from covey.server._store import RunStore
from test_compress import ROUNDS, DigitsClient
from test_deploy import Federation, federation

pytestmark = pytest.mark.slow
__all__ = ["federation"]  # the fixture, used by the process test below

N = 10
MODEL_BYTES = (64 * 10 + 10) * 8
MARGINS = {"float16": 0.02, "bfloat16": 0.02, "q8": 0.02, "q4": 0.03, "topk:0.1": 0.05}


def _upload(spec: str) -> int:
    """The exact array bytes one client sends for the digits model (W: 640, b: 10 floats)."""
    if spec == "none":
        return MODEL_BYTES
    if spec in ("float16", "bfloat16"):
        return MODEL_BYTES // 4
    if spec in ("q8", "q4"):
        codes = 650 if spec == "q8" else 320 + 5
        return codes + 2 * 2 * 8  # codes, and a minimum and a step per array
    k = math.ceil(0.1 * 640) + math.ceil(0.1 * 10)
    return k * (4 + 8)  # uint32 index and float64 value


def _data() -> tuple[Any, Any, list[Any]]:
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    return x[perm], y[perm], np.array_split(np.arange(1437), N)


X, Y, PARTS = _data()


def _central(rnd: int, w: Any) -> tuple[float, dict[str, float]]:
    logits = X[1437:] @ w["W"] + w["b"]
    return 0.0, {"accuracy": float(np.mean(logits.argmax(axis=1) == Y[1437:]))}


def _client(k: int) -> DigitsClient:
    return DigitsClient(k, X[PARTS[k]], Y[PARTS[k]])


def _strategy(min_fit: int = N) -> covey.Strategy:
    return covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=min_fit, fraction_evaluate=0.0, min_available_clients=N
    )


def _served(compression: str | None, clients: list[Any], rounds: int = ROUNDS) -> ServeResult:
    """Serve ``rounds`` rounds to ``clients``, joined one by one: client k gets id k."""
    joins: queue.Queue[str] = queue.Queue()
    served = Served(
        _strategy(N - 1),
        rounds,
        initial_weights={"W": np.zeros((64, 10)), "b": np.zeros(10)},
        evaluate_fn=_central,
        compression=compression,
        round_timeout=60.0,
        on_event=lambda name, event, _: joins.put(name) if event == "join" else None,
    )
    joined = []
    for k, client in enumerate(clients):
        joined.append(Joined(served.port, client, name=f"site-{k:02d}", retry_for=3.0))
        assert joins.get(timeout=30) == f"site-{k:02d}"
    result = served.join(120)
    for j in joined:
        j.join(60)
    return result


def _deployed(compression: str | None, clients: list[Any], rounds: int = ROUNDS) -> covey.History:
    return _served(compression, clients, rounds).history


@pytest.fixture(scope="module")
def baseline() -> float:
    simulated = covey.simulate(
        _client, N, ROUNDS, _strategy(), {"W": np.zeros((64, 10)), "b": np.zeros(10)}, _central
    )
    return float(simulated.history.rounds[-1].central_metrics["accuracy"])


def test_uncompressed_deployed_history_counts_the_model_both_ways() -> None:
    history = _deployed(None, [_client(k) for k in range(N)], rounds=2)
    assert "compression" not in history.config
    for record in history.rounds[1:]:
        assert record.bytes_sent == N * MODEL_BYTES
        assert record.bytes_received == N * MODEL_BYTES


@pytest.mark.parametrize("spec", sorted(MARGINS))
def test_compressed_fedavg_deployed_converges_with_fewer_bytes(baseline: float, spec: str) -> None:
    deployed = _served(spec, [_client(k) for k in range(N)])
    history = deployed.history
    assert history.config["compression"] == spec
    accuracy = float(history.rounds[-1].central_metrics["accuracy"])
    assert baseline > 0.85
    assert accuracy >= baseline - MARGINS[spec]
    for record in history.rounds[1:]:
        assert not record.fit_failures
        assert record.bytes_sent == N * MODEL_BYTES  # the broadcast is not compressed
        assert record.bytes_received == N * _upload(spec)
    factor = MODEL_BYTES / _upload(spec)
    expected = {"float16": 4.0, "bfloat16": 4.0, "q8": 7.6, "q4": 14.0, "topk:0.1": 6.6}[spec]
    assert factor == pytest.approx(expected, rel=0.05)
    # Over the wire, the same updates as in a simulation with the same seeds and ids.
    simulated = covey.simulate(
        _client,
        N,
        ROUNDS,
        _strategy(),
        {"W": np.zeros((64, 10)), "b": np.zeros(10)},
        compression=spec,
    )
    for name in simulated.weights:
        np.testing.assert_allclose(deployed.weights[name], simulated.weights[name], atol=1e-12)


class Hostile(DigitsClient):
    """An honest client's data; its encoded updates are tampered with (see ``_tamper``)."""


def _tamper(plain: dict[str, Any], rnd: int) -> None:
    """Tamper with an encoded update, a different way each round.

    Round 1 an index out of range, 2 int64 indices, 3 fifty times the values,
    4 2-D indices, 5 another scheme's name, 6 more bytes than a reply may announce
    (the client sends that as its failure, as the task's header states the cap).
    """
    index, value = json.dumps(["part", "W", "index"]), json.dumps(["part", "W", "value"])
    if rnd == 1:
        plain[index] = plain[index].copy()
        plain[index][-1] = 10**6
    elif rnd == 2:
        plain[index] = plain[index].astype(np.int64)
    elif rnd == 3:
        plain[value] = np.tile(plain[value], 50)
    elif rnd == 4:
        plain[index] = plain[index].reshape(8, 8)
    elif rnd == 5:
        plain["scheme"] = "q8"
    else:
        plain[value] = np.zeros(2_000_000)


@pytest.fixture
def hostile_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(client: Any, task: Task) -> Any:
        plain = _fit_compressed(client, task)
        if isinstance(client, Hostile):
            _tamper(plain, task.round)
        return plain

    monkeypatch.setitem(_HANDLERS, KIND, handler)  # covey's own kind: not register_task


REFUSALS = {
    1: "'W' has an index out of range",
    2: "'W'/'index' must be 64 values of uint32 in one dimension, got shape (64,) of int64",
    3: "'W'/'value' must be 64 values of float64 in one dimension, got shape (3200,)",
    4: "got shape (8, 8) of uint32",
    5: "update encoded with 'q8', not 'top0.1'",
    6: "bytes of arrays in a reply to its fit_compressed task",
}


@pytest.mark.usefixtures("hostile_handler")
def test_hostile_encoded_updates_are_refused_and_the_run_goes_on(baseline: float) -> None:
    clients = [Hostile(0, X[PARTS[0]], Y[PARTS[0]]), *(_client(k) for k in range(1, N))]
    history = _deployed("topk:0.1", clients, rounds=6)
    hostile = history.clients and {v: k for k, v in history.clients.items()}["site-00"]
    for record in history.rounds[1:]:
        assert [f.name for f in record.fit_failures] == ["site-00"], record.round
        assert REFUSALS[record.round] in record.fit_failures[0].error, record.fit_failures
        if record.round < 6:
            assert record.bytes_received is not None
            assert record.bytes_received > (N - 1) * _upload("topk:0.1")
        assert len(record.fit_participants) == N - 1
        assert hostile not in record.fit_participants
    assert float(history.rounds[-1].central_metrics["accuracy"]) > 0.7  # it learns (0.1: chance)


def _stored_config(fed: Federation) -> dict[str, Any]:
    with RunStore.open(fed.run_dir) as store:
        return dict(store.config)


def test_covey_server_resumes_with_its_compression(federation: Any, tmp_path: Path) -> None:
    fed: Federation = federation(
        COVEY_TEST_ROUNDS="2", COVEY_TEST_MIN_FIT="2", COVEY_TEST_MIN_AVAILABLE="2"
    )
    server = fed.server("--compression", "topk:0.1")
    clients = [fed.client(k) for k in range(2)]
    assert fed.wait(server) == 0, fed.log("server.log")
    for c in clients:
        fed.wait(c, 60)
    _, history = fed.result()
    assert _stored_config(fed)["compression"] == "topk:0.1"
    assert [r.bytes_received for r in history.rounds[1:]] == [2 * _upload("topk:0.1")] * 2

    app = ["server", "--app", "digits_app:server_app", "--certs", str(fed.certs)]
    refused = fed._spawn([*app, "--resume", str(fed.run_dir), "--compression", "q8"], "q8.log")
    assert fed.wait(refused) == 2  # refused before listening: no restart mends it
    assert "started with compression 'topk:0.1'" in fed.log("q8.log")

    server = fed.server("--rounds", "3", resume=True)
    clients = [fed.client(k) for k in range(2)]
    assert fed.wait(server) == 0, fed.log("server.log")
    _, history = fed.result()
    assert _stored_config(fed)["compression"] == "topk:0.1"
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert history.rounds[3].bytes_received == 2 * _upload("topk:0.1")
    assert not history.rounds[3].fit_failures
