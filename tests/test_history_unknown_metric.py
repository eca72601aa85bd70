"""A metric no round of a history records is refused by name, not read as no values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult
from covey.cli._runs import _last
from covey.core import RoundRecord
from covey.server._outputs import plot_history


def federated_only() -> covey.History:
    """Two rounds of federated evaluation and training metrics, no server-side evaluation."""
    return covey.History(
        [
            RoundRecord(0),
            RoundRecord(
                1,
                evaluate_loss=0.7,
                evaluate_metrics={"accuracy": 0.6},
                fit_metrics={"train_loss": 0.9},
            ),
            RoundRecord(2, evaluate_loss=0.5, evaluate_metrics={"accuracy": 0.8, "f1": 0.4}),
        ]
    )


def test_a_mistyped_metric_names_what_is_recorded_and_the_closest_name() -> None:
    h = federated_only()
    with pytest.raises(ValueError, match="acuracy") as caught:
        h.metric("acuracy", source="evaluate")
    assert str(caught.value) == (
        "no round records 'acuracy' from source='evaluate': it records "
        "['accuracy', 'f1', 'loss'] there; did you mean 'accuracy'?"
    )
    # a metric some rounds record, and a history of no rounds yet, give what exists
    assert h.metric("f1", source="evaluate") == [(2, 0.4)]
    assert h.metric("loss", source="evaluate") == [(1, 0.7), (2, 0.5)]
    assert h.metric("train_loss", source="fit") == [(1, 0.9)]
    empty = covey.History()
    assert empty.metric("accuracy") == []
    assert empty.metric("anything", source="fit") == []
    with pytest.raises(ValueError, match="unknown metric source 'server'"):
        empty.metric("accuracy", source="server")  # type: ignore[arg-type]


def test_a_metric_of_another_source_names_that_source(tmp_path: Path) -> None:
    h = federated_only()
    with pytest.raises(ValueError, match="accuracy") as caught:
        h.metric("accuracy")  # source="central": the run had no evaluate_fn
    message = str(caught.value)
    assert message.startswith("no round records 'accuracy' from source='central': it records ")
    assert "nothing there (source='central' is server-side evaluation" in message
    assert "only with evaluate_fn" in message
    assert message.endswith("; 'accuracy' is recorded from source='evaluate'")
    with pytest.raises(ValueError, match=r"'train_loss' is recorded from source='fit'$"):
        h.metric("train_loss", source="evaluate")
    with pytest.raises(ValueError, match=r"'accuracy' \(NaN aside\) from source='central'"):
        h.best_round("accuracy")
    # what shows whichever metrics a run has reads a run without some of them
    plot_history(h, tmp_path / "plot.png")  # no central values, no "accuracy" centrally
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert _last(h, "accuracy") == "0.8000"
    assert _last(h, "f2") == "-"
    assert _last(covey.History([RoundRecord(0)]), "loss") == "-"


def test_a_simulation_without_evaluate_fn_refuses_central_accuracy_by_name() -> None:
    class Client(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            return FitResult(weights=weights, num_examples=1)

        def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
            return EvaluateResult(loss=0.5, num_examples=1, metrics={"accuracy": 0.75})

    result = covey.simulate(lambda cid: Client(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)})
    assert result.history.metric("accuracy", source="evaluate") == [(1, 0.75)]
    with pytest.raises(ValueError, match="'accuracy' is recorded from source='evaluate'"):
        result.history.metric("accuracy")
