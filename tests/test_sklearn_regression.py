"""SklearnClient federates regressors trained with partial_fit: SGD, MLP, passive-aggressive SGD."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import sklearn.linear_model
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, Ridge, SGDClassifier, SGDRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.neural_network import MLPRegressor

import covey
from covey.core._history import Source
from covey.sim import SimulationResult
from covey.sklearn import SklearnClient, evaluate_model, initial_params


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    yield  # nothing federated here is deprecated: PassiveAggressiveRegressor is an SGDRegressor


def _passive_aggressive() -> Any:
    """PassiveAggressiveRegressor(C=0.1) (deprecated by scikit-learn 1.8) as it says to write it."""
    return SGDRegressor(
        loss="epsilon_insensitive", penalty=None, learning_rate="pa1", eta0=0.1, random_state=0
    )


MAKERS: dict[str, Callable[[], Any]] = {
    "sgd": lambda: SGDRegressor(learning_rate="constant", eta0=0.01, random_state=0),
    "mlp": lambda: MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0),
    "passive-aggressive": _passive_aggressive,
}


def _diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled diabetes table, shuffled, standardized, 350 rows to train."""
    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    x = (x - x[:350].mean(axis=0)) / x[:350].std(axis=0)
    y = (y - y[:350].mean()) / y[:350].std()
    return x[:350], y[:350], x[350:], y[350:]


SOURCES: tuple[Source, ...] = ("central", "evaluate", "fit")


def _federate(kind: str, backend: Literal["inline", "process"]) -> SimulationResult:
    x, y, x_test, y_test = _diabetes()
    shares = np.array_split(np.arange(len(y)), 4)
    make = MAKERS[kind]
    judge = SklearnClient(make(), x_test, y_test)

    def central(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
        result = judge.evaluate(weights, {})
        return result.loss, result.metrics

    with _quiet_deprecation():
        return covey.simulate(
            lambda cid: SklearnClient(make(), x[shares[cid]], y[shares[cid]], epochs=2),
            num_clients=4,
            rounds=10,
            strategy=covey.FedAvg(),
            initial_weights=initial_params(make(), x.shape[1]),
            evaluate_fn=central,
            backend=backend,
            seed=0,
        )


@pytest.mark.parametrize("kind", MAKERS)
def test_a_federated_regressor_learns_diabetes_alike_inline_and_in_processes(kind: str) -> None:
    # Before: SklearnClient refused every regressor ("federates classifiers").
    inline = _federate(kind, "inline")
    processes = _federate(kind, "process")
    assert not inline.history.failures()
    # Least squares on the 350 rows pooled scores 0.34 on the other 92.
    assert inline.history.metric("r2")[-1][1] > 0.2
    assert inline.history.metric("r2")[-1][1] > inline.history.metric("r2")[0][1] + 0.2
    assert inline.history.metric("mae")[-1][1] < inline.history.metric("mae")[0][1]
    assert inline.history.metric("train_loss", source="fit")
    assert list(processes.weights) == list(inline.weights)
    for name, value in inline.weights.items():
        np.testing.assert_array_equal(processes.weights[name], value)
    for source in SOURCES:
        for metric in ("loss", "r2", "mae") if source != "fit" else ("train_loss",):
            got = processes.history.metric(metric, source)
            assert got == inline.history.metric(metric, source), (source, metric)


@pytest.mark.parametrize("kind", MAKERS)
def test_the_scores_are_scikit_learns(kind: str) -> None:
    x, y, x_test, y_test = _diabetes()
    client = SklearnClient(MAKERS[kind](), x, y, x_test=x_test, y_test=y_test)
    with _quiet_deprecation():
        weights = client.fit(initial_params(MAKERS[kind](), 10), {"round": 1}).weights
    assert weights is not None
    result = client.evaluate(weights, {})
    predicted = client.model.predict(x_test)
    assert result.num_examples == len(y_test)
    assert result.loss == pytest.approx(mean_squared_error(y_test, predicted))
    assert result.metrics["r2"] == pytest.approx(r2_score(y_test, predicted))
    assert result.metrics["mae"] == pytest.approx(mean_absolute_error(y_test, predicted))


def test_an_mlp_with_several_outputs_federates_them() -> None:
    x, y, _, _ = _diabetes()
    targets = np.column_stack([y, x[:, 2] - x[:, 3]])
    make = MAKERS["mlp"]
    start = initial_params(make(), 10, targets=2)
    assert start["coefs.1"].shape == (16, 2)
    client = SklearnClient(make(), x, targets)
    fitted = client.fit(start, {"round": 1}).weights
    assert fitted is not None
    assert {k: v.shape for k, v in fitted.items()} == {k: v.shape for k, v in start.items()}
    result = client.evaluate(fitted, {})
    predicted = client.model.predict(x)
    assert result.loss == pytest.approx(mean_squared_error(targets, predicted))
    assert result.metrics["r2"] == pytest.approx(r2_score(targets, predicted))
    with pytest.raises(ValueError, match="y_train has 2 target columns and y_test 1"):
        SklearnClient(make(), x, targets, x_test=x, y_test=y)


def test_train_loss_is_weighted_by_sample_weight() -> None:
    x, y, _, _ = _diabetes()
    weights = np.where(np.arange(len(y)) % 2, 3.0, 0.5)
    client = SklearnClient(MAKERS["sgd"](), x, y, sample_weight=weights)
    result = client.fit(initial_params(SGDRegressor(), 10), {"round": 1})
    errors = (client.model.predict(x) - y) ** 2
    assert result.metrics["train_loss"] == pytest.approx(np.average(errors, weights=weights))


def test_a_rate_in_the_config_is_the_sgd_regressors_eta0() -> None:
    x, y, _, _ = _diabetes()
    client = SklearnClient(SGDRegressor(random_state=0), x, y)
    client.fit(initial_params(SGDRegressor(), 10), {"round": 1, "lr": 0.003})
    assert client.model.eta0 == 0.003
    client.fit(initial_params(SGDRegressor(), 10), {"round": 2})
    assert client.model.eta0 == 0.01  # its own again


def _global(rnd: int, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + rnd)  # the server's model each round, made up
    return {k: (v + 0.01 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in like.items()}


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGDRegressor(average=True, learning_rate="invscaling", eta0=0.05, random_state=0),
        lambda: MLPRegressor(hidden_layer_sizes=(4,), solver="adam", random_state=0),
    ],
    ids=["sgd-average", "mlp-adam"],
)
def test_a_rebuilt_regressor_client_trains_on_from_its_state_file(
    tmp_path: Path, make: Callable[[], Any]
) -> None:
    x, y, _, _ = _diabetes()
    start = initial_params(make(), 10, seed=1)
    models = [_global(r, start) for r in range(1, 5)]
    kept = SklearnClient(make(), x, y)
    whole = [kept.fit(w, {"round": r + 1}).weights or {} for r, w in enumerate(models)]
    path = tmp_path / "state.covey"
    SklearnClient(make(), x, y, state_path=path).fit(models[0], {"round": 1})
    again = SklearnClient(make(), x, y, state_path=path)  # restarted after round 1
    for r in (1, 2, 3):
        got = again.fit(models[r], {"round": r + 1}).weights
        assert got is not None
        for name, value in whole[r].items():
            np.testing.assert_array_equal(got[name], value)
    lost = SklearnClient(make(), x, y).fit(models[1], {"round": 2}).weights
    assert lost is not None
    assert any(not np.array_equal(lost[k], v) for k, v in whole[1].items())


