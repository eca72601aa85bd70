"""A federation whose server checks, each round, whether its step-0 model is still alive.

``initial`` keeps only a weak reference to the array it builds; the central
evaluation records, per round, whether something still holds that array.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np

import covey
from covey.deploy import ServerApp

made: list[weakref.ref[np.ndarray]] = []
alive: dict[int, bool] = {}


def initial() -> dict[str, Any]:
    w = np.zeros(1 << 16)
    made.append(weakref.ref(w))
    return {"w": w}


def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
    gc.collect()
    alive[rnd] = made[-1]() is not None
    return 0.0, {}


def server_app() -> ServerApp:
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    return ServerApp(strategy=strategy, initial_weights=initial, rounds=2, evaluate_fn=evaluate)
