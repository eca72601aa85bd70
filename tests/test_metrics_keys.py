"""A round's metrics function keyed by client ids is told that metric names are str."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift


def _by_client(results: Any) -> dict[Any, Any]:
    return {k: n for k, (n, _) in enumerate(results)}


@pytest.mark.parametrize("kind", ["fit", "evaluate"])
def test_metrics_keyed_by_client_ids_name_the_key(kind: str) -> None:
    # Before: "fit_metrics _by_client must return a dict of metric names to values,
    # got '{0: 1, 1: 2, 2: 3}'", which is a dict: it did not say what was wrong.
    class Evaluating(Shift):
        def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
            return covey.EvaluateResult(loss=1.0, num_examples=2)

    strategy = covey.Strategy(**{f"{kind}_metrics": _by_client})  # type: ignore[arg-type]
    said = f"{kind}_metrics _by_client must return a dict of metric names to values, got "
    with pytest.raises(TypeError, match=re.escape(said) + r".*its key 0 \(int\) is no name"):
        covey.simulate(Evaluating, 3, 1, strategy, {"w": np.zeros(2)})


def test_metrics_under_one_name_keyed_by_client_ids_are_kept() -> None:
    strategy = covey.Strategy(fit_metrics=lambda results: {"n": _by_client(results)})
    result = covey.simulate(Shift, 3, 1, strategy, {"w": np.zeros(2)})
    assert result.history.rounds[-1].fit_metrics == {"n": {"0": 1, "1": 2, "2": 3}}
