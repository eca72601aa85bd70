"""SklearnClient takes a per-round learning rate from the fit config, or refuses it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Perceptron, SGDClassifier
from sklearn.neural_network import MLPClassifier

from covey.core import FitResult
from covey.sklearn import SklearnClient, initial_params


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    return x, (x[:, 0] > 0).astype(int)


def _fit(model: Any, config: dict[str, Any], rounds: int = 1) -> dict[str, np.ndarray]:
    x, y = _data()
    client = SklearnClient(model, x, y, classes=[0, 1])
    weights = initial_params(model, 4, [0, 1], seed=0)
    for r in range(1, rounds + 1):
        weights = _weights(client.fit(weights, {"round": r, **config}))
    return weights


def _weights(result: FitResult) -> dict[str, np.ndarray]:
    assert result.weights is not None
    return dict(result.weights)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def _sgd(**options: Any) -> SGDClassifier:
    return SGDClassifier(loss="log_loss", random_state=0, shuffle=False, **options)


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
def test_the_configs_lr_is_an_sgd_models_eta0(schedule: str) -> None:
    # The config's "lr" was ignored: a schedule sent with on_fit_config trained at eta0.
    given = _fit(_sgd(learning_rate=schedule, eta0=0.5), {"lr": 0.01}, rounds=2)
    assert _same(given, _fit(_sgd(learning_rate=schedule, eta0=0.01), {}, rounds=2))
    assert not _same(given, _fit(_sgd(learning_rate=schedule, eta0=0.5), {}, rounds=2))


def test_a_round_without_lr_trains_at_the_models_own_rate() -> None:
    x, y = _data()
    model = _sgd(learning_rate="constant", eta0=0.5)
    client = SklearnClient(model, x, y, classes=[0, 1])
    start = initial_params(model, 4, [0, 1], seed=0)
    client.fit(start, {"round": 1, "lr": 0.01})
    own = _weights(client.fit(start, {"round": 2}))
    fresh = SklearnClient(_sgd(learning_rate="constant", eta0=0.5), x, y, classes=[0, 1])
    assert _same(own, _weights(fresh.fit(start, {"round": 1})))


def test_the_perceptrons_eta0_takes_it() -> None:
    given = _fit(Perceptron(random_state=0, shuffle=False), {"lr": 0.25})
    assert _same(given, _fit(Perceptron(random_state=0, shuffle=False, eta0=0.25), {}))


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_an_mlps_optimiser_takes_it(solver: str) -> None:
    # learning_rate_init is read when the MLP builds its optimiser, at its first
    # partial_fit; the optimiser it keeps between rounds must take the rate too.
    def mlp(rate: float) -> MLPClassifier:
        return MLPClassifier(
            (5,),
            solver=solver,
            learning_rate_init=rate,
            momentum=0.0,
            batch_size=40,  # one step a pass: Adam's moments do not depend on the rate
            shuffle=False,
            random_state=0,
        )

    given = _fit(mlp(0.3), {"lr": 0.02}, rounds=2)
    assert _same(given, _fit(mlp(0.02), {}, rounds=2))
    assert not _same(given, _fit(mlp(0.3), {}, rounds=2))


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (_sgd(), r"learning_rate='optimal'\) does not step by eta0"),
        (SGDClassifier(loss="hinge", learning_rate="pa1"), r"learning_rate='pa1'"),
        (LogisticRegression(), "LogisticRegression has no learning rate to set"),
        (MLPClassifier((5,), solver="lbfgs"), r"solver='lbfgs'\) takes no learning rate"),
    ],
)
def test_a_model_without_a_rate_refuses_lr(model: Any, why: str) -> None:
    x, y = _data()
    client = SklearnClient(model, x, y, classes=[0, 1])
    start = initial_params(model, 4, [0, 1], seed=0)
    with pytest.raises(ValueError, match=r"the fit config sets 'lr' \(0\.1\), but .*" + why):
        client.fit(start, {"round": 1, "lr": 0.1})


@pytest.mark.parametrize("lr", [0, -1.0, float("inf"), True, "0.1"])
def test_a_bad_lr_is_refused(lr: Any) -> None:
    x, y = _data()
    client = SklearnClient(_sgd(learning_rate="constant"), x, y, classes=[0, 1])
    start = initial_params(_sgd(), 4, [0, 1], seed=0)
    with pytest.raises(ValueError, match="config 'lr' must be a finite number > 0"):
        client.fit(start, {"round": 1, "lr": lr})
