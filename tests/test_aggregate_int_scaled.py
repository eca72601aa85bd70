"""An integer array's change scaled by a per-client step (clip_norm, staleness_weight).

Such a step turns a client's weights into a delta of the model's dtypes. A change
of an integer array past what that delta holds as a signed number wrapped: a
``uint8`` going from 10 to 250, clipped by 0.96, became a delta of 231, read as
-25, and the mean of 250 and 10 came out as 254. The client is now refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import covey
from covey.aggregate import (
    AggregationError,
    Contribution,
    chain,
    clip_norm,
    run_round,
    weighted_mean,
)

PARAMS: dict[str, np.ndarray] = {"u8": np.array([10], np.uint8), "w": np.zeros(1)}
FAR = {"u8": np.array([250], np.uint8), "w": np.array([100.0])}


class _Far(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: covey.Weights, config: covey.Config) -> covey.FitResult:
        return covey.FitResult(weights=FAR if self.cid == 0 else weights, num_examples=1)

    def evaluate(self, weights: covey.Weights, config: covey.Config) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


def test_an_unclipped_integer_change_is_averaged_exactly() -> None:
    step = chain(clip_norm(1e9), weighted_mean())
    contributions = [Contribution(0, 1, weights=FAR), Contribution(1, 1, weights=PARAMS)]
    _, agg = run_round(step, step.init(PARAMS), 1, PARAMS, contributions)
    assert agg is not None
    assert agg.apply(PARAMS)["u8"].tolist() == [130]


def test_a_clipped_integer_change_past_its_dtype_is_refused_naming_the_array() -> None:
    step = chain(clip_norm(250.0), weighted_mean())
    with pytest.raises(AggregationError) as info:
        run_round(step, step.init(PARAMS), 1, PARAMS, [Contribution(0, 1, weights=FAR)])
    assert str(info.value) == (
        "'u8' changed by 231 at flat index 0 once scaled by 0.961538, past what a uint8 "
        "update holds (-128 to 127): it would be averaged as another change; keep 'u8' in a "
        "wider integer dtype"
    )


def test_in_a_round_only_that_client_is_refused() -> None:
    strategy = covey.Strategy(
        aggregator=chain(clip_norm(250.0), weighted_mean()),
        fraction_evaluate=0.0,
        min_fit_clients=1,
    )
    result = covey.simulate(_Far, 2, 1, strategy, PARAMS)
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.cid == 0
    assert "'u8' changed by 231" in failure.error
    np.testing.assert_array_equal(result.weights["u8"], PARAMS["u8"])


def test_a_clipped_change_within_the_dtype_is_scaled() -> None:
    params: dict[str, np.ndarray] = {"i8": np.array([0], np.int8), "w": np.zeros(1)}
    far = {"i8": np.array([100], np.int8), "w": np.array([100.0])}
    step = chain(clip_norm(70.0), weighted_mean())
    _, agg = run_round(step, step.init(params), 1, params, [Contribution(0, 1, weights=far)])
    assert agg is not None
    assert agg.apply(params)["i8"].tolist() == [49]  # 100 * 70 / sqrt(2) / 100, rounded
