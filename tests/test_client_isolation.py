"""What a client or an ``evaluate_fn`` is given, and what it gives back, is its own.

Simulated clients may share objects (one model for every client, a buffer
they write their result into, a metrics dict they reuse): the server takes
each reply as it was when the client returned it, and no client, nor
``evaluate_fn``, can change the global model or another client's task by
rebinding entries of the dict it received. Every backend gives the same
numbers, those a plain NumPy FedAvg gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

BACKENDS = ["inline", "process"]


def run(client: Any, clients: int, backend: Any, **options: Any) -> Any:
    options.setdefault("strategy", covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0))
    kwargs: dict[str, Any] = {"num_workers": 2} if backend == "process" else {}
    return covey.simulate(
        client_fn=client,
        num_clients=clients,
        rounds=options.pop("rounds", 1),
        initial_weights=options.pop("initial_weights", {"w": np.zeros(3)}),
        backend=backend,
        **kwargs,
        **options,
    )


MODEL: dict[str, np.ndarray] = {"w": np.zeros(3)}
"""One model every simulated client loads, trains and returns without a copy."""


class SharedModelClient(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        MODEL["w"][...] = weights["w"]
        MODEL["w"] += self.cid + 1  # client k moves the model by k + 1
        return covey.FitResult(weights=MODEL, num_examples=10 + self.cid)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clients", [4, 20, 40])
def test_clients_returning_one_shared_buffer_are_averaged_as_they_returned_it(
    backend: str, clients: int
) -> None:
    examples = np.arange(clients) + 10.0
    expected = float(np.sum(examples * (np.arange(clients) + 1)) / np.sum(examples))
    result = run(SharedModelClient, clients, backend)
    assert result.weights["w"].tolist() == pytest.approx([expected] * 3, rel=1e-12)


KEPT: list[Any] = []


class Scribbler(covey.Client):
    """Keeps one reference to what it returns (``how``); writes over the last one kept."""

    how = "array"

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        if KEPT:  # the previous client's reply, written over after it was returned
            kept = KEPT[-1]
            kept = kept.weights if self.how == "result" else kept
            kept = kept["w"] if self.how in ("dict", "result") else kept
            kept[...] = -99.0
        moved = weights["w"] + self.cid + 1
        buffer = np.zeros(6)
        if self.how == "view":
            buffer[:3] = moved
            moved = buffer[:3]
        new = {"w": moved}
        result = covey.FitResult(weights=new, num_examples=10 + self.cid)
        KEPT.append({"array": moved, "dict": new, "result": result, "view": buffer}[self.how])
        return result


@pytest.mark.parametrize("how", ["array", "dict", "result", "view"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reply_written_over_after_it_was_returned_counts_as_returned(
    backend: str, how: str
) -> None:
    KEPT.clear()
    client = type(f"Keeps{how.title()}", (Scribbler,), {"how": how})
    clients = 12
    examples = np.arange(clients) + 10.0
    expected = float(np.sum(examples * (np.arange(clients) + 1)) / np.sum(examples))
    result = run(client, clients, backend)
    assert result.weights["w"].tolist() == pytest.approx([expected] * 3, rel=1e-12)


class RebindingClient(covey.Client):
    """Trains by rebinding the entries of the dict it was given (no array written)."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Mapping[str, Any]) -> Any:
        for name in weights:
            weights[name] = weights[name] - 0.2 * (self.cid + 1)
        return covey.FitResult(weights=weights, num_examples=1)

    def evaluate(self, weights: Any, config: Mapping[str, Any]) -> Any:
        weights["w"] = weights["w"] + 100.0  # changes nothing the server holds
        return covey.EvaluateResult(loss=float(weights["w"][0]), num_examples=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_rebinding_its_weights_entries_touches_no_other_client(backend: str) -> None:
    result = run(
        RebindingClient,
        3,
        backend,
        rounds=2,
        strategy=covey.FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_evaluate_clients=1),
    )
    # Each round moves the model by the mean of 0.2, 0.4 and 0.6.
    assert result.weights["w"].tolist() == pytest.approx([-0.8] * 3)
    assert result.history.failures() == []
    assert result.history.rounds[-1].evaluate_loss == pytest.approx(100.0 - 0.8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_fn_cannot_change_the_global_model(backend: str) -> None:
    class Plus(covey.Client):
        def __init__(self, cid: int) -> None:
            pass

        def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
            return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)

    def central(rnd: int, weights: dict[str, np.ndarray]) -> Any:
        weights["w"] = np.zeros(3) - 7.0  # rebinding an entry
        weights["w_ema"] = np.zeros(3)  # adding one
        return 0.0, {}

    result = run(Plus, 2, backend, rounds=2, evaluate_fn=central)
    assert set(result.weights) == {"w"}
    assert result.weights["w"].tolist() == [2.0, 2.0, 2.0]
    assert result.history.failures() == []


