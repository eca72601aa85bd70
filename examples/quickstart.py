"""Quickstart: 50 simulated clients train logistic regression on label-skewed digits with FedAvg.

Run it with ``python examples/quickstart.py``. The same ``DigitsClient`` joins a
served federation unchanged: from ``examples/``,
``covey client --app quickstart:DigitsClient --cid 0 --server HOST:PORT ...``
(importing this file runs no simulation).
"""

import numpy as np

import covey
from covey.data import dirichlet, load_digits
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


if __name__ == "__main__":  # `covey client --app quickstart:DigitsClient` imports this file
    result = covey.simulate(
        client_fn=DigitsClient,
        num_clients=50,
        rounds=20,
        strategy=covey.FedAvg(fraction_fit=0.2, fraction_evaluate=0.1),
        initial_weights=logistic_init(64, 10),
        evaluate_fn=central,
        backend="inline",  # or "process": a pool of workers, bit-identical results
        progress=True,
    )
    print(result.history.metric("accuracy")[-1])
