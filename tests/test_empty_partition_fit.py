"""Clients with an empty partition train on nothing: 0 examples, no change, no metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import covey
from covey.data import dirichlet
from covey.models import logistic_evaluate, logistic_init

FEATURES, CLASSES = 4, 3


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, 200)


def _parts(y: np.ndarray) -> tuple[list[np.ndarray], set[int]]:
    parts = dirichlet(y, 20, 0.01, min_size=0)
    empty = {cid for cid, part in enumerate(parts) if len(part) == 0}
    assert empty  # the split leaves some clients without data
    return parts, empty


def _torch_client(torch: Any, x: np.ndarray, y: np.ndarray, **options: Any) -> Any:
    from covey.torch import TorchClient

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return TorchClient(
        torch.nn.Linear(FEATURES, CLASSES),
        torch.nn.CrossEntropyLoss(),
        lambda p: torch.optim.SGD(p, lr=0.1),
        torch.utils.data.DataLoader(data, batch_size=16),
        **options,
    )


def test_torch_client_without_training_data_replies_no_examples() -> None:
    # It raised "train_loader gave no examples", failing the client every round.
    torch = pytest.importorskip("torch")
    from covey.torch import to_weights

    x, y = _data()
    client = _torch_client(torch, x[:0], y[:0])
    start = to_weights(client.model, copy=True)
    result = client.fit(start, {"round": 1})
    assert (result.num_examples, result.metrics) == (0, {})
    assert result.delta is not None
    assert all(not np.any(d) for d in result.delta.values())
    asked = client.fit(start, {"round": 2, "loss_before_fit": "f_k"})
    assert (asked.num_examples, asked.metrics) == (0, {"f_k": 0.0})
    evaluated = client.evaluate(start, {"round": 1})
    assert (evaluated.num_examples, evaluated.metrics) == (0, {})


def _torch_strategy(name: str, fit_metrics: Any) -> covey.Strategy:
    from covey.privacy import central

    if name == "fedavg":
        return covey.FedAvg(fraction_fit=1.0, fit_metrics=fit_metrics)
    if name == "fedprox":
        return covey.FedProx(proximal_mu=0.1, fraction_fit=1.0, fit_metrics=fit_metrics)
    if name == "scaffold":
        return covey.Scaffold(num_clients=20, fraction_fit=1.0, fit_metrics=fit_metrics)
    return central(
        covey.FedAvg(fraction_fit=0.5, fit_metrics=fit_metrics),
        noise_multiplier=0.5,
        clip=0.5,
        delta=1e-3,
        adaptive=True,
        noise_seed=0,
    )


def _recorded() -> tuple[list[list[tuple[int, dict[str, Any]]]], Callable[[Any], dict[str, Any]]]:
    """A ``fit_metrics`` that keeps each round's (examples, metrics) of the fits, and the list."""
    seen: list[list[tuple[int, dict[str, Any]]]] = []

    def fit_metrics(results: Any) -> dict[str, Any]:
        seen.append([(n, dict(m)) for n, m in results])
        return {}

    return seen, fit_metrics


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "scaffold", "dp"])
def test_simulation_with_empty_torch_clients(name: str) -> None:
    torch = pytest.importorskip("torch")
    x, y = _data()
    parts, empty = _parts(y)
    seen, fit_metrics = _recorded()

    strategy = _torch_strategy(name, fit_metrics)
    built = {cid: _torch_client(torch, x[parts[cid]], y[parts[cid]]) for cid in range(20)}
    start = built[0].initial_weights()
    result = covey.simulate(lambda cid: built[cid], 20, 2, strategy, start, backend="inline")
    for record in (result.history[1], result.history[2]):
        assert not record.fit_failures
        assert record.aggregated
    for name_, value in result.weights.items():
        assert np.isfinite(value).all(), name_
    assert any(not np.array_equal(result.weights[k], start[k]) for k in start)
    replies = [reply for round_ in seen for reply in round_]
    assert any(n == 0 for n, _ in replies)
    for n, metrics in replies:
        assert ("train_loss" in metrics) == (n > 0)
    if name == "scaffold":  # an empty client's c_i stays zeros
        for cid in empty:
            control = built[cid]._control
            assert control is not None
            assert control.value is not None
            assert all(not np.any(v) for v in control.value.values())


def test_sklearn_client_without_training_data_is_built_and_replies_no_examples() -> None:
    # SklearnClient refused x_train of 0 rows ("need the same non-zero length").
    from sklearn.linear_model import SGDClassifier

    from covey.sklearn import SklearnClient, initial_params

    x, y = _data()
    client = SklearnClient(SGDClassifier(random_state=0), x[:0], y[:0], classes=[0, 1, 2])
    start = initial_params(SGDClassifier(), FEATURES, [0, 1, 2])
    result = client.fit(start, {"round": 1})
    assert (result.num_examples, result.metrics) == (0, {})
    assert result.weights is not None
    for k, v in start.items():
        assert np.array_equal(result.weights[k], v)
    asked = client.fit(start, {"round": 2, "loss_before_fit": "f_k"})
    assert asked.metrics == {"f_k": 0.0}
    evaluated = client.evaluate(start, {"round": 1})
    assert (evaluated.num_examples, evaluated.metrics) == (0, {})
    assert math.isnan(evaluated.loss)
    with pytest.raises(ValueError, match="lr"):
        client.fit(start, {"round": 3, "lr": -1.0})
    # no training data, but test data: it evaluates
    tested = SklearnClient(SGDClassifier(), x[:0], y[:0], [0, 1, 2], x_test=x, y_test=y)
    report = tested.evaluate(start, {"round": 1})
    assert report.num_examples == len(y)
    assert "accuracy" in report.metrics


def test_simulation_with_empty_sklearn_clients() -> None:
    from sklearn.linear_model import SGDClassifier

    from covey.sklearn import SklearnClient, initial_params

    x, y = _data()
    parts, empty = _parts(y)
    seen, fit_metrics = _recorded()

    def client_fn(cid: int) -> SklearnClient:
        model = SGDClassifier(loss="log_loss", random_state=cid)
        return SklearnClient(model, x[parts[cid]], y[parts[cid]], [0, 1, 2])

    strategy = covey.FedAvg(fraction_fit=1.0, fit_metrics=fit_metrics)
    start = initial_params(SGDClassifier(loss="log_loss"), FEATURES, [0, 1, 2])
    result = covey.simulate(client_fn, 20, 2, strategy, start, backend="inline")
    for record in (result.history[1], result.history[2]):
        assert not record.fit_failures
        assert record.aggregated
        assert record.evaluate_loss is not None
        assert math.isfinite(record.evaluate_loss)
    assert all(np.isfinite(v).all() for v in result.weights.values())
    for n, metrics in seen[-1]:
        assert ("train_accuracy" in metrics) == (n > 0)
    assert sum(n == 0 for n, _ in seen[-1]) == len(empty)


def test_logistic_evaluate_without_examples_is_nan() -> None:
    # It returned (0.0, 0.0): an accuracy of 0 for a model that saw no example.
    x, y = _data()
    loss, accuracy = logistic_evaluate(logistic_init(FEATURES, CLASSES), x[:0], y[:0])
    assert math.isnan(loss)
    assert math.isnan(accuracy)
