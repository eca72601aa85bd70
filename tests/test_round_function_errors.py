"""Errors of a round's own functions (metrics, a reducer) say what is wrong and where."""

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


def _in_place(params: Any, contributions: Any) -> Any:
    for name in params:
        params[name] += contributions[0].as_delta(params)[name]
    return params


def test_a_reducer_function_writing_into_the_weights_is_told_they_are_read_only() -> None:
    # Before: "round 1: aggregation raised ValueError: output array is read-only",
    # with no word of which function wrote where, nor what to do instead.
    strategy = covey.Strategy(aggregator=covey.aggregate.reducer(_in_place), fraction_evaluate=0.0)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(Shift, 3, 1, strategy, {"w": np.zeros(2)})
    cause = caught.value.__cause__
    assert isinstance(cause, ValueError)
    assert any("reducer(_in_place) wrote into its inputs" in note for note in cause.__notes__), (
        cause.__notes__
    )
