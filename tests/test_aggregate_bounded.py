"""The weighted mean skips its overflow guard only where no sum can overflow.

Replies the round loops validate carry whether every value's square is finite
(every value under the square root of its dtype's largest); the mean folds such
replies without entering ``np.errstate`` while the round's examples stay under
2**63. These tests pin the cases where the guard must stay on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from covey import FitResult
from covey.aggregate import Contribution, weighted_mean
from covey.core._messages import MAX_EXAMPLES
from covey.core._weights import WeightsSpec
from covey.strategies._fold import contribution, fold

ROOT32 = float(np.sqrt(np.finfo(np.float32).max))  # 1.84e19


def _fit(value: float, n: int) -> FitResult:
    return FitResult(weights={"w": np.array([value], np.float32)}, num_examples=n)


def test_only_validated_replies_with_finite_squares_are_marked_bounded() -> None:
    spec = WeightsSpec.of({"w": np.zeros(1, np.float32)})
    assert contribution(0, _fit(1.5, 10), spec)._bounded
    assert contribution(0, _fit(0.9 * ROOT32, 10), spec)._bounded
    # Its square overflows float32: folded under the guard.
    assert not contribution(0, _fit(3e37, 10), spec)._bounded
    # A stale reply becomes a difference of two models, which may be twice as large.
    sent = {"w": np.array([-0.9 * ROOT32], np.float32)}
    stale = contribution(0, _fit(0.9 * ROOT32, 10), spec, staleness=1, sent=sent)
    assert stale.delta is not None
    assert not stale._bounded
    # Contributions made by hand or changed by a step are not known to be bounded.
    made = Contribution(0, 10, weights={"w": np.ones(1, np.float32)})
    assert not made._bounded
    marked = contribution(0, _fit(1.5, 10), spec)
    assert not dataclasses.replace(marked, num_examples=3)._bounded


def test_bounded_replies_after_an_unbounded_one_stay_guarded() -> None:
    """An earlier huge reply leaves the sum near the largest float32: later ones can overflow it."""
    results = [_fit(3.4e37, 10), _fit(0.98 * ROOT32, MAX_EXAMPLES), _fit(0.98 * ROOT32, 2**53)]
    new, _ = fold(weighted_mean(), {"w": np.zeros(1, np.float32)}, results)
    total = 10 + 2 * MAX_EXAMPLES
    expected = (10 * 3.4e37 + 2 * MAX_EXAMPLES * float(np.float32(0.98 * ROOT32))) / total
    assert np.isfinite(new["w"]).all()
    np.testing.assert_allclose(new["w"].astype(np.float64), expected, rtol=1e-5)


@pytest.mark.parametrize("form", ["weights", "delta"])
def test_bounded_replies_past_2_63_examples_are_guarded(form: str) -> None:
    """2,100 replies of 2**53 examples: their sum of n * x passes float32's largest value."""
    value = np.array([0.98 * ROOT32], np.float32)
    arrays = {"w": value}
    results = [
        FitResult(weights=arrays, num_examples=MAX_EXAMPLES)
        if form == "weights"
        else FitResult(delta=arrays, num_examples=MAX_EXAMPLES)
        for _ in range(2100)
    ]
    new, _ = fold(weighted_mean(), {"w": np.zeros(1, np.float32)}, results)
    assert np.isfinite(new["w"]).all()
    np.testing.assert_allclose(new["w"], value, rtol=1e-3)  # float32 sums of 2,100 terms
