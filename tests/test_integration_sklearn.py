"""covey.sklearn: parameters of linear models and MLPs as Weights, SklearnClient, the example."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier, SGDRegressor
from sklearn.neural_network import MLPClassifier

import covey
from covey import WeightsError
from covey.sklearn import SklearnClient, get_params, initial_params, prime, set_params

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MAKERS: dict[str, Callable[[], Any]] = {
    "sgd": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "logreg": lambda: LogisticRegression(max_iter=20),
    "mlp": lambda: MLPClassifier((5, 4), learning_rate_init=0.05, random_state=0),
}


def _data(classes: int, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = np.arange(n) % classes
    x[:, 0] += 3.0 * y
    return x, y


def test_a_model_the_client_cannot_federate_is_named() -> None:
    x, y = _data(2)
    with pytest.raises(ValueError, match="SGDRegressor is a regressor: give it no classes"):
        SklearnClient(SGDRegressor(), x, y.astype(float), classes=[0, 1])
    with pytest.raises(TypeError, match="RidgeClassifier has neither partial_fit nor warm_start"):
        SklearnClient(RidgeClassifier(), x, y, classes=[0, 1])


@pytest.mark.parametrize("kind", MAKERS)
def test_classes_given_out_of_order_mean_the_same_model(kind: str) -> None:
    x, y01 = _data(2)
    y = np.array(["odd", "even"])[y01]
    trainer = SklearnClient(MAKERS[kind](), x, y, classes=["odd", "even"])
    judge = SklearnClient(MAKERS[kind](), x, y, classes=["odd", "even"])
    start = initial_params(MAKERS[kind](), 3, ["odd", "even"])
    # a LogisticRegression trains by one fit (of up to max_iter iterations): no epochs
    epochs = 5 if hasattr(MAKERS[kind](), "partial_fit") else 1
    weights = trainer.fit(start, {"round": 1, "epochs": epochs}).weights
    assert weights is not None
    trained = trainer.evaluate(weights, {})
    judged = judge.evaluate(weights, {})
    assert judged.metrics["accuracy"] == trained.metrics["accuracy"]
    assert float(judged.metrics["accuracy"]) > 0.6
    assert judged.loss == pytest.approx(trained.loss)


@pytest.mark.parametrize("kind", MAKERS)
@pytest.mark.parametrize("classes", [2, 3])
def test_initial_params_have_the_fitted_layout(kind: str, classes: int) -> None:
    x, y = _data(classes)
    start = initial_params(MAKERS[kind](), 3, list(range(classes)))
    model = MAKERS[kind]()
    prime(model, x, y, list(range(classes)))
    fitted = get_params(model)
    assert list(start) == list(fitted)
    assert {k: v.shape for k, v in start.items()} == {k: v.shape for k, v in fitted.items()}


@pytest.mark.parametrize("kind", MAKERS)
def test_set_then_get_round_trips_and_copies(kind: str) -> None:
    x, y = _data(3)
    model = MAKERS[kind]()
    prime(model, x, y, [0, 1, 2])
    weights = {k: v + 1.0 for k, v in get_params(model).items()}
    for v in weights.values():
        v.setflags(write=False)
    set_params(model, weights)
    back = get_params(model)
    for name, value in weights.items():
        np.testing.assert_array_equal(back[name], value)
        assert not np.shares_memory(back[name], value)
    assert get_params(model, copy=False)[next(iter(weights))].flags.writeable


def test_mlp_params_drive_predictions() -> None:
    x, y = _data(3)
    model = MLPClassifier((4,), random_state=0)
    prime(model, x, y, [0, 1, 2])
    weights = get_params(model)
    weights["coefs.1"][:] = 0.0
    weights["intercepts.1"][:] = [0.0, 5.0, 0.0]
    set_params(model, weights)
    assert (model.predict(x) == 1).all()


def test_errors_name_the_problem() -> None:
    x, y = _data(2)
    model = SGDClassifier()
    with pytest.raises(ValueError, match="not fitted yet"):
        get_params(model)
    # Loading a saved model into a new estimator: the error names the function to call.
    for fresh in (SGDClassifier(), MLPClassifier((4,))):
        with pytest.raises(ValueError, match=r"covey\.sklearn\.prime\(model, x, y, classes\)"):
            set_params(fresh, {"coef": np.zeros((1, 3)), "intercept": np.zeros(1)})
    prime(model, x, y, [0, 1])
    with pytest.raises(WeightsError, match=r"missing \['intercept'\]"):
        set_params(model, {"coef": np.zeros((1, 3))})
    with pytest.raises(WeightsError, match=r"'coef' has shape \(2, 3\)"):
        set_params(model, {"coef": np.zeros((2, 3)), "intercept": np.zeros(1)})
    with pytest.raises(ValueError, match="at least 2 classes"):
        initial_params(SGDClassifier(), 3, [1])
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        SklearnClient(SGDClassifier(), x, y, [0, 1], epochs=0)


def test_client_fit_is_partial_fit_from_the_global_model() -> None:
    x, y = _data(3)
    start = initial_params(SGDClassifier(), 3, [0, 1, 2])
    client = SklearnClient(SGDClassifier(random_state=0), x, y, [0, 1, 2], epochs=2)
    result = client.fit(start, {"round": 1})
    hand = SGDClassifier(random_state=0)
    hand.partial_fit(x, y, classes=[0, 1, 2])
    set_params(hand, start)
    hand.partial_fit(x, y)
    hand.partial_fit(x, y)
    assert result.weights is not None
    assert result.num_examples == 60
    for name, value in get_params(hand).items():
        np.testing.assert_allclose(result.weights[name], value)


def test_client_with_a_missing_class_keeps_the_global_layout() -> None:
    x, y = _data(2)
    start = initial_params(SGDClassifier(), 3, [0, 1, 2])
    client = SklearnClient(SGDClassifier(random_state=0), x, y, [0, 1, 2])
    result = client.fit(start, {"round": 1})
    assert result.weights is not None
    assert result.weights["coef"].shape == (3, 3)
    evaluated = client.evaluate(result.weights, {"round": 1})
    assert 0.0 <= float(evaluated.metrics["accuracy"]) <= 1.0


def test_logistic_regression_says_when_a_client_lacks_a_class() -> None:
    x, y = _data(2)
    client = SklearnClient(LogisticRegression(max_iter=5), x, y, [0, 1, 2])
    with pytest.raises(ValueError, match=r"hold \[0, 1\] of the federation's classes"):
        client.fit(initial_params(LogisticRegression(), 3, [0, 1, 2]), {"round": 1})


@pytest.mark.parametrize("kind", MAKERS)
def test_federation_learns_for_every_model_kind(kind: str) -> None:
    parts = [_data(2, n=40, seed=s) for s in range(3)]
    result = covey.simulate(
        lambda cid: SklearnClient(MAKERS[kind](), *parts[cid], classes=[0, 1]),
        num_clients=3,
        rounds=4,
        strategy=covey.FedAvg(),
        initial_weights=initial_params(MAKERS[kind](), 3, [0, 1]),
    )
    accuracy = result.history.metric("accuracy", source="evaluate")
    assert not result.history.failures()
    assert accuracy[-1][1] > 0.75


@pytest.mark.slow
def test_breast_cancer_example() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import sklearn_breast_cancer as example
    finally:
        sys.path.remove(str(EXAMPLES))
    for hospitals in (example.sgd, example.logistic, example.mlp):
        scores = example.federate(hospitals, rounds=5)
        assert len(scores) == 1 + example.HOSPITALS
        assert scores["federated"] > 0.85, scores


def test_exports() -> None:
    import covey.sklearn

    assert sorted(covey.sklearn.__all__) == [
        "SklearnClient",
        "evaluate_model",
        "get_params",
        "initial_params",
        "is_mlp",
        "prime",
        "set_params",
    ]
