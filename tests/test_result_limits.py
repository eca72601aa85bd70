"""A metric too large for the reader is refused where the result is sent, naming it.

The process backend's server side and a deployed server read results with the
network's limits (strings of at most 1 MiB); a client's metric over them used
to reach the reader as "unreadable reply: a string of N characters exceeds the
limit", naming neither the metric nor the side at fault.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined, Served
from covey.clients._client import _HANDLERS
from covey.core._messages import Task
from covey.sim import ProcessTransport, inline_transport
from covey.sim._sendable import unsendable
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc._wire import WireError, WireLimits, dumps_within, result_to_wire
from covey.transport.grpc._wirecheck import check_config, check_payload, check_result

MB = 1 << 20


class Big(covey.Client):
    """Client 0 reports a metric of 2 MiB of text; the others a small one."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        blob = "x" * (2 * MB) if self.cid == 0 else "x"
        return covey.FitResult(weights=weights, num_examples=1, metrics={"blob": blob})


def _init() -> dict[str, Any]:
    return {"w": np.zeros(3)}


def test_result_to_wire_with_limits_names_the_metric() -> None:
    result = covey.FitResult(weights=_init(), num_examples=1, metrics={"blob": b"y" * 2 * MB})
    said = r"2097152 bytes .* exceeds the limit .*\(at 'metrics'.'blob'\)"
    with pytest.raises(WireError, match=said):
        result_to_wire(result, WireLimits())
    text, _ = result_to_wire(result)  # without limits: encoded as before
    assert len(text) > 2 * MB


def test_a_process_backend_metric_over_the_limit_fails_its_client_naming_it() -> None:
    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0)
    result = covey.simulate(Big, 2, 1, strategy, _init(), backend="process", num_workers=1)
    (failure,) = result.history.rounds[1].failures
    assert failure.cid == 0
    assert "2097152 characters exceeds the limit of 1048576 characters" in failure.error
    assert failure.error.endswith("(at 'metrics'.'blob')")


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_metric_over_the_limit_fails_that_client_naming_it() -> None:
    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0)
    run = Served(strategy, 1, round_timeout=60.0, initial_weights=_init())
    joined = [Joined(run.port, Big(k), name=f"site-{k}") for k in range(2)]
    try:
        history = run.join(120).history
    finally:
        for j in joined:
            j.join(30)
    (failure,) = history.rounds[1].failures
    assert "cannot send the result" in failure.error
    assert failure.error.endswith("(at 'metrics'.'blob')")
    for j in joined:
        assert j.error is None  # the client's stream stays open


TOO_LARGE: dict[int, dict[str, Any]] = {
    1: {"note": "x" * (2 * MB)},
    2: {"blob": b"y" * (5 * MB)},
    3: {"hist": np.zeros(2 * MB)},
    4: {"k" * (2 * MB): 1.0},
    5: {"curve": np.array([np.nan, 1.0])},
    6: {"deep": np.zeros((1,) * 31)},
}
"""Metrics no backend can send, by the client that reports them (client 0 reports none)."""


class Oversized(covey.Client):
    """Client ``cid`` reports ``TOO_LARGE[cid]`` from fit and from evaluate; client 0 is fine."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        update = {"w": np.full(3, float(self.cid + 1))}
        return covey.FitResult(delta=update, num_examples=1, metrics=TOO_LARGE.get(self.cid, {}))

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.5, num_examples=1, metrics=TOO_LARGE.get(self.cid, {}))


def test_a_metric_too_large_to_send_fails_its_client_alike_inline_and_in_processes() -> None:
    # The inline backend took these results, so its global model averaged in updates the
    # process backend (and a deployed federation) refused: the backends gave other models.
    failed: dict[str, list[tuple[int, str, str]]] = {}
    weights = {}
    for backend in ("inline", "process"):
        strategy = covey.FedAvg(fraction_evaluate=1.0, min_fit_clients=1, min_evaluate_clients=1)
        result = covey.simulate(Oversized, 7, 1, strategy, _init(), backend=backend)
        record = result.history.rounds[1]
        failed[backend] = sorted((f.cid, f.stage, f.error) for f in record.failures)
        weights[backend] = result.weights["w"]
    assert failed["inline"] == failed["process"]
    assert [(cid, stage) for cid, stage, _ in failed["inline"]] == [
        (cid, stage) for cid in sorted(TOO_LARGE) for stage in ("evaluate", "fit")
    ]
    said = {cid: error for cid, stage, error in failed["inline"] if stage == "fit"}
    assert said[1] == (
        "cannot send the result: a string of 2097152 characters exceeds the limit of "
        "1048576 characters (at 'metrics'.'note')"
    )
    assert said[3].endswith("exceeds the limit of 4096 elements (at 'metrics'.'hist')")
    assert said[4] == (  # refused as a metric's name past 1,024 characters, before the wire
        f"ValueError: FitResult.metrics names a metric {'k' * 40!r}... of 2097152 characters, "
        "over the limit of 1024: choose a shorter name"
    )
    assert "NaN or infinity" in said[5]
    assert said[6].endswith("nested deeper than 32 levels, the limit (at 'metrics')")
    np.testing.assert_array_equal(weights["inline"], [1.0, 1.0, 1.0])  # client 0's update
    np.testing.assert_array_equal(weights["process"], weights["inline"])


SMALL = WireLimits(max_bytes=400, max_depth=5, max_string=20, max_elements=10)


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"a": 1.0, "b": "x" * 20, "c": b"y" * 15, "d": np.arange(10), "e": float("nan")},
        {"a": "x" * 21},
        {"a": b"y" * 16},
        {"a": np.arange(6), "b": np.ones(5)},
        {"a": np.zeros((1, 1))},
        {"a": np.zeros((1, 1, 1))},
        {"a": np.zeros((1, 0, 1, 1, 1))},
        {"a": np.array([1.0, np.inf])},
        {"x" * 21: 1},
        {f"m{i}": i for i in range(30)},
        {f"m{i}": -(10**300) for i in range(3)},
        {"a": "\U0001f600" * 20},
        {"a": True, "b": np.zeros(0)},
    ],
)
def test_checking_a_result_refuses_exactly_what_encoding_it_refuses(metrics: Any) -> None:
    for result in (
        covey.FitResult(delta=_init(), num_examples=1, metrics=metrics),
        covey.EvaluateResult(loss=float("inf"), num_examples=3, metrics=metrics),
        {"metrics": metrics, "arrays": _init()},  # a task kind's own result
    ):
        refused = _refusal(result_to_wire, result)
        assert _refusal(check_result, result) == refused


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"lr": 0.1, "b": "x" * 20, "c": b"y" * 15, "d": np.arange(10), "e": float("nan")},
        {"a": "x" * 21},
        {"a": b"y" * 16},
        {"a": [np.arange(6)], "b": {"c": np.ones(5)}},
        {"a": np.zeros((1, 1, 1, 1))},
        {"a": {"b": {"c": {"d": {"e": 1.0}}}}},
        {"a": {"b": {"c": {"d": {"e": {"f": 1.0}}}}}},
        {"a": np.array([1.0, np.inf])},
        {"a": np.zeros(2, complex)},
        {"x" * 21: 1},
        {f"m{i}": "x" * 19 for i in range(30)},
        {"a": object()},
        {"a": [1, {2, 3}]},
        {0: 1.0, "b": None},
    ],
)
def test_checking_a_config_refuses_exactly_what_encoding_it_refuses(config: Any) -> None:
    """As a deployed server sends a task's config (``task_header``), measured where it can be."""
    assert _refusal(check_config, config) == _refusal(dumps_within, config)


