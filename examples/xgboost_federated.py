"""Federated gradient-boosted trees with XGBoost: bagging and cyclic training vs each client alone.

Five clients each hold 200 examples of a generated binary classification task
(scikit-learn's ``make_classification``: nothing is downloaded). The script
trains one booster by bagging (every client grows trees each round, the server
merges them) and one by cyclic training (clients boost the model in turn),
then each client's booster trained on its data alone with as many rounds, and
prints their log loss and accuracy on the same held-out data. Run it with
``python examples/xgboost_federated.py`` (needs ``pip install 'covey[xgboost]'``).

The clients that script simulates join a served federation unchanged:
``client_fn`` makes client ``cid``, and ``bagging_server`` and ``cyclic_server``
are the server side of each strategy (a round starts once all five clients
joined; the held-out data judges each round's booster there). From ``examples/``::

    covey server --app xgboost_federated:bagging_server --insecure --address 127.0.0.1:9092
    covey client --app xgboost_federated:client_fn --cid 0 --server 127.0.0.1:9092 --insecure
    ...                                            # and --cid 1 to 4, one per client

(``--certs``/``--name`` instead of ``--insecure`` between machines; importing
this file runs nothing.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import xgboost as xgb
from sklearn.datasets import make_classification

import covey
from covey.deploy import ServerApp
from covey.xgboost import (
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    evaluate_booster,
    initial_model,
)

THREADS = 1  # each client trains, and the server evaluates, on one thread
PARAMS = {
    "objective": "binary:logistic",
    "base_score": 0.5,  # every client boosts from the same start
    "max_depth": 3,
    "eta": 0.3,
    "nthread": THREADS,
}
ROUNDS = 10


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


@dataclass
class Clients:
    """``num_clients`` clients of ``per_client`` examples: ``Clients()(cid)`` is one.

    An instance is a ``client_fn``, for ``covey.simulate`` and ``covey client --app``
    alike; the data is made when the first client is.
    """

    num_clients: int = 5
    per_client: int = 200
    local_rounds: int = 2
    seed: int = 0

    @cached_property
    def data(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        return make_data(self.num_clients, self.per_client, self.seed)

    def __call__(self, cid: int) -> XGBoostClient:
        return XGBoostClient(*self.data[0][cid], PARAMS, local_rounds=self.local_rounds)

    def initial_weights(self) -> covey.Weights:
        return initial_model(PARAMS, num_features=self.data[1].shape[1], capacity=1 << 20)

    def bagging(self) -> covey.Strategy:
        # Every client trains every round, once all of them joined.
        return XGBoostBagging(
            local_rounds=self.local_rounds,
            fraction_evaluate=0.0,
            min_available_clients=self.num_clients,
        )

    def cyclic(self) -> covey.Strategy:
        # One client a round, in turn, once all of them joined.
        return XGBoostCyclic(
            local_rounds=self.local_rounds,
            fraction_evaluate=0.0,
            min_available_clients=self.num_clients,
        )

    def central(self) -> Callable[[int, covey.Weights], tuple[float, dict[str, float]]]:
        """The server's ``evaluate_fn``: held-out log loss and accuracy of each round's booster."""
        _, x_test, y_test = self.data

        def central(round: int, weights: covey.Weights) -> tuple[float, dict[str, float]]:
            loss, metrics = evaluate_booster(weights, x_test, y_test, nthread=THREADS)
            return loss, {"accuracy": float(metrics["accuracy"])}

        return central

    def server_app(self, strategy: covey.Strategy, rounds: int = ROUNDS) -> ServerApp:
        """The server side of this federation, as ``compare`` simulates it."""
        return ServerApp(
            strategy=strategy,
            initial_weights=self.initial_weights,
            rounds=rounds,
            evaluate_fn=self.central(),
            seed=self.seed,
        )


client_fn = Clients()


def bagging_server() -> ServerApp:
    return client_fn.server_app(client_fn.bagging())


def cyclic_server() -> ServerApp:
    return client_fn.server_app(client_fn.cyclic())


def compare(clients: Clients = client_fn, rounds: int = ROUNDS) -> dict[str, tuple[float, float]]:
    """``name -> (test log loss, test accuracy)`` for bagging, cyclic and each client alone."""
    scores: dict[str, tuple[float, float]] = {}
    for name, strategy in (("bagging", clients.bagging()), ("cyclic", clients.cyclic())):
        app = clients.server_app(strategy, rounds)
        result = covey.simulate(
            clients,
            clients.num_clients,
            app.rounds,
            app.strategy,
            app.weights(),
            app.evaluate_fn,
            seed=app.seed,
        )
        loss = result.history.metric("loss")[-1][1]
        scores[name] = (loss, result.history.metric("accuracy")[-1][1])
    shares, x_test, y_test = clients.data
    for cid, (x, y) in enumerate(shares):
        alone = xgb.train(
            PARAMS, xgb.DMatrix(x, label=y), num_boost_round=rounds * clients.local_rounds
        )
        loss, metrics = evaluate_booster(alone, x_test, y_test)
        scores[f"client {cid} alone"] = (loss, float(metrics["accuracy"]))
    return scores


if __name__ == "__main__":  # `covey client --app xgboost_federated:client_fn` imports this file
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=client_fn.num_clients)
    parser.add_argument("--per-client", type=int, default=client_fn.per_client)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    clients = (  # by default the very clients that `covey client` runs
        client_fn
        if (args.clients, args.per_client) == (client_fn.num_clients, client_fn.per_client)
        else replace(client_fn, num_clients=args.clients, per_client=args.per_client)
    )
    for name, (loss, accuracy) in compare(clients, args.rounds).items():
        print(f"{name:16s} log loss {loss:.3f}   accuracy {accuracy:.3f}")
