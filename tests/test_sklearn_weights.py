"""SklearnClient with per-example sample weights."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier

import covey
from covey.sklearn import SklearnClient, initial_params, prime, set_params
from covey.strategies import weighted_metrics

CLASSES = [0, 1]


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    x = (data.data[:200] - data.data.mean(axis=0)) / data.data.std(axis=0)
    weights = np.random.default_rng(0).uniform(0.0, 3.0, size=200)
    return x, data.target[:200], weights


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGDClassifier(loss="log_loss", random_state=0),
        lambda: LogisticRegression(max_iter=5),
        lambda: MLPClassifier((4,), random_state=0, max_iter=5),
    ],
    ids=["SGDClassifier", "LogisticRegression", "MLPClassifier"],
)
def test_fit_passes_the_sample_weights_to_the_estimator(make: Any) -> None:
    x, y, weights = _data()
    start = initial_params(make(), x.shape[1], CLASSES)
    epochs = 2 if hasattr(make(), "partial_fit") else 1  # LogisticRegression: one fit
    client = SklearnClient(make(), x, y, classes=CLASSES, sample_weight=weights, epochs=epochs)
    fitted = client.fit(start, {"round": 1})
    assert fitted.num_examples == 200  # a count of examples, not the sum of the weights

    # The same local training written with scikit-learn alone.
    model = make()
    prime(model, x, y, CLASSES)
    set_params(model, start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(model, "partial_fit"):
            for _ in range(epochs):
                model.partial_fit(x, y, sample_weight=weights)
        else:
            model.set_params(warm_start=True)
            model.fit(x, y, sample_weight=weights)
    unweighted = SklearnClient(make(), x, y, classes=CLASSES, epochs=epochs).fit(start, {})
    assert fitted.weights is not None
    assert unweighted.weights is not None
    coef = model.coefs_[0] if hasattr(model, "coefs_") else model.coef_
    name = "coefs.0" if hasattr(model, "coefs_") else "coef"
    np.testing.assert_allclose(fitted.weights[name], coef)
    assert not np.allclose(fitted.weights[name], unweighted.weights[name])
    correct = model.predict(x) == y
    assert fitted.metrics["train_accuracy"] == pytest.approx(np.average(correct, weights=weights))


class Unweighted(SGDClassifier):
    """An online classifier whose ``partial_fit`` takes no sample weights."""

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> Unweighted:
        super().partial_fit(X, y, classes=classes)
        return self


def test_an_estimator_without_sample_weight_is_refused() -> None:
    x, y, weights = _data()
    with pytest.raises(TypeError, match=r"Unweighted\.partial_fit takes no sample_weight"):
        SklearnClient(Unweighted(), x, y, classes=CLASSES, sample_weight=weights)
    SklearnClient(Unweighted(), x, y, classes=CLASSES)  # without weights it federates


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(199), r"one weight per training example \(200\), got shape \(199,\)"),
        (np.ones((200, 2)), r"one weight per training example"),
        (-np.ones(200), "finite and >= 0"),
        (np.full(200, np.nan), "finite and >= 0"),
        (np.zeros(200), "at least one weight > 0"),
    ],
)
def test_bad_sample_weights_are_refused(weights: np.ndarray, message: str) -> None:
    x, y, _ = _data()
    with pytest.raises(ValueError, match=message):
        SklearnClient(SGDClassifier(), x, y, classes=CLASSES, sample_weight=weights)


def test_a_rounds_train_accuracy_is_that_of_every_clients_weighted_examples() -> None:
    # Each client's weighted accuracy was averaged by its examples: a client of small
    # weights counted as much as one of large weights, and the round's train_accuracy
    # was not the weighted accuracy of the clients' examples pooled.
    x, y, weights = _data()
    parts = [slice(0, 60), slice(60, 200)]
    scale = [10.0, 0.1]  # the first client's examples weigh 100 times more
    clients = [
        SklearnClient(
            SGDClassifier(loss="log_loss", random_state=0),
            x[part],
            y[part],
            classes=CLASSES,
            sample_weight=weights[part] * k,
        )
        for part, k in zip(parts, scale, strict=True)
    ]
    start = initial_params(SGDClassifier(loss="log_loss"), x.shape[1], CLASSES)
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    result = covey.simulate(lambda cid: clients[cid], 2, 1, strategy, start)
    correct = np.concatenate([c.model.predict(c.x_train) == c.y_train for c in clients])
    pooled = np.average(correct, weights=np.concatenate([c.sample_weight for c in clients]))
    metrics = result.history.rounds[1].fit_metrics
    assert metrics == {"train_accuracy": pytest.approx(pooled)}  # the sums left out


def test_weighted_train_metrics_pool_by_their_weights_only_when_every_client_gives_them() -> None:
    # A regressor's train_loss is weighted alike; without every client's sum, by examples.
    weighted: list[tuple[int, covey.Metrics]] = [
        (10, {"train_loss": 1.0, "train_loss.weight": 30.0}),
        (30, {"train_loss": 5.0}),
    ]
    assert weighted_metrics(weighted) == {"train_loss": 4.0}  # 10 and 30 examples
    weighted[1][1]["train_loss.weight"] = 10.0
    assert weighted_metrics(weighted) == {"train_loss": 2.0}  # 30 and 10 weight
    assert weighted_metrics([(3, {"n.weight": 2.0})]) == {"n.weight": 2.0}  # no "n": a metric
