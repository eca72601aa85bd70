"""A built-in client with no data to evaluate reports no accuracy nor loss, not 0.0."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

import covey
from covey.data import dirichlet
from covey.models import LogisticClient, logistic_init


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 4)), rng.integers(0, 3, 200)


def test_logistic_client_without_data_reports_no_accuracy() -> None:
    # It reported accuracy=0.0 (and loss 0.0) over 0 examples, which a per-client
    # metric function (the variance of the accuracies) took for a client that got
    # everything wrong.
    x, y = _data()
    client = LogisticClient(0, x[:0], y[:0])
    weights = logistic_init(4, 3)
    result = client.evaluate(weights, {"round": 1})
    assert result.num_examples == 0
    assert result.metrics == {}
    assert math.isnan(result.loss)
    fitted = client.fit(weights, {"round": 1})
    assert fitted.num_examples == 0
    assert fitted.metrics == {}
    only_val = LogisticClient(0, x, y, x[:0], y[:0]).evaluate(weights, {"round": 1})
    assert (only_val.num_examples, only_val.metrics) == (0, {})


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_empty_partitions_stay_out_of_per_client_accuracies(backend: Any) -> None:
    x, y = _data()
    parts = dirichlet(y, 20, 0.01, min_size=0)
    empty = {cid for cid, part in enumerate(parts) if len(part) == 0}
    assert empty  # the split leaves some clients without data
    seen: list[list[tuple[int, dict[str, Any]]]] = []

    def per_client(results: Sequence[tuple[int, covey.Metrics]]) -> dict[str, Any]:
        seen.append([(n, dict(m)) for n, m in results])
        accuracies = [float(m["accuracy"]) for _, m in results if "accuracy" in m]
        return {"accuracy_var": float(np.var(accuracies)), "reported": len(accuracies)}

    strategy = covey.FedAvg(fraction_fit=1.0, evaluate_metrics=per_client)
    result = covey.simulate(
        lambda cid: LogisticClient(cid, x[parts[cid]], y[parts[cid]]),
        20,
        1,
        strategy,
        logistic_init(4, 3),
        backend=backend,
        num_workers=2,
    )
    record = result.history[1]
    assert record.evaluate_metrics["reported"] == 20 - len(empty)
    assert record.evaluate_loss is not None
    assert math.isfinite(record.evaluate_loss)
    for n, metrics in seen[-1]:
        assert ("accuracy" in metrics) == (n > 0)


def test_sklearn_client_without_test_data_reports_no_accuracy() -> None:
    # It failed every round with scikit-learn's "Found array with 0 sample(s)".
    from sklearn.linear_model import SGDClassifier

    from covey.sklearn import SklearnClient, initial_params

    x, y = _data()
    model = SGDClassifier(loss="log_loss", random_state=0)
    client = SklearnClient(model, x, y, [0, 1, 2], x_test=x[:0], y_test=y[:0])
    start = initial_params(SGDClassifier(loss="log_loss"), 4, [0, 1, 2])
    result = client.evaluate(start, {"round": 1})
    assert (result.num_examples, result.metrics) == (0, {})
    assert math.isnan(result.loss)


def test_torch_client_without_test_data_reports_no_accuracy() -> None:
    # It failed every round with "the data loader gave no examples to evaluate".
    torch = pytest.importorskip("torch")
    from covey.torch import TorchClient, evaluate_model, to_weights

    model = torch.nn.Linear(4, 3)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    loss_fn = torch.nn.CrossEntropyLoss()
    client = TorchClient(
        model, loss_fn, lambda p: torch.optim.SGD(p, lr=0.1), batches, test_loader=[]
    )
    result = client.evaluate(to_weights(model, copy=True), {"round": 1})
    assert (result.num_examples, result.metrics) == (0, {})
    assert math.isnan(result.loss)
    # the server's central evaluation of an empty loader is still a mistake
    with pytest.raises(ValueError, match="gave no examples to evaluate"):
        evaluate_model(model, loss_fn, [])
