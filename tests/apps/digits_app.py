"""The digits benchmark workload as a deployable app, for the deployment tests.

Settings come from environment variables so one module serves every test:
COVEY_TEST_MIN_FIT, COVEY_TEST_MIN_AVAILABLE, COVEY_TEST_ROUNDS, and
COVEY_TEST_SLOW_ROUND / COVEY_TEST_MARKERS to make clients announce (by a
marker file) and linger in one round, so a test can act mid-round.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey.deploy import ServerApp

NUM_CLIENTS = 8


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's digits (the data and the labels), as its ``load_digits`` reads them.

    Read from the file scikit-learn ships, without importing scikit-learn: every
    server and client process of a test loads this app, and starts the sooner.
    """
    spec = importlib.util.find_spec("sklearn")
    origin = spec.origin if spec is not None else None
    assert origin is not None, "the tests need scikit-learn"
    path = Path(origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout: ask scikit-learn itself
        from sklearn.datasets import load_digits as sklearn_digits

        digits = sklearn_digits()
        return digits.data, digits.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def _data() -> tuple[Any, Any, Any, Any]:
    x, y = load_digits()
    x = x / 16.0
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    return x[:1437], y[:1437], x[1437:], y[1437:]


X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = _data()


def sgd_epoch(weights: covey.Weights, x: Any, y: Any, order: Any) -> dict[str, Any]:
    w = np.array(weights["W"])
    b = np.array(weights["b"])
    for start in range(0, len(order), 32):
        idx = order[start : start + 32]
        xb = x[idx]
        z = xb @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(idx)), y[idx]] -= 1.0
        p /= len(idx)
        w -= 0.1 * (xb.T @ p)
        b -= 0.1 * p.sum(axis=0)
    return {"W": w, "b": b}


class DigitsClient(covey.Client):
    """Client k trains one epoch on its IID share with order default_rng(k + round)."""

    def __init__(self, k: int, num_clients: int = NUM_CLIENTS) -> None:
        self.k = k
        part = np.array_split(np.arange(len(Y_TRAIN)), num_clients)[k]
        self.x, self.y = X_TRAIN[part], Y_TRAIN[part]

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        rnd = int(config["round"])
        markers = os.environ.get("COVEY_TEST_MARKERS")
        if markers:
            Path(markers, f"fit-r{rnd}-k{self.k}").touch()
        if str(rnd) == os.environ.get("COVEY_TEST_SLOW_ROUND"):
            time.sleep(float(os.environ.get("COVEY_TEST_SLOW_SECONDS", "3")))
        order = np.random.default_rng(self.k + rnd).permutation(len(self.y))
        return covey.FitResult(
            weights=sgd_epoch(weights, self.x, self.y, order), num_examples=len(self.y)
        )

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=len(self.y))


def client_fn(cid: int) -> DigitsClient:
    return DigitsClient(cid)


def central(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
    logits = X_TEST @ weights["W"] + weights["b"]
    return 0.0, {"accuracy": float((logits.argmax(axis=1) == Y_TEST).mean())}


def initial() -> dict[str, Any]:
    return {"W": np.zeros((64, 10)), "b": np.zeros(10)}


def strategy() -> covey.Strategy:
    return covey.FedAvg(
        fraction_fit=1.0,
        min_fit_clients=int(os.environ.get("COVEY_TEST_MIN_FIT", NUM_CLIENTS)),
        fraction_evaluate=0.0,
        min_available_clients=int(os.environ.get("COVEY_TEST_MIN_AVAILABLE", NUM_CLIENTS)),
    )


def server_app() -> ServerApp:
    return ServerApp(
        strategy=strategy(),
        initial_weights=initial,
        rounds=int(os.environ.get("COVEY_TEST_ROUNDS", "5")),
        evaluate_fn=central,
    )
