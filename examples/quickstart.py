"""Quickstart: 50 simulated clients train logistic regression on label-skewed digits with FedAvg.

Run it with ``python examples/quickstart.py``. The same federation runs deployed,
``server`` its server side and ``DigitsClient`` unchanged as each client; from
``examples/`` (importing this file runs no simulation)::

    covey server --app quickstart:server --insecure --address 127.0.0.1:9092
    covey client --app quickstart:DigitsClient --cid 0 --server 127.0.0.1:9092 --insecure
    ...  # one client per --cid, 0 to 49
"""

import numpy as np

import covey
from covey.data import dirichlet, load_digits
from covey.deploy import ServerApp
from covey.models import logistic_evaluate, logistic_init, logistic_sgd_epoch

data = load_digits()
parts = dirichlet(data.y_train, num_clients=50, alpha=0.5, seed=0)


class DigitsClient(covey.Client):
    def __init__(self, cid: int):
        self.cid = cid
        self.x, self.y = data.client(parts[cid])

    def fit(self, weights, config):
        # `weights` are read-only arrays shared with the server: no copy is made.
        order = np.random.default_rng([self.cid, config["round"]]).permutation(len(self.y))
        new = logistic_sgd_epoch(weights, self.x, self.y, lr=0.5, batch_size=16, order=order)
        return covey.FitResult(weights=new, num_examples=len(self.y))

    def evaluate(self, weights, config):
        loss, accuracy = logistic_evaluate(weights, self.x, self.y)
        return covey.EvaluateResult(
            loss=loss, num_examples=len(self.y), metrics={"accuracy": accuracy}
        )


def central(round, weights):  # runs on the server at round 0 and after every round
    loss, accuracy = logistic_evaluate(weights, data.x_test, data.y_test)
    return loss, {"accuracy": accuracy}


def server() -> ServerApp:  # `covey server --app quickstart:server`
    return ServerApp(
        # Deployed, each round waits for all 50 clients before it samples 10 of them.
        strategy=covey.FedAvg(fraction_fit=0.2, fraction_evaluate=0.1, min_available_clients=50),
        initial_weights=logistic_init(64, 10),
        rounds=20,
        evaluate_fn=central,
    )


if __name__ == "__main__":  # `covey client --app quickstart:DigitsClient` imports this file
    app = server()
    result = covey.simulate(
        client_fn=DigitsClient,
        num_clients=50,
        rounds=app.rounds,
        strategy=app.strategy,
        initial_weights=app.weights(),
        evaluate_fn=app.evaluate_fn,
        backend="inline",  # or "process": a pool of workers, bit-identical results
        progress=True,
    )
    print(result.history.metric("accuracy")[-1])
