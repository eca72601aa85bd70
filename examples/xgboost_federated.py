"""Federated gradient-boosted trees with XGBoost: bagging and cyclic training vs each client alone.

Five clients each hold 200 examples of a generated binary classification task
(scikit-learn's ``make_classification``: nothing is downloaded). The script
trains one booster by bagging (every client grows trees each round, the server
merges them) and one by cyclic training (clients boost the model in turn),
then each client's booster trained on its data alone with as many rounds, and
prints their log loss and accuracy on the same held-out data. Run it with
``python examples/xgboost_federated.py`` (needs ``pip install 'covey[xgboost]'``).
"""

from __future__ import annotations

import argparse

import numpy as np
import xgboost as xgb
from sklearn.datasets import make_classification

import covey
from covey.xgboost import (
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    evaluate_booster,
    initial_model,
)

PARAMS = {
    "objective": "binary:logistic",
    "base_score": 0.5,  # every client boosts from the same start
    "max_depth": 3,
    "eta": 0.3,
    "nthread": 1,
}


def make_data(
    num_clients: int, per_client: int, seed: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """``num_clients`` shares of ``per_client`` examples, and a held-out test set of 1000."""
    n = num_clients * per_client + 1000
    x, y = make_classification(
        n_samples=n, n_features=20, n_informative=8, random_state=seed, flip_y=0.02
    )
    shares = np.array_split(np.arange(num_clients * per_client), num_clients)
    return [(x[s], y[s]) for s in shares], x[-1000:], y[-1000:]


def compare(
    num_clients: int = 5, per_client: int = 200, rounds: int = 10, local_rounds: int = 2
) -> dict[str, tuple[float, float]]:
    """``name -> (test log loss, test accuracy)`` for bagging, cyclic and each client alone."""
    shares, x_test, y_test = make_data(num_clients, per_client)
    start = initial_model(PARAMS, num_features=x_test.shape[1], capacity=1 << 20)

    def central(round: int, weights: covey.Weights) -> tuple[float, dict[str, float]]:
        loss, metrics = evaluate_booster(weights, x_test, y_test)
        return loss, {"accuracy": float(metrics["accuracy"])}

    def client_fn(cid: int) -> XGBoostClient:
        return XGBoostClient(*shares[cid], PARAMS, local_rounds=local_rounds)

    scores: dict[str, tuple[float, float]] = {}
    for name, strategy in (
        ("bagging", XGBoostBagging(fraction_evaluate=0.0)),
        ("cyclic", XGBoostCyclic(fraction_evaluate=0.0)),
    ):
        result = covey.simulate(client_fn, num_clients, rounds, strategy, start, central, seed=0)
        loss = result.history.metric("loss")[-1][1]
        scores[name] = (loss, result.history.metric("accuracy")[-1][1])
    for cid, (x, y) in enumerate(shares):
        alone = xgb.train(PARAMS, xgb.DMatrix(x, label=y), num_boost_round=rounds * local_rounds)
        loss, metrics = evaluate_booster(alone, x_test, y_test)
        scores[f"client {cid} alone"] = (loss, float(metrics["accuracy"]))
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--per-client", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for name, (loss, accuracy) in compare(args.clients, args.per_client, args.rounds).items():
        print(f"{name:16s} log loss {loss:.3f}   accuracy {accuracy:.3f}")
