"""Robust aggregation under attack: 100 clients on digits, 20 send sign-flipped updates x10.

Each client holds a random 150-image sample of the digits training set (the
samples overlap: 100 clients share 1,437 images) and trains logistic regression
for one epoch per round. The 20 attackers send ``-10`` times their honest update.
FedAvg's mean is dragged wherever the attackers push it; the median, trimmed
mean, Krum, Multi-Krum, Bulyan and the geometric median (RFA) ignore them and
stay close to the accuracy of a run without attackers. Run it::

    python examples/robust_aggregation.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import covey
from covey.data import load_digits
from covey.models import logistic_evaluate, logistic_init, logistic_sgd_epoch

NUM_CLIENTS = 100
NUM_ATTACKERS = 20
SAMPLES_PER_CLIENT = 150
ROUNDS = 10
BOOST = 10.0

OPTIONS: dict[str, Any] = {"fraction_fit": 1.0, "fraction_evaluate": 0.0}
RULES: dict[str, Callable[[], covey.Strategy]] = {
    "FedAvg": lambda: covey.FedAvg(**OPTIONS),
    "FedMedian": lambda: covey.FedMedian(**OPTIONS),
    "FedTrimmedAvg": lambda: covey.FedTrimmedAvg(beta=0.2, **OPTIONS),
    "Krum": lambda: covey.Krum(f=NUM_ATTACKERS, **OPTIONS),
    "MultiKrum": lambda: covey.MultiKrum(f=NUM_ATTACKERS, **OPTIONS),
    "Bulyan": lambda: covey.Bulyan(f=NUM_ATTACKERS, **OPTIONS),
    "FedRFA": lambda: covey.FedRFA(**OPTIONS),
}

data = load_digits(seed=0)
parts = [
    np.sort(np.random.default_rng([7, cid]).choice(len(data.y_train), SAMPLES_PER_CLIENT, False))
    for cid in range(NUM_CLIENTS)
]
ATTACKERS = frozenset(
    int(c) for c in np.random.default_rng(1).choice(NUM_CLIENTS, NUM_ATTACKERS, replace=False)
)


class DigitsClient(covey.Client):
    """One epoch of logistic regression; an attacker sends ``-BOOST`` times its honest update."""

    def __init__(self, cid: int, attacker: bool) -> None:
        self.cid, self.attacker = cid, attacker
        self.x, self.y = data.client(parts[cid])

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        order = np.random.default_rng([self.cid, config["round"]]).permutation(len(self.y))
        new = logistic_sgd_epoch(weights, self.x, self.y, lr=0.3, batch_size=32, order=order)
        delta = {k: new[k] - weights[k] for k in new}
        if self.attacker:
            delta = {k: -BOOST * v for k, v in delta.items()}
        return covey.FitResult(delta=delta, num_examples=len(self.y))


def accuracy(weights: covey.Weights) -> float:
    """Accuracy of ``weights`` on the held-out digits."""
    return logistic_evaluate(weights, data.x_test, data.y_test)[1]


def run(rule: str, attacked: bool, rounds: int = ROUNDS) -> float:
    """Final test accuracy of ``rule`` with or without the attackers."""
    attackers = ATTACKERS if attacked else frozenset()
    result = covey.simulate(
        lambda cid: DigitsClient(cid, cid in attackers),
        num_clients=NUM_CLIENTS,
        rounds=rounds,
        strategy=RULES[rule](),
        initial_weights=logistic_init(data.num_features, data.num_classes),
    )
    return accuracy(result.weights)


def main() -> None:
    clean_fedavg = run("FedAvg", attacked=False)
    print(f"{'rule':<14} {'clean':>7} {'attacked':>9}")
    for rule in RULES:
        clean = clean_fedavg if rule == "FedAvg" else run(rule, attacked=False)
        print(f"{rule:<14} {clean:>7.3f} {run(rule, attacked=True):>9.3f}")


if __name__ == "__main__":
    main()
