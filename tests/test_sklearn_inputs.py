"""covey.sklearn with sparse and float32 features, averaged SGD and regressors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import (
    GammaRegressor,
    HuberRegressor,
    Lasso,
    LinearRegression,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.neural_network import MLPClassifier, MLPRegressor

import covey
from covey import Weights
from covey.sklearn import SklearnClient, get_params, initial_params, prime, set_params

CLASSES = list(range(10))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data[:300] / 16.0).astype(np.float64)
    return x, data.target[:300]


def test_sparse_features_train_and_evaluate() -> None:
    x, y = _digits()
    sparse = scipy.sparse.csr_matrix(x)
    client = SklearnClient(
        SGDClassifier(loss="log_loss", random_state=0), sparse, y, classes=CLASSES
    )
    start = initial_params(SGDClassifier(), x.shape[1], CLASSES)
    fitted = client.fit(start, {"round": 1, "epochs": 3})
    assert fitted.num_examples == 300
    assert fitted.weights is not None
    assert fitted.weights["coef"].shape == (10, 64)
    assert float(client.evaluate(fitted.weights, {}).metrics["accuracy"]) > 0.8


def test_float32_features_train_and_return_the_global_dtypes() -> None:
    x, y = _digits()
    client = SklearnClient(
        SGDClassifier(loss="log_loss", random_state=0), x.astype(np.float32), y, classes=CLASSES
    )
    start = initial_params(SGDClassifier(), x.shape[1], CLASSES)
    weights: Weights = start
    for rnd in (1, 2):
        fitted = client.fit(weights, {"round": rnd})
        assert fitted.weights is not None
        weights = fitted.weights
        assert {k: v.dtype for k, v in weights.items()} == {k: v.dtype for k, v in start.items()}
    assert float(client.evaluate(weights, {}).metrics["accuracy"]) > 0.8


def test_averaged_sgd_trains_on_from_the_global_weights() -> None:
    x, y = _digits()
    client = SklearnClient(
        SGDClassifier(loss="log_loss", average=True, random_state=0), x, y, classes=CLASSES
    )
    start = initial_params(SGDClassifier(), x.shape[1], CLASSES)
    first = client.fit(start, {"round": 1}).weights
    assert first is not None
    far = {k: v + 50.0 for k, v in first.items()}
    second = client.fit(far, {"round": 2}).weights
    assert second is not None
    # one more pass from weights 50 away stays near them, not near the client's own
    assert np.abs(second["coef"] - far["coef"]).mean() < 25.0
    assert np.abs(second["coef"] - first["coef"]).mean() > 25.0


REGRESSORS: list[tuple[Callable[[], Any], int]] = [
    (lambda: SGDRegressor(random_state=0), 1),
    (lambda: Ridge(), 1),
    (lambda: Ridge(), 2),
    (lambda: MLPRegressor(hidden_layer_sizes=(4,), max_iter=20, random_state=0), 1),
    (lambda: MLPRegressor(hidden_layer_sizes=(4,), max_iter=20, random_state=0), 2),
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(("make", "targets"), REGRESSORS)
def test_initial_params_of_a_regressor_have_its_fitted_shapes(
    make: Callable[[], Any], targets: int
) -> None:
    data = load_diabetes()
    x, y = data.data[:100], data.target[:100] / 100.0
    if targets == 2:
        y = np.c_[y, -y]
    model = make().fit(x, y)
    start = initial_params(make(), x.shape[1], targets=targets)
    fitted = get_params(model)
    assert {k: v.shape for k, v in start.items()} == {k: v.shape for k, v in fitted.items()}
    set_params(model, start)


def test_initial_params_names_a_mixed_up_classes_or_targets() -> None:
    with pytest.raises(ValueError, match="SGDRegressor is a regressor"):
        initial_params(SGDRegressor(), 3, [0, 1])
    with pytest.raises(ValueError, match="SGDClassifier is a classifier"):
        initial_params(SGDClassifier(), 3)


@pytest.mark.parametrize("make", [SGDClassifier, LogisticRegression])
def test_repeated_classes_are_named(make: Callable[[], Any]) -> None:
    x, y = _digits()
    with pytest.raises(ValueError, match="classes must be distinct"):
        SklearnClient(make(), x, y % 3, classes=[0, 1, 2, 2])
    with pytest.raises(ValueError, match="classes must be distinct"):
        initial_params(make(), x.shape[1], [0, 1, 2, 2])


def test_column_vector_labels_count_as_one_label_per_example() -> None:
    x, y = _digits()
    client = SklearnClient(
        SGDClassifier(loss="log_loss", random_state=0), x, y.reshape(-1, 1), classes=CLASSES
    )
    start = initial_params(SGDClassifier(), x.shape[1], CLASSES)
    fitted = client.fit(start, {"round": 1, "epochs": 3})
    assert fitted.weights is not None
    evaluated = client.evaluate(fitted.weights, {})
    assert fitted.metrics["train_accuracy"] == pytest.approx(evaluated.metrics["accuracy"])
    assert float(evaluated.metrics["accuracy"]) > 0.8
    with pytest.raises(ValueError, match=r"y_train must hold one label per example"):
        SklearnClient(SGDClassifier(), x, np.c_[y, y], classes=CLASSES)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("make", "targets"),
    [
        *REGRESSORS,
        (LinearRegression, 1),
        (LinearRegression, 2),
        (lambda: MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=5), 1),
        (lambda: MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=5), 2),
    ],
)
def test_prime_gives_a_regressor_its_shapes(make: Callable[[], Any], targets: int) -> None:
    data = load_diabetes()
    x, y = data.data[:40], data.target[:40] / 100.0
    if targets == 2:
        y = np.c_[y, -y]
    model = make()
    prime(model, x, y)
    start = initial_params(make(), x.shape[1], targets=targets)
    assert {k: v.shape for k, v in get_params(model).items()} == {
        k: v.shape for k, v in start.items()
    }
    set_params(model, {k: np.ones_like(v) for k, v in start.items()})
    assert model.predict(x[:3]).shape == ((3,) if targets == 1 else (3, 2))
    with pytest.raises(ValueError, match="is a regressor: prime it without classes"):
        prime(make(), x, y, classes=[0, 1])
    with pytest.raises(ValueError, match="SGDClassifier is a classifier"):
        prime(SGDClassifier(), x, y > 1)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_an_lbfgs_mlp_classifier_trains_on_from_the_global_parameters() -> None:
    x, y = _digits()
    classes = [0, 1, 2]
    keep = y < 3
    x, y = x[keep], y[keep]

    def make() -> MLPClassifier:
        return MLPClassifier((8,), solver="lbfgs", max_iter=3, random_state=0)

    start = initial_params(make(), x.shape[1], classes)
    model = make()
    prime(model, x[:10], y[:10], classes)
    assert {k: v.shape for k, v in get_params(model).items()} == {
        k: v.shape for k, v in start.items()
    }
    client = SklearnClient(make(), x, y, classes=classes)
    fitted = client.fit(start, {"round": 1}).weights
    assert fitted is not None
    # a few lbfgs iterations from the start stay near it (a fresh fit would not)
    moved = np.abs(fitted["coefs.0"] - start["coefs.0"]).mean()
    assert 0 < moved < np.abs(start["coefs.0"]).mean()
    assert float(client.evaluate(fitted, {}).metrics["accuracy"]) > 0.5
    with pytest.raises(ValueError, match="retrains on the local labels alone"):
        SklearnClient(make(), x[y < 2], y[y < 2], classes=classes).fit(start, {"round": 1})


def test_a_warm_started_mlp_client_may_lack_a_class() -> None:
    """MLPClassifier(warm_start=True).partial_fit refused labels lacking one of the classes."""
    x, y = _digits()
    keep = y < 2
    classes = [0, 1, 2]

    def make() -> MLPClassifier:
        return MLPClassifier((8,), warm_start=True, random_state=0)

    client = SklearnClient(make(), x[keep], y[keep], classes=classes)
    fitted = client.fit(initial_params(make(), x.shape[1], classes), {"round": 1}).weights
    assert fitted is not None
    assert fitted["coefs.1"].shape == (8, 3)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("make", [HuberRegressor, PoissonRegressor, GammaRegressor, Lasso])
def test_a_primed_regressor_predicts_and_trains_on_from_the_parameters_set(
    make: Callable[[], Any],
) -> None:
    data = load_diabetes()
    x, y = data.data[:60], data.target[:60] / 100.0  # positive, as Gamma and Poisson need
    model = make().set_params(warm_start=True)
    prime(model, x, y)
    start = initial_params(make(), x.shape[1], targets=1)
    set_params(model, {"coef": np.full_like(start["coef"], 0.5), "intercept": np.array([0.1])})
    linear = x[:3] @ np.full(x.shape[1], 0.5) + 0.1
    expected = np.exp(linear) if make in (PoissonRegressor, GammaRegressor) else linear
    np.testing.assert_allclose(model.predict(x[:3]), expected)
    model.fit(x, y)  # warm-started from the parameters set
    assert {k: v.shape for k, v in get_params(model).items()} == {
        k: v.shape for k, v in start.items()
    }


@pytest.mark.parametrize("make", [SGDRegressor, HuberRegressor, PoissonRegressor])
def test_several_targets_for_a_single_target_regressor_are_refused(
    make: Callable[[], Any],
) -> None:
    data = load_diabetes()
    x, y = data.data[:40], data.target[:40] / 100.0
    name = make.__name__
    with pytest.raises(ValueError, match=f"{name} predicts one target, got 2 target columns"):
        initial_params(make(), x.shape[1], targets=2)
    with pytest.raises(ValueError, match=f"{name} predicts one target, got 2 target columns"):
        prime(make(), x, np.c_[y, y])


def test_complex_weights_are_refused_as_torch_refuses_them() -> None:
    # Before, the imaginary part was dropped with only a ComplexWarning (as the
    # model of a run whose file held complex arrays), and the model changed.
    model = LogisticRegression()
    prime(model, np.zeros((2, 3)), np.array([0, 1]), [0, 1])
    before = get_params(model, copy=True)
    given = {"coef": np.ones((1, 3)) * (1 + 2j), "intercept": np.zeros(1)}
    with pytest.raises(covey.WeightsError, match=r"'coef' is complex, LogisticRegression's"):
        set_params(model, given)
    assert all(np.array_equal(get_params(model)[k], before[k]) for k in before)