@pytest.mark.parametrize(
    "payload",
    [
        "x" * 21,
        ["x" * 19] * 30,
        [1, {2, 3}],
        {"a": object()},
        {"a": {"b": [1.0, 2.0]}},
        3,
    ],
)
def test_checking_a_payload_refuses_exactly_what_encoding_it_refuses(payload: Any) -> None:
    """As a deployed server sends a task's payload (``task_header``), measured where it can be."""
    assert _refusal(check_payload, payload) == _refusal(dumps_within, payload)


def _payload_size(client: Any, task: Task) -> int:
    return len(str(task.payload))


def test_a_task_payload_a_deployed_server_cannot_send_fails_its_client_on_every_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The inline backend handed its client a payload a deployed server (and the process
    # backend) could not send: a task kind of one's own worked simulated, failed deployed.
    monkeypatch.setitem(_HANDLERS, "payload_size", _payload_size)
    large = {f"part{i}": "z" * (MB - 100 * i) for i in range(5)}
    named = {"arrays": {"a": np.zeros(MB // 2 + 1)}}  # sent as arrays, as a deployed server does
    payloads: list[Any] = [large, {"small": "z" * 10}, named, {"model": object()}, "y" * (2 * MB)]
    tasks = {cid: Task("payload_size", 1, payload=p) for cid, p in enumerate(payloads)}
    inline = inline_transport(lambda cid: covey.Client(), 5)
    errors = {"inline": {r.cid: r.error for r in inline.exchange(tasks)}}
    with ProcessTransport(lambda cid: covey.Client(), 5, num_workers=1) as processes:
        errors["process"] = {r.cid: r.error for r in processes.exchange(tasks)}
    assert errors["inline"] == errors["process"]
    assert errors["inline"][0] == (
        "cannot send the payload_size task to client 0: its payload: 5241936 bytes of JSON "
        "exceed the limit of 4194304; the largest entry takes 1048578 bytes (at 'part0')"
    )
    assert errors["inline"][1] is None
    assert errors["inline"][2] is None
    assert errors["inline"][3] == (
        "cannot send the payload_size task to client 3: its payload: cannot send a value of "
        "type object over the network (at 'model')"
    )
    assert errors["inline"][4] is not None
    assert errors["inline"][4].startswith("cannot send the payload_size task to client 4: its ")


def _refusal(call: Any, result: Any) -> str | None:
    """The WireError ``call(result, SMALL)`` raises, as text; None if it raises none."""
    try:
        call(result, SMALL)
    except WireError as exc:
        return str(exc)
    return None


def _histogram(client: Any, task: Any) -> dict[str, Any]:
    """A task of one's own that carries no model, answered with 10000 counts in its JSON."""
    return {"hist": {"counts": np.arange(10_000)}}


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_result_of_a_task_without_a_model_is_read_with_the_caps_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As its client checks it, and as every simulation backend does (``result_limits(None)``).

    The server read it with the last model's limit (arrays of at most 4096 elements for
    a model of 3): the client sent it, and was dropped for a "malformed reply".
    """
    monkeypatch.setitem(_HANDLERS, "histogram", _histogram)
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    joined = Joined(transport.port, name="site", max_attempts=1)
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        (fit,) = transport.exchange({cid: Task("fit", 1, weights=_init())}, timeout=20)
        assert fit.ok
        (reply,) = transport.exchange({cid: Task("histogram", 1)}, timeout=20)
        assert reply.error is None
        assert np.array_equal(reply.result["hist"]["counts"], np.arange(10_000))
        assert transport.clients() == [cid]
    finally:
        transport.close()
        joined.join(30)
    assert unsendable(0, "histogram", _histogram(None, None), None) is None  # simulated
