"""Federated XGBoost on data the integration was not written against, next to centralised XGBoost.

Four clients split scikit-learn's breast cancer table (classification) and its
diabetes table (regression); bagging and cyclic training are compared with one
booster trained on the pooled training data with as many boosting rounds, and
with each client's booster trained alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey

xgb = pytest.importorskip("xgboost")

from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    evaluate_booster,
    from_weights,
    initial_model,
    num_trees,
)

pytestmark = pytest.mark.slow

CLIENTS, ROUNDS, LOCAL = 4, 6, 2


def _compare(x: Any, y: Any, params: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``name -> (test loss, test accuracy or nan)`` for federated, pooled and alone."""
    order = np.random.default_rng(0).permutation(len(y))
    x, y = np.asarray(x)[order], np.asarray(y, dtype=np.float64)[order]
    cut = int(0.75 * len(y))
    x_test, y_test = x[cut:], y[cut:]
    shares = [(x[s], y[s]) for s in np.array_split(np.arange(cut), CLIENTS)]
    start = initial_model(params, num_features=x.shape[1], capacity=1 << 21)

    def central(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, float]]:
        loss, metrics = evaluate_booster(weights, x_test, y_test)
        return loss, {k: float(v) for k, v in metrics.items()}

    def score(loss: float, metrics: Any) -> tuple[float, float]:
        return float(loss), float(metrics.get("accuracy", float("nan")))

    out: dict[str, tuple[float, float]] = {}
    for name, strategy in (
        ("bagging", XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0)),
        ("cyclic", XGBoostCyclic(local_rounds=LOCAL, fraction_evaluate=0.0)),
    ):
        result = covey.simulate(
            lambda cid: XGBoostClient(*shares[cid], params, local_rounds=LOCAL),
            CLIENTS,
            ROUNDS,
            strategy,
            start,
            central,
            seed=0,
        )
        last = result.history.rounds[-1]
        assert last.central_loss is not None
        out[name] = score(last.central_loss, last.central_metrics)
        per_round = CLIENTS * LOCAL if name == "bagging" else LOCAL
        classes = int(params.get("num_class", 1))
        assert num_trees(from_weights(result.weights)) == ROUNDS * per_round * classes
    pooled = xgb.train(params, xgb.DMatrix(x[:cut], label=y[:cut]), ROUNDS * LOCAL)
    out["pooled"] = score(*evaluate_booster(pooled, x_test, y_test))
    for cid, (xs, ys) in enumerate(shares):
        alone = xgb.train(params, xgb.DMatrix(xs, label=ys), ROUNDS * LOCAL)
        out[f"alone {cid}"] = score(*evaluate_booster(alone, x_test, y_test))
    return out


def test_breast_cancer_federated_is_close_to_pooled_and_beats_clients_alone() -> None:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    params = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 3, "eta": 0.3}
    scores = _compare(x, y, {**params, "nthread": 1})
    alone = [v for k, v in scores.items() if k.startswith("alone")]
    for name in ("bagging", "cyclic"):
        loss, accuracy = scores[name]
        assert accuracy >= scores["pooled"][1] - 0.03, scores
        assert loss <= 1.25 * scores["pooled"][0], scores
        assert loss < np.mean([a[0] for a in alone]), scores
    assert scores["bagging"][1] >= np.mean([a[1] for a in alone]), scores


def test_diabetes_regression_federated_is_close_to_pooled() -> None:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    params = {
        "objective": "reg:squarederror",
        "base_score": float(np.mean(y)),
        "max_depth": 3,
        "eta": 0.1,
        "nthread": 1,
    }
    scores = _compare(x, y, params)
    mse_alone = np.mean([v[0] for k, v in scores.items() if k.startswith("alone")])
    assert scores["bagging"][0] <= 1.1 * scores["pooled"][0], scores
    assert scores["bagging"][0] < mse_alone, scores
    assert scores["cyclic"][0] < 1.25 * scores["pooled"][0], scores
    assert np.isnan(scores["bagging"][1])  # no accuracy for a regression
