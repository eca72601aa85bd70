"""A tiny federation for process tests: eight weights, clients that add one."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

import covey
from covey.deploy import ServerApp


class TinyClient(covey.Client):
    """Adds one to every weight (after ``COVEY_TINY_DELAY`` seconds), or sends nine, ``wrong``.

    ``COVEY_TINY_DELAY_ROUND`` names the one round the delay is for (else: every round).
    """

    def __init__(self, wrong: bool = False) -> None:
        self.wrong = wrong

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        slow = os.environ.get("COVEY_TINY_DELAY_ROUND")
        if slow is None or slow == str(config.get("round")):
            time.sleep(float(os.environ.get("COVEY_TINY_DELAY", "0")))
        if self.wrong:  # the server refuses it: the model has eight
            return covey.FitResult(weights={"w": np.zeros(9)}, num_examples=1)
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def client_fn(cid: int) -> TinyClient:
    """Client ``cid``; the one ``COVEY_TINY_WRONG`` names sends weights of the wrong shape."""
    return TinyClient(wrong=str(cid) == os.environ.get("COVEY_TINY_WRONG"))


def initial() -> dict[str, Any]:
    return {"w": np.zeros(8)}


def server_app() -> ServerApp:
    strategy = covey.FedAvg(
        min_available_clients=int(os.environ.get("COVEY_TINY_CLIENTS", "2")),
        min_fit_clients=1,
        fraction_evaluate=0.0,
    )
    return ServerApp(strategy=strategy, initial_weights=initial, rounds=2)
