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
from covey.aggregate import Begin, Contribution, End, _mean, mean, weighted_mean
from covey.core._messages import MAX_EXAMPLES
from covey.core._weights import Array, WeightsSpec
from covey.strategies._fold import contribution, find_aggregate, fold

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


def _events(bounded: bool, replies: list[FitResult], spec: WeightsSpec) -> list[Contribution]:
    made = [contribution(i, r, spec) for i, r in enumerate(replies)]
    assert all(c._bounded for c in made)
    if bounded:
        return made
    # The same replies unmarked: folded under the guard.
    return [Contribution(c.cid, c.num_examples, weights=c.weights, delta=c.delta) for c in made]


@pytest.mark.parametrize("reducer", [weighted_mean, mean])
@pytest.mark.parametrize("big", [False, True])
def test_unguarded_fold_is_bit_identical_to_the_guarded_one(reducer: object, big: bool) -> None:
    """Every dtype and path of the fold: small arrays, arrays folded block by block, float16."""
    rng = np.random.default_rng(7)
    params: dict[str, Array] = {
        "f64": rng.normal(size=(3, 7)),
        # Over the block size: folded block by block, after arrays folded whole.
        "f32": rng.normal(size=_mean._BLOCK + 3 if big else 12).astype(np.float32),
        "f16": rng.normal(size=9).astype(np.float16),
        "i32": rng.integers(-50, 50, size=8).astype(np.int32),
        "u8": rng.integers(0, 255, size=4).astype(np.uint8),
        "mask": rng.random(6) < 0.5,
        "tiny": np.array(2.5),
    }
    spec = WeightsSpec.of(params)

    def perturbed() -> dict[str, Array]:
        out: dict[str, Array] = {}
        for name, p in params.items():
            if p.dtype.kind == "f":
                out[name] = (p + rng.normal(size=p.shape)).astype(p.dtype)
            elif p.dtype.kind == "b":
                out[name] = rng.random(p.shape) < 0.5
            else:
                out[name] = (p + rng.integers(-3, 4, size=p.shape)).astype(p.dtype)
        return out

    replies = [FitResult(weights=perturbed(), num_examples=int(n)) for n in (3, 17, 1, 250)]
    replies += [FitResult(delta=perturbed(), num_examples=int(n)) for n in (9, 40)]
    results = []
    for bounded in (True, False):
        step = reducer()  # type: ignore[operator]
        state = step.init(params)
        state, _ = step.update(state, Begin(1, params))
        for event in _events(bounded, replies, spec):
            state, _ = step.update(state, event)
        _, out = step.update(state, End(1))
        results.append(find_aggregate(out))
    fast, guarded = results
    assert fast is not None
    assert guarded is not None
    assert fast.delta is not None
    assert guarded.delta is not None
    for name in params:
        assert fast.delta[name].dtype == guarded.delta[name].dtype
        assert fast.delta[name].tobytes() == guarded.delta[name].tobytes(), name
