"""A federated evaluation's R^2 is that of the clients' test data pooled, not a mean of theirs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import SGDRegressor
from sklearn.metrics import r2_score
from sklearn.neural_network import MLPRegressor

import covey
from _live import served_to
from covey.sklearn import SklearnClient, initial_params
from covey.strategies import weighted_metrics


def _sites(outputs: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three sites whose targets sit at different levels: their own R^2 mislead."""
    rng = np.random.default_rng(0)
    sites = []
    for i, n in enumerate((30, 50, 70)):
        x = rng.normal(size=(n, 3)) + i
        y = x @ [1.0, 2.0, 3.0] + 1000.0 + 5.0 * i + rng.normal(size=n)
        sites.append((x, y if outputs == 1 else np.column_stack([y, -2.0 * y + x[:, 0]])))
    return sites


def _pooled(model: Any, weights: covey.Weights, sites: list[Any]) -> float:
    client = SklearnClient(
        model, np.vstack([x for x, _ in sites]), np.concatenate([y for _, y in sites])
    )
    client.evaluate(weights, {})
    x = np.vstack([x for x, _ in sites])
    return float(r2_score(np.concatenate([y for _, y in sites]), client.model.predict(x)))


@pytest.mark.parametrize(
    ("make", "outputs"),
    [
        (lambda: SGDRegressor(random_state=0), 1),
        (lambda: MLPRegressor(hidden_layer_sizes=(4,), random_state=0), 2),
    ],
)
def test_the_combined_r2_is_r2_score_of_the_pooled_test_data(make: Any, outputs: int) -> None:
    # Before: the mean of the sites' own R^2 (-22.1 here against a pooled -1.3).
    sites = _sites(outputs)
    weights = initial_params(make(), 3, targets=outputs, seed=1)
    weights = {k: v + 0.5 for k, v in weights.items()}
    results = [SklearnClient(make(), x, y).evaluate(weights, {}) for x, y in sites]
    own = [float(r.metrics["r2"]) for r in results]
    combined = weighted_metrics([(r.num_examples, r.metrics) for r in results])
    pooled = _pooled(make(), weights, sites)
    assert combined["r2"] == pytest.approx(pooled, rel=1e-9)
    assert abs(np.average(own, weights=[30, 50, 70]) - pooled) > 0.1
    assert set(combined) == {"r2", "mae"}  # the sums stay out of the history
    # a site of no examples weighs nothing; one client without the sums: the mean, as before
    empty: tuple[int, covey.Metrics] = (0, {"r2": float("nan")})
    assert weighted_metrics([empty, *[(r.num_examples, r.metrics) for r in results]]) == combined
    mixed = [(r.num_examples, dict(r.metrics)) for r in results]
    del mixed[0][1]["r2.moments"]
    assert weighted_metrics(mixed)["r2"] == pytest.approx(np.average(own, weights=[30, 50, 70]))


def test_constant_targets_pool_as_r2_score_does() -> None:
    x = np.ones((4, 1))
    client = SklearnClient(SGDRegressor(), x, np.full(4, 2.0))
    exact = {"coef": np.zeros(1), "intercept": np.array([2.0])}
    results = [client.evaluate(exact, {}) for _ in range(2)]
    assert weighted_metrics([(r.num_examples, r.metrics) for r in results])["r2"] == 1.0
    off = {"coef": np.zeros(1), "intercept": np.array([1.0])}
    results = [client.evaluate(off, {}) for _ in range(2)]
    assert weighted_metrics([(r.num_examples, r.metrics) for r in results])["r2"] == 0.0


def test_a_federated_run_reports_the_pooled_r2() -> None:
    sites = _sites()
    make = lambda: SGDRegressor(learning_rate="constant", eta0=0.001, random_state=0)  # noqa: E731
    result = covey.simulate(
        lambda cid: SklearnClient(make(), *sites[cid]),
        num_clients=3,
        rounds=2,
        strategy=covey.FedAvg(),
        initial_weights=initial_params(make(), 3),
        seed=0,
    )
    assert not result.history.failures()
    got = result.history.metric("r2", source="evaluate")[-1][1]
    assert got == pytest.approx(_pooled(make(), result.weights, sites), rel=1e-9)


def test_a_deployed_run_reports_the_pooled_r2_its_clients_sums_sent_over_the_network() -> None:
    # The sums travel as an array metric ("r2.moments") in each client's reply over gRPC;
    # the server pools them as in simulation, and they stay out of the history.
    sites = _sites()
    make = lambda: SGDRegressor(learning_rate="constant", eta0=0.001, random_state=0)  # noqa: E731
    named = [(f"site-{i}", SklearnClient(make(), x, y)) for i, (x, y) in enumerate(sites)]
    strategy = covey.FedAvg(min_available_clients=3, min_fit_clients=3, min_evaluate_clients=3)
    result = served_to(named, strategy, initial_params(make(), 3))
    record = result.history.rounds[-1]
    assert not record.failures
    assert set(record.evaluate_metrics) == {"r2", "mae"}
    pooled = _pooled(make(), result.weights, sites)
    assert record.evaluate_metrics["r2"] == pytest.approx(pooled, rel=1e-9)
    own = [SklearnClient(make(), x, y).evaluate(result.weights, {}) for x, y in sites]
    mean = np.average([float(r.metrics["r2"]) for r in own], weights=[30, 50, 70])
    assert abs(mean - pooled) > 1e-3  # a mean of the sites' own R^2 would not pass
