"""Federated evaluation as recorded in the history: metric types, round trips, resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey import EvaluateResult, FitResult


class Plain(covey.Client):
    """Trains by adding one; evaluates to a fixed loss."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=10)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.5, num_examples=10, metrics={"accuracy": 1.0})


def numpy_metrics(results: Any) -> dict[str, Any]:
    """Custom evaluation metrics as NumPy computes them."""
    return {"f32": np.float32(0.25), "i32": np.int32(2), "zero_d": np.array(0.5)}


def test_numpy_scalars_from_custom_metrics_read_the_same_before_and_after_json(
    tmp_path: Path,
) -> None:
    strategy = covey.FedAvg(evaluate_metrics=numpy_metrics, fit_metrics=numpy_metrics)
    result = covey.simulate(
        lambda cid: Plain(), 2, 2, strategy, {"w": np.zeros(2)}, run_dir=tmp_path
    )
    saved = covey.History.load(tmp_path)
    for source in ("evaluate", "fit"):
        for name in ("f32", "i32", "zero_d"):
            assert result.history.metric(name, source) == saved.metric(name, source)
            assert len(saved.metric(name, source)) == 2
    assert result.history[1].evaluate_metrics == {"f32": 0.25, "i32": 2, "zero_d": 0.5}
    assert type(result.history[1].evaluate_metrics["i32"]) is int