X = np.random.default_rng(0).normal(size=(12, 3))
Y = X @ [1.0, 2.0, -1.0]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        # y 2-D for a model with one output
        ((SGDRegressor(), X, np.column_stack([Y, Y])), {}, ValueError, "SGDRegressor predicts one"),
        ((SGDRegressor(), X, Y.reshape(3, 2, 2)), {}, ValueError, r"got shape \(3, 2, 2\)"),
        ((SGDRegressor(), X, np.where(Y > 1, np.nan, Y)), {}, ValueError, "NaN or infinite"),
        (
            (SGDRegressor(), X, Y),
            {"x_test": X, "y_test": np.full(12, np.inf)},
            ValueError,
            r"y_test holds NaN or infinite targets in 12 examples \(the first at row 0\)",
        ),
        ((SGDRegressor(), X, Y.astype(str)), {}, TypeError, "y_train must hold numbers"),
        ((SGDRegressor(), X, Y), {"classes": [0, 1]}, ValueError, "regressor: give it no classes"),
        # x_test given where classes go
        ((SGDRegressor(), X, Y, X, Y), {}, ValueError, r"by keyword \(x_test=\.\.\., y_test"),
        ((Ridge(), X, Y), {}, TypeError, r"with partial_fit \(SGDRegressor and MLPRegressor\)"),
        ((LinearRegression(), X, Y), {}, TypeError, "LinearRegression has no partial_fit"),
        ((SGDClassifier(), X, Y > 0), {}, ValueError, "classifier: give every class label"),
        (
            (sklearn.linear_model.SGDOneClassSVM(), X, Y),
            {},
            TypeError,
            "classifiers and regressors; SGDOneClassSVM is neither",
        ),
    ],
)
def test_bad_inputs_are_refused_naming_them(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SklearnClient(*args, **kwargs)


def test_an_lbfgs_mlp_trains_on_from_the_global_parameters() -> None:
    x, y, x_test, y_test = _diabetes()
    make = lambda: MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=5)  # noqa: E731
    start = initial_params(make(), 10, seed=0)
    judge = SklearnClient(make(), x_test, y_test)
    client = SklearnClient(make(), x, y)
    weights: covey.Weights = start
    for rnd in (1, 2):
        fitted = client.fit(weights, {"round": rnd}).weights
        assert fitted is not None
        assert judge.evaluate(fitted, {}).loss < judge.evaluate(weights, {}).loss
        weights = fitted


def test_a_column_of_targets_is_one_target() -> None:
    client = SklearnClient(SGDRegressor(random_state=0), X, Y.reshape(-1, 1))
    assert client.y_train.shape == (12,)
    assert client.fit(initial_params(SGDRegressor(), 3), {"round": 1}).weights is not None


def test_evaluate_model_scores_a_regressor_without_classes() -> None:
    model = LinearRegression().fit(X, Y + 1.0)
    loss, metrics = evaluate_model(model, X, Y)
    assert loss == pytest.approx(1.0)
    assert metrics == {"r2": pytest.approx(r2_score(Y, model.predict(X))), "mae": pytest.approx(1)}
    constant = np.zeros(12)  # R^2 of targets that do not vary, as r2_score's force_finite
    assert evaluate_model(model, X, constant)[1]["r2"] == 0.0
    exact = LinearRegression().fit(X, constant)
    assert evaluate_model(exact, X, constant)[1]["r2"] == 1.0


def test_several_targets_for_a_one_target_model_name_one_sklearnclient_federates() -> None:
    # it named Ridge and LinearRegression first, which SklearnClient refuses
    with pytest.raises(ValueError, match="use MLPRegressor, which predicts several") as info:
        initial_params(SGDRegressor(), 3, targets=2)
    assert "refit from scratch" in str(info.value)
    for model in (Ridge(), LinearRegression()):
        with pytest.raises(TypeError, match="has no partial_fit"):
            SklearnClient(model, X, Y)
