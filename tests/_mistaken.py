"""Clients that make one mistake each, for the tests of how their failures read.

Client 1 errs; the others send the global weights plus ``step`` (secure
aggregation wants a step inside its clipping range).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import covey
from covey import FitResult


class WrongWeights(covey.Client):
    """Client 1 sends weights of another shape."""

    def __init__(self, cid: int, step: float = 1.0) -> None:
        self.cid, self.step = cid, step

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            return FitResult(weights={"w": np.zeros(7)}, num_examples=1)
        return FitResult(weights={"w": weights["w"] + self.step}, num_examples=1)


class WrongDelta(WrongWeights):
    """Client 1 sends a delta of another dtype."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            return FitResult(delta={"w": np.zeros(6, np.int64)}, num_examples=1)
        return FitResult(delta={"w": np.full(6, self.step)}, num_examples=1)


class Tuple(WrongWeights):
    """Client 1 returns Flower's tuple."""

    def fit(self, weights: Any, config: dict[str, Any]) -> Any:
        if self.cid == 1:
            return [weights["w"]], 1, {}
        return FitResult(weights={"w": weights["w"] + self.step}, num_examples=1)


class NoConfig(covey.Client):
    """A fit that takes no config."""

    def fit(self, weights: Any) -> FitResult:  # type: ignore[override]
        return FitResult(weights=weights, num_examples=1)


class Sends(covey.Client):
    """Sends the global weights plus ``step``, or, with ``wrong``, an array of another shape."""

    def __init__(self, wrong: bool, step: float = 1.0) -> None:
        self.wrong, self.step = wrong, step

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.wrong:
            return FitResult(weights={"w": np.zeros(7)}, num_examples=1)
        return FitResult(weights={"w": weights["w"] + self.step}, num_examples=1)


#: Each erring client with the failure its client 1 must give, as ``"cid: error"``.
MISTAKES = [
    (WrongWeights, "1: client 1's weights: 'w' has shape (7,), expected (6,)"),
    (WrongDelta, "1: client 1's delta: 'w' has dtype int64, expected float64"),
    (
        Tuple,
        "1: TypeError: Tuple.fit() returned tuple, expected covey.FitResult: return "
        "covey.FitResult(weights={name: array}, num_examples=n, metrics={...}) rather "
        "than a (parameters, num_examples, metrics) tuple",
    ),
]
