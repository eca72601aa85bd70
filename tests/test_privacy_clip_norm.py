"""The norm an update is clipped by: summed in float64, finite for every finite update."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy
from covey.aggregate import Contribution, chain, run_round, weighted_mean
from covey.privacy._step import Mechanism, Shared, dp_step


def _step(clip: float) -> Any:
    mech = Mechanism(
        name="t",
        noise_multiplier=1e-12,
        clip=clip,
        delta=1e-5,
        sampling_rate=1.0,
        expected_clients=1,
    )
    return dp_step(chain(weighted_mean()), mech, Shared(seed=0))


def _norm64(values: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in values.values()))


def test_a_float32_update_just_over_the_clip_is_clipped() -> None:
    # Summed in float32 (BLAS sdot), the squares of these million values lose
    # about 1.6e-4 of the norm: the update, over the clip, would pass as under it.
    update = np.full(1_000_000, 1e-3, dtype=np.float32)
    update[0] = 1.0
    true_norm = _norm64({"w": update})
    clip = true_norm * (1 - 5e-5)
    params = {"w": np.zeros_like(update)}
    step = _step(clip)
    _, out = run_round(
        step, step.init(params), 1, params, [Contribution(0, 1, delta={"w": update})]
    )
    assert out is not None
    assert out.info["dp"]["clipped"] == [0]
    assert _norm64(out.apply(params)) <= clip * (1 + 1e-6)


@pytest.mark.parametrize(
    ("dtype", "value"), [(np.float32, 1e20), (np.float64, 1e200)], ids=["float32", "float64"]
)
def test_a_huge_finite_update_is_clipped_not_dropped(dtype: type, value: float) -> None:
    params: dict[str, np.ndarray] = {"w": np.zeros(3, dtype=dtype)}
    step = _step(0.5)
    huge = Contribution(0, 1, delta={"w": np.full(3, value, dtype=dtype)})
    _, out = run_round(step, step.init(params), 1, params, [huge])
    assert out is not None
    assert out.info["dp"]["nonfinite"] == []
    assert out.info["dp"]["clipped"] == [0]
    moved = out.apply(params)["w"]
    assert _norm64({"w": moved}) == pytest.approx(0.5, rel=1e-6)
    assert np.allclose(moved, moved[0])  # the update's direction is kept


class _Huge(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.full(4, 1e200)}, num_examples=1)


def test_client_side_clipping_scales_a_huge_finite_update_to_the_clip() -> None:
    result = privacy.ClipUpdates(_Huge()).fit({"w": np.zeros(4)}, {"dp_clip": 0.5})
    assert result.delta is not None
    assert _norm64(dict(result.delta)) == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_an_adaptive_clip_step_past_what_a_float_holds_is_refused_by_name(seed: int) -> None:
    # The step overflowed (OverflowError: math range error) or sent the clip to 0,
    # where it stayed and the model could never move again.
    mech = Mechanism(
        name="t",
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        sampling_rate=1.0,
        expected_clients=1,
        adaptive=privacy.AdaptiveClipping(learning_rate=1e4, count_stddev=1000.0),
    )
    step = dp_step(chain(weighted_mean()), mech, Shared(seed=seed))
    params = {"w": np.zeros(3)}
    update = Contribution(0, 1, delta={"w": np.full(3, 5.0)})
    with pytest.raises(ValueError, match=r"adaptive clipping: the next clip.*lower learning_rate"):
        run_round(step, step.init(params), 1, params, [update])


def test_adaptive_clipping_steps_the_clip_geometrically() -> None:
    rule = privacy.AdaptiveClipping(target_quantile=0.5, learning_rate=0.2)
    assert rule.next_clip(2.0, 0.75) == pytest.approx(2.0 * math.exp(-0.2 * 0.25))
