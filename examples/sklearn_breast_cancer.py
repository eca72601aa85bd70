"""Breast cancer diagnosis across five hospitals with scikit-learn models and FedAvg.

Each hospital holds a label- and size-skewed share (Dirichlet 1.0) of
scikit-learn's Wisconsin breast cancer data. The same few lines federate an
``SGDClassifier``, a ``LogisticRegression`` and an ``MLPClassifier``; the
script prints each model's test accuracy after federated training next to the
best and the worst that single hospitals reach alone. Run it with
``python examples/sklearn_breast_cancer.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier

import covey
from covey.data import dirichlet, load_breast_cancer
from covey.sklearn import SklearnClient, initial_params

HOSPITALS = 5
CLASSES = [0, 1]

MODELS: dict[str, Callable[[], Any]] = {
    "SGDClassifier": lambda: SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0),
    "LogisticRegression": lambda: LogisticRegression(max_iter=10),
    "MLPClassifier": lambda: MLPClassifier((16,), learning_rate_init=0.01, random_state=0),
}


def federate(make: Callable[[], Any], rounds: int = 10, seed: int = 0) -> dict[str, float]:
    """Test accuracy of ``make()`` trained by FedAvg over the hospitals, and of each alone."""
    data = load_breast_cancer(seed=seed)
    # seed + 1: with seed 0, a split in which every hospital holds both classes, which
    # LogisticRegression (no partial_fit) needs to train alone.
    shares = dirichlet(data.y_train, num_clients=HOSPITALS, alpha=1.0, seed=seed + 1)

    def hospital(cid: int) -> SklearnClient:
        return SklearnClient(make(), *data.client(shares[cid]), classes=CLASSES)

    judge = SklearnClient(make(), data.x_test, data.y_test, classes=CLASSES)

    def central(round: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
        result = judge.evaluate(weights, {"round": round})
        return result.loss, result.metrics

    start = initial_params(make(), data.num_features, CLASSES, seed=seed)
    result = covey.simulate(
        hospital,
        num_clients=HOSPITALS,
        rounds=rounds,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights=start,
        evaluate_fn=central,
        seed=seed,
    )
    scores = {"federated": result.history.metric("accuracy")[-1][1]}
    for cid in range(HOSPITALS):
        alone = hospital(cid)
        weights: covey.Weights = start
        for r in range(1, rounds + 1):
            fitted = alone.fit(weights, {"round": r})
            assert fitted.weights is not None
            weights = fitted.weights
        scores[f"hospital {cid} alone"] = float(
            judge.evaluate(weights, {"round": rounds}).metrics["accuracy"]
        )
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for name, make in MODELS.items():
        scores = federate(make, rounds=args.rounds)
        alone = [v for k, v in scores.items() if k != "federated"]
        print(
            f"{name:20s} federated {scores['federated']:.3f}   hospitals alone: "
            f"best {max(alone):.3f}, worst {min(alone):.3f}"
        )
