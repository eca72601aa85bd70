"""Models trained by a warm-started fit each round (LogisticRegression, lbfgs MLPs): no epochs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor

from covey.sklearn import SklearnClient, initial_params, prime

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return x[:120] / x[:120].std(axis=0), (y[:120] - y[:120].mean()) / y[:120].std()


def _lbfgs_regressor(**options: Any) -> MLPRegressor:
    return MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=5, **options)


MODELS = {
    "logistic": (lambda: LogisticRegression(max_iter=5), [0, 1]),
    "mlp-classifier": (lambda: MLPClassifier((4,), solver="lbfgs", max_iter=5), [0, 1]),
    "mlp-regressor": (_lbfgs_regressor, None),
}


@pytest.mark.parametrize("kind", MODELS)
def test_epochs_of_a_model_trained_by_fit_are_refused_naming_max_iter(kind: str) -> None:
    # Before: LogisticRegression and the lbfgs MLPClassifier ignored epochs silently,
    # and the lbfgs MLPRegressor ran epochs whole fits (its partial_fit is lbfgs too).
    make, classes = MODELS[kind]
    x, y = _diabetes()
    target = y if classes is None else (y > 0).astype(int)
    with pytest.raises(ValueError, match=r"epochs is 3, but .*max_iter=5.*leave epochs at 1"):
        SklearnClient(make(), x, target, classes, epochs=3)
    client = SklearnClient(make(), x, target, classes)
    start = initial_params(make(), x.shape[1], classes)
    with pytest.raises(ValueError, match=r"config 'epochs' is 2, but .* trains each round"):
        client.fit(start, {"round": 1, "epochs": 2})
    assert client.fit(start, {"round": 1, "epochs": 1}).num_examples == len(y)


def test_an_lbfgs_mlp_regressor_trains_one_warm_started_fit_a_round() -> None:
    x, y = _diabetes()
    start = initial_params(_lbfgs_regressor(), x.shape[1], seed=3)
    client = SklearnClient(_lbfgs_regressor(), x, y)
    fitted = client.fit(start, {"round": 1}).weights
    assert fitted is not None
    # scikit-learn alone: the start set into a model, then one warm-started fit
    model = _lbfgs_regressor(warm_start=True)
    model.fit(x, y)
    model.coefs_ = [start["coefs.0"].copy(), start["coefs.1"].copy()]
    model.intercepts_ = [start["intercepts.0"].copy(), start["intercepts.1"].copy()]
    model.fit(x, y)
    np.testing.assert_allclose(fitted["coefs.0"], model.coefs_[0])
    np.testing.assert_allclose(fitted["intercepts.1"], model.intercepts_[1])


def test_priming_an_lbfgs_mlp_regressor_takes_one_pass_not_a_fit() -> None:
    # Before: prime called MLPRegressor's partial_fit, a whole lbfgs fit of max_iter.
    x, y = _diabetes()
    model = MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=200)
    prime(model, x, y)
    assert model.n_iter_ == 1
    assert [c.shape for c in model.coefs_] == [(10, 4), (4, 1)]


def test_an_lbfgs_mlp_regressor_may_keep_early_stopping() -> None:
    # lbfgs never stops early (scikit-learn ignores the option); before, refused as partial_fit's
    x, y = _diabetes()
    make = lambda: _lbfgs_regressor(early_stopping=True)  # noqa: E731
    client = SklearnClient(make(), x, y)
    assert client.fit(initial_params(make(), x.shape[1]), {"round": 1}).weights is not None
    with pytest.raises(ValueError, match="early_stopping=True"):
        SklearnClient(clone(make()).set_params(solver="adam"), x, y)
