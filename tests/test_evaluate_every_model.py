"""``covey run`` stopped after a round ``evaluate_every`` skips still keeps its model.

The model after the last complete round is written to ``model.safetensors`` by
what the app's ``evaluate_fn`` saw; a round not due for evaluation was never
shown to it, so the model is the one the run folder saved for that round.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

import covey
from covey.cli._model import MODEL_FILE, RoundModels, keep_model, model_round
from covey.core._history import RoundRecord
from covey.server._roundfiles import read_weights

pytestmark = pytest.mark.timeout(120)


class Halver(covey.Client):
    """Halves the weights; evaluates to the sum of their magnitudes."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(np.abs(weights["w"]).sum()), num_examples=1)


def _stop_after(round: int) -> Any:
    def on_round(record: RoundRecord) -> None:
        if record.round == round:
            raise KeyboardInterrupt

    return on_round


def test_a_run_stopped_after_a_round_not_evaluated_keeps_that_round_s_model(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    models = RoundModels(lambda rnd, weights: (float(np.abs(weights["w"]).sum()), {}))
    with pytest.raises(KeyboardInterrupt):
        covey.simulate(
            lambda cid: Halver(),
            num_clients=2,
            rounds=10,
            strategy=covey.FedAvg(evaluate_every=3),
            initial_weights={"w": np.full(3, 8.0, dtype=np.float32)},
            evaluate_fn=models.evaluate,
            on_round=[models.finished, _stop_after(4)],
            run_dir=run_dir,
        )
    out = io.StringIO()
    said = keep_model(run_dir, models, Console(file=out))
    assert said is not None, out.getvalue()
    assert "after round 4" in said
    path = run_dir / MODEL_FILE
    assert model_round(path) == 4
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    weights = read_weights(4, path, digest)
    np.testing.assert_array_equal(weights["w"], np.full(3, 0.5, dtype=np.float32))
