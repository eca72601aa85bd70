"""Breast cancer diagnosis across five hospitals with scikit-learn models and FedAvg.

Each hospital holds a label- and size-skewed share (Dirichlet 1.0) of
scikit-learn's Wisconsin breast cancer data. The same few lines federate an
``SGDClassifier``, a ``LogisticRegression`` and an ``MLPClassifier``; the
script prints each model's test accuracy after federated training next to the
best and the worst that single hospitals reach alone. Run it with
``python examples/sklearn_breast_cancer.py``.

The hospitals that script simulates join a served federation unchanged:
``sgd``, ``logistic`` and ``mlp`` are the ``client_fn`` of each model, and
``sgd_server``, ``logistic_server`` and ``mlp_server`` its server side (the
test set judges each round's model there). From ``examples/``, with the MLP::

    covey server --app sklearn_breast_cancer:mlp_server --insecure --address 127.0.0.1:9092
    covey client --app sklearn_breast_cancer:mlp --cid 0 --server 127.0.0.1:9092 --insecure
    ...                                       # and --cid 1 to 4, one per hospital

(``--certs``/``--name`` instead of ``--insecure`` between machines; importing
this file runs nothing.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier

import covey
from covey.data import Dataset, dirichlet, load_breast_cancer
from covey.deploy import ServerApp
from covey.sklearn import SklearnClient, initial_params

HOSPITALS = 5
CLASSES = [0, 1]
ROUNDS = 10

MODELS: dict[str, Callable[[], Any]] = {
    "SGDClassifier": lambda: SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0),
    "LogisticRegression": lambda: LogisticRegression(max_iter=10),
    "MLPClassifier": lambda: MLPClassifier((16,), learning_rate_init=0.01, random_state=0),
}


@dataclass
class Hospitals:
    """The hospitals training one of ``MODELS``: ``Hospitals(model)(cid)`` is hospital ``cid``.

    An instance is a ``client_fn``, for ``covey.simulate`` and ``covey client --app``
    alike; the data is read when the first client is made.
    """

    model: str
    seed: int = 0

    def make(self) -> Any:
        """A new, untrained estimator of this federation's model."""
        return MODELS[self.model]()

    @cached_property
    def data(self) -> Dataset:
        return load_breast_cancer(seed=self.seed)

    @cached_property
    def shares(self) -> list[Any]:
        # seed + 1: with seed 0, a split in which every hospital holds both classes, which
        # LogisticRegression (no partial_fit) needs to train alone.
        return dirichlet(self.data.y_train, num_clients=HOSPITALS, alpha=1.0, seed=self.seed + 1)

    def __call__(self, cid: int) -> SklearnClient:
        return SklearnClient(self.make(), *self.data.client(self.shares[cid]), classes=CLASSES)

    def judge(self) -> SklearnClient:
        """A client holding the test set, which judges a model on the server."""
        return SklearnClient(self.make(), self.data.x_test, self.data.y_test, classes=CLASSES)

    def initial_weights(self) -> covey.Weights:
        return initial_params(self.make(), self.data.num_features, CLASSES, seed=self.seed)

    def strategy(self) -> covey.Strategy:
        # Every hospital trains every round: a round starts once all of them joined.
        return covey.FedAvg(fraction_evaluate=0.0, min_available_clients=HOSPITALS)

    def central(self) -> Callable[[int, covey.Weights], tuple[float, dict[str, Any]]]:
        """The server's ``evaluate_fn``: test loss and accuracy of each round's model."""
        judge = self.judge()

        def central(round: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
            result = judge.evaluate(weights, {"round": round})
            return result.loss, result.metrics

        return central

    def server_app(self, rounds: int = ROUNDS) -> ServerApp:
        """The server side of this federation, as ``federate`` simulates it."""
        return ServerApp(
            strategy=self.strategy(),
            initial_weights=self.initial_weights,
            rounds=rounds,
            evaluate_fn=self.central(),
            seed=self.seed,
        )


sgd = Hospitals("SGDClassifier")
logistic = Hospitals("LogisticRegression")
mlp = Hospitals("MLPClassifier")


def sgd_server() -> ServerApp:
    return sgd.server_app()


def logistic_server() -> ServerApp:
    return logistic.server_app()


def mlp_server() -> ServerApp:
    return mlp.server_app()


def federate(hospitals: Hospitals, rounds: int = ROUNDS) -> dict[str, float]:
    """Test accuracy of ``hospitals``' model trained by FedAvg over them, and of each alone."""
    app = hospitals.server_app(rounds)
    result = covey.simulate(
        hospitals,
        num_clients=HOSPITALS,
        rounds=app.rounds,
        strategy=app.strategy,
        initial_weights=app.weights(),
        evaluate_fn=app.evaluate_fn,
        seed=app.seed,
    )
    scores = {"federated": result.history.metric("accuracy")[-1][1]}
    judge = hospitals.judge()
    for cid in range(HOSPITALS):
        alone = hospitals(cid)
        weights: covey.Weights = app.weights()
        for r in range(1, rounds + 1):
            fitted = alone.fit(weights, {"round": r})
            assert fitted.weights is not None
            weights = fitted.weights
        scores[f"hospital {cid} alone"] = float(
            judge.evaluate(weights, {"round": rounds}).metrics["accuracy"]
        )
    return scores


if __name__ == "__main__":  # `covey client --app sklearn_breast_cancer:mlp` imports this file
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    for hospitals in (sgd, logistic, mlp):
        scores = federate(hospitals, rounds=args.rounds)
        alone = [v for k, v in scores.items() if k != "federated"]
        print(
            f"{hospitals.model:20s} federated {scores['federated']:.3f}   hospitals alone: "
            f"best {max(alone):.3f}, worst {min(alone):.3f}"
        )