SEEN: dict[str, Any] = {}


class ReusedMetricsClient(covey.Client):
    """Returns one module-level metrics dict, changed by every later client."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        SEEN["cid"] = float(self.cid)
        SEEN["tag"] = np.str_(f"c{self.cid}")
        return covey.FitResult(weights=dict(weights), num_examples=1, metrics=SEEN)

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        SEEN["cid"] = float(self.cid)
        return covey.EvaluateResult(loss=0.0, num_examples=1, metrics=SEEN)


@pytest.mark.parametrize("strategy", [covey.FedAvg, covey.FedMedian])
def test_metrics_are_taken_when_the_client_returns_them(strategy: Any) -> None:
    seen: list[tuple[int, dict[str, Any]]] = []

    def fit_metrics(results: Any) -> dict[str, Any]:
        seen.extend((n, dict(m)) for n, m in results)
        return {}

    chosen = strategy(fraction_fit=1.0, fraction_evaluate=1.0, fit_metrics=fit_metrics)
    result = run(ReusedMetricsClient, 4, "inline", strategy=chosen)
    assert [m["cid"] for _, m in seen] == [0.0, 1.0, 2.0, 3.0]
    assert [type(m["tag"]) for _, m in seen] == [str] * 4  # as the process backend gives
    assert result.history.rounds[-1].evaluate_metrics["cid"] == pytest.approx(1.5)


def test_results_copy_their_metrics_and_refuse_a_loss_that_is_text() -> None:
    metrics: dict[str, Any] = {"a": np.float32(0.5), "b": np.array(2.0)}
    result = covey.FitResult(weights={"w": np.zeros(1)}, num_examples=1, metrics=metrics)
    metrics["a"] = 9.0
    assert result.metrics["a"] == 0.5
    assert type(result.metrics["a"]) is float
    metrics["b"] += 1.0
    assert float(result.metrics["b"]) == 2.0
    texts: list[Any] = ["0.25", b"0.25", True]
    for loss in texts:
        with pytest.raises(TypeError, match="loss must be a number"):
            covey.EvaluateResult(loss=loss, num_examples=1)
    scalar: Any = np.float32(0.25)
    assert covey.EvaluateResult(loss=scalar, num_examples=1).loss == 0.25


class Step(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        assert config["layers"] == [1, 2], config  # a tuple arrives as a list everywhere
        assert type(config["lr"]) is float
        return covey.FitResult(weights={"w": weights["w"] - config["lr"]}, num_examples=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_configs_reach_clients_alike_on_every_backend(backend: str) -> None:
    def config(rnd: int) -> dict[str, Any]:
        return {"layers": (1, 2), "lr": np.float32(0.5)}

    result = run(
        Step, 2, backend, strategy=covey.FedAvg(fraction_evaluate=0.0, on_fit_config=config)
    )
    assert result.history.failures() == []
    assert result.weights["w"].tolist() == [-0.5] * 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"lr_by": {0: 0.1}}, r"on_fit_config .*key 0 \(int\) in 'lr_by'"),
        ({"layers": {"a", "b"}}, r"on_fit_config .*type set .*'layers'"),
    ],
)
def test_a_config_no_client_can_be_sent_stops_the_run_naming_it(
    backend: str, config: dict[Any, Any], match: str
) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, on_fit_config=lambda rnd: config)
    with pytest.raises(covey.FederationError, match=match) as caught:
        run(Step, 2, backend, strategy=strategy)
    assert caught.value.history.stopped_reason == str(caught.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("timeout", [1e7, 1e12, math.inf])
def test_a_round_timeout_of_years_is_waited_out(backend: str, timeout: float) -> None:
    result = run(
        Step,
        2,
        backend,
        round_timeout=timeout,
        strategy=covey.FedAvg(
            fraction_evaluate=0.0, on_fit_config=lambda rnd: {"layers": [1, 2], "lr": 1.0}
        ),
    )
    assert result.weights["w"].tolist() == [-1.0] * 3


def test_simulate_refuses_an_evaluation_that_could_never_run_and_a_file_as_run_dir(
    tmp_path: Path,
) -> None:
    strategy = covey.FedAvg(fraction_evaluate=1.0, min_evaluate_clients=5)
    with pytest.raises(ValueError, match="min_evaluate_clients=5 exceeds num_clients=3"):
        run(Step, 3, "inline", strategy=strategy)
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    with pytest.raises(ValueError, match="cannot be a folder: it or a folder above it is a file"):
        run(Step, 2, "inline", run_dir=file)
    with pytest.raises(ValueError, match="cannot be a folder"):
        run(Step, 2, "inline", run_dir=file / "below")
