"""A small hand-made federation for the strategy reference tests.

Client ``cid`` moves every float array by a seeded normal step of its own size
(``SCALE[cid]``) and every integer array by a seeded integer in ``[-3, 3]``, so a
reference can replay any round from the global weights alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import covey

Arrays = dict[str, np.ndarray]
Model = covey.Weights  # what a client receives: read-only arrays by name

SCALE = (0.5, 1.0, 2.0, 0.3, 1.5, 0.8, 1.2, 3.0, 0.1)
INIT: Arrays = {
    "W": np.zeros((2, 3)),
    "b": np.linspace(-1.0, 1.0, 4).astype(np.float32),
    "count": np.arange(3, dtype=np.int64),
}


def local_update(cid: int, rnd: int, weights: Model) -> Arrays:
    """Client ``cid``'s new weights in round ``rnd``: a seeded move of its own size."""
    rng = np.random.default_rng([cid, rnd])
    out: Arrays = {}
    for name, value in weights.items():
        if value.dtype.kind == "f":
            step = SCALE[cid % len(SCALE)] * rng.normal(size=value.shape)
            out[name] = (value.astype(np.float64) + step).astype(value.dtype)
        else:
            out[name] = (value + rng.integers(-3, 4, size=value.shape)).astype(value.dtype)
    return out


def workload(examples: Sequence[int], *, delta: bool = False, fail: Sequence[int] = ()) -> Any:
    """A client class: client ``cid`` has ``examples[cid]`` examples, sends weights or a delta."""

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            if self.cid in fail:
                raise RuntimeError("this client always fails")
            new = local_update(self.cid, config["round"], weights)
            n = examples[self.cid]
            if delta:
                moved = {k: np.subtract(new[k], weights[k], dtype=v.dtype) for k, v in new.items()}
                return covey.FitResult(delta=moved, num_examples=n)
            return covey.FitResult(weights=new, num_examples=n)

        def evaluate(self, weights: Model, config: dict[str, Any]) -> covey.EvaluateResult:
            metrics: dict[str, Any] = {
                "acc": self.cid / 10,
                **({"odd": 1.0} if self.cid % 2 else {}),
            }
            return covey.EvaluateResult(
                loss=float(self.cid) ** 2, num_examples=examples[self.cid], metrics=metrics
            )

    return Client


def run(
    strategy: covey.Strategy,
    examples: Sequence[int],
    init: Arrays = INIT,
    *,
    rounds: int = 3,
    delta: bool = False,
    fail: Sequence[int] = (),
    **kwargs: Any,
) -> Any:
    client = workload(examples, delta=delta, fail=fail)
    return covey.simulate(client, len(examples), rounds, strategy, init, **kwargs)
