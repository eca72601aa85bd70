"""An evaluate_fn that writes into the weights it is given never changes the global model."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import pytest

import covey


class AddOne(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _run(evaluate_fn: Any) -> covey.sim.SimulationResult:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    return covey.simulate(
        lambda cid: AddOne(), 2, 3, strategy, {"w": np.zeros(2)}, evaluate_fn=evaluate_fn
    )


def test_an_evaluate_fn_unlocking_and_zeroing_the_weights_stops_the_run() -> None:
    # The model was zeroed without a word (final weights [0, 0], not [3, 3]), where
    # the same write by a client stops the run.
    def zeroing(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        w = weights["w"]  # written past its read-only flag, as torch.from_numpy(w).mul_(0) does
        ctypes.memset(w.ctypes.data, 0, w.nbytes)
        return 0.0, {}

    with pytest.raises(RuntimeError, match="round 1: evaluate_fn changed the global weights"):
        _run(zeroing)


def test_an_evaluate_fn_writing_through_numpy_is_told_to_copy() -> None:
    def writing(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        weights["w"][0] = 5.0
        return 0.0, {}

    with pytest.raises(ValueError, match="read-only") as refused:
        _run(writing)
    assert "copy them before changing them in place" in str(refused.value)


def test_an_evaluate_fn_that_copies_or_rebinds_is_fine() -> None:
    def copying(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        mine = {k: v.copy() for k, v in weights.items()}
        mine["w"] *= 0
        weights["w"] = np.ones(2)  # its own dict: the global model keeps its array
        return float(rnd), {}

    result = _run(copying)
    assert result.weights["w"].tolist() == [3.0, 3.0]
    assert [r.central_loss for r in result.history.rounds] == [0.0, 1.0, 2.0, 3.0]
