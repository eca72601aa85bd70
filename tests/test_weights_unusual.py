"""Models that are not one float32 matrix: 0-d and empty arrays, integer buffers, odd names."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

import covey
from covey import EvaluateResult, FitResult
from covey.secagg import secure


class Nudge(covey.Client):
    """Sends the global weights with every float value raised by 0.1 (as new weights)."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(
            weights={
                k: np.array(v + 0.1 if v.dtype.kind == "f" else v, dtype=v.dtype)
                for k, v in weights.items()
            },
            num_examples=3,
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.0, num_examples=1)


def test_secure_aggregation_takes_a_0d_float_array_sent_as_new_weights() -> None:
    model = {"w": np.ones(3, np.float32), "temperature": np.array(1.5, np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unsigned keys: fine in simulation
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0, bits=16)
    result = covey.simulate(lambda cid: Nudge(), 4, 1, strategy, model)
    assert result.history.rounds[-1].fit_failures == []
    out = result.weights["temperature"]
    assert isinstance(out, np.ndarray)
    assert out.shape == ()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1.6, atol=1e-3)
    np.testing.assert_allclose(result.weights["w"], 1.1, atol=1e-3)
