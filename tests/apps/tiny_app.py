"""A tiny federation for process tests: eight weights, clients that add one."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

import covey
from covey.deploy import ServerApp


class TinyClient(covey.Client):
    """Adds one to every weight (after ``COVEY_TINY_DELAY`` seconds)."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        time.sleep(float(os.environ.get("COVEY_TINY_DELAY", "0")))
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def client_fn(cid: int) -> TinyClient:
    return TinyClient()


def initial() -> dict[str, Any]:
    return {"w": np.zeros(8)}


def server_app() -> ServerApp:
    strategy = covey.FedAvg(
        min_available_clients=int(os.environ.get("COVEY_TINY_CLIENTS", "2")),
        min_fit_clients=1,
        fraction_evaluate=0.0,
    )
    return ServerApp(strategy=strategy, initial_weights=initial, rounds=2)
