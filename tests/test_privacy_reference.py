"""Central and local DP checked from outside: every epsilon recomputed with dp-accounting.

The references are dp-accounting's own accountants, built here from the run's
recorded facts (the sampling rate, the rounds run), and NumPy for the noise and
the clipping; covey's ledger and history are compared with them.
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import pld, rdp

import covey
from covey import privacy
from covey.aggregate import Aggregate, Begin, Contribution, End, weighted_mean
from covey.privacy._step import Mechanism, Shared, dp_step

DELTA = 1e-5


class Update(covey.Client):
    """Sends ``update`` as a delta, or as full weights with ``as_weights``."""

    def __init__(self, update: dict[str, np.ndarray], as_weights: bool = False) -> None:
        self.update = update
        self.as_weights = as_weights

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        if self.as_weights:
            new = {k: (weights[k] + v).astype(weights[k].dtype) for k, v in self.update.items()}
            return covey.FitResult(weights=new, num_examples=7)
        return covey.FitResult(delta=self.update, num_examples=7)


def _reference(z: float, q: float, rounds: int, accountant: str) -> float:
    """Epsilon of ``rounds`` Poisson-sampled Gaussian rounds, straight from dp-accounting."""
    event: dpa.DpEvent = dpa.GaussianDpEvent(z)
    if q < 1.0:
        event = dpa.PoissonSampledDpEvent(q, event)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(dpa.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(DELTA))


def _strategy(q: float) -> covey.Strategy:
    return covey.FedAvg(fraction_fit=q, min_fit_clients=0, fraction_evaluate=0.0)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_every_rounds_epsilon_equals_dp_accounting_for_the_rate_and_rounds_run(
    accountant: str,
) -> None:
    z, q, n = 1.1, 0.4, 25
    dp = privacy.central(
        _strategy(q),
        noise_multiplier=z,
        clip=1.0,
        delta=DELTA,
        accountant=accountant,  # type: ignore[arg-type]
    )
    result = covey.simulate(lambda c: Update({"w": np.full(3, 0.1)}), n, 4, dp, {"w": np.zeros(3)})
    rounds = [r for r in result.history.rounds if r.round > 0]  # round 0: the start
    assert len(rounds) == 4
    for record in rounds:
        info = record.aggregate_info["dp"]
        # The rate the ledger accounts is the rate the selector sampled with, and the
        # divisor is that rate times the clients it sampled from.
        entry = info["ledger"]["entries"][0][0]
        assert entry["sampling_probability"] == q
        assert info["expected_clients"] == pytest.approx(q * n)
        assert info["rounds"] == record.round
        reference = _reference(z, q, record.round, accountant)
        assert record.privacy is not None
        assert record.privacy["epsilon"] == pytest.approx(reference, rel=1e-6)
        assert record.privacy["delta"] == DELTA


def test_the_budget_stop_falls_on_the_last_round_within_the_target() -> None:
    z, q = 0.9, 0.5
    eps = [_reference(z, q, t, "rdp") for t in range(1, 12)]
    target = (eps[5] + eps[6]) / 2  # six rounds fit, the seventh would not
    dp = privacy.central(
        _strategy(q), noise_multiplier=z, clip=1.0, delta=DELTA, target_epsilon=target
    )
    result = covey.simulate(lambda c: Update({"w": np.ones(2)}), 10, 11, dp, {"w": np.zeros(2)})
    assert [r.round for r in result.history.rounds if r.round > 0] == list(range(1, 7))
    assert result.history.rounds[-1].privacy["epsilon"] == pytest.approx(eps[5], rel=1e-6)  # type: ignore[index]
    assert "round 7" in (result.history.stopped_reason or "")


def test_a_resumed_ledger_continues_where_the_first_part_stopped() -> None:
    z, q = 1.0, 0.3
    mech = Mechanism("m", z, 1.0, DELTA, sampling_rate=q)
    first, rest = mech.ledger(5), mech.ledger(12)
    assert first.epsilon(DELTA) == pytest.approx(_reference(z, q, 5, "rdp"), rel=1e-9)
    assert rest.epsilon(DELTA) == pytest.approx(_reference(z, q, 12, "rdp"), rel=1e-9)
    # What the hook reads back from a stored history rebuilds the same ledger.
    assert privacy.Ledger.from_json(first.to_json()) == first


def _one_round(
    updates: list[dict[str, np.ndarray]],
    params: dict[str, np.ndarray],
    *,
    z: float,
    clip: float,
    expected: float,
    seed: int = 0,
    weights: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Drive the DP step by hand for one round; return the private mean and its record."""
    mech = Mechanism("t", z, clip, DELTA, sampling_rate=1.0, expected_clients=expected)
    step = dp_step(weighted_mean(), mech, Shared(seed=seed))
    state = step.init(params)
    state, _ = step.update(state, Begin(1, params))
    for cid, update in enumerate(updates):
        if weights:
            new = {k: (params[k] + v).astype(params[k].dtype) for k, v in update.items()}
            event = Contribution(cid, 1, weights=new)
        else:
            event = Contribution(cid, 1, delta=update)
        state, _ = step.update(state, event)
    _, out = step.update(state, End(1, {}))
    (agg,) = out
    assert isinstance(agg, Aggregate)
    assert agg.delta is not None
    return dict(agg.delta), agg.info["dp"]


def test_the_noise_has_standard_deviation_z_clip_over_the_expected_clients() -> None:
    z, clip, m, dim = 1.7, 0.4, 12.5, 200_000
    params = {"a": np.zeros(dim // 2), "b": np.zeros((dim // 4, 2))}
    zeros = [{k: np.zeros_like(v) for k, v in params.items()} for _ in range(5)]
    mean, info = _one_round(zeros, params, z=z, clip=clip, expected=m, seed=123)
    noise = np.concatenate([v.ravel() for v in mean.values()])
    sigma = z * clip / m
    # The sample variance of `dim` normals is within 5 standard errors of sigma^2.
    assert abs(noise.var() / sigma**2 - 1.0) < 5 * math.sqrt(2.0 / dim)
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(dim)
    assert info["noise_std"] == pytest.approx(z * clip)
    assert info["expected_clients"] == m


def test_clipping_is_over_all_arrays_together_and_weights_equal_deltas() -> None:
    params = {"a": np.zeros(2), "b": np.zeros((1, 1))}
    big = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}  # joint norm 5, each < 5
    small = {"a": np.array([0.1, 0.2]), "b": np.array([[0.2]])}  # norm 0.3: kept
    zero = {"a": np.zeros(2), "b": np.zeros((1, 1))}
    tiny = 1e-12
    for weights in (False, True):
        mean, info = _one_round(
            [big, small, zero], params, z=tiny, clip=1.0, expected=4.0, weights=weights
        )
        want_a = (np.array([3.0, 0.0]) / 5 + small["a"]) / 4
        want_b = (np.array([[4.0]]) / 5 + small["b"]) / 4
        np.testing.assert_allclose(mean["a"], want_a, atol=1e-9)
        np.testing.assert_allclose(mean["b"], want_b, atol=1e-9)
        assert info["clipped"] == [0]
        assert info["clients"] == 3
        assert info["nonfinite"] == []


def test_a_nan_update_is_dropped_and_the_rest_noised_as_documented() -> None:
    params = {"w": np.zeros(3)}
    good = {"w": np.array([0.3, 0.0, 0.0])}
    bad = {"w": np.array([np.nan, 0.0, 1.0])}
    mean, info = _one_round([good, bad, good], params, z=1e-12, clip=1.0, expected=2.0)
    np.testing.assert_allclose(mean["w"], [0.3, 0.0, 0.0], atol=1e-9)
    assert info["nonfinite"] == [1]
    assert info["clients"] == 2


def test_a_float16_update_with_a_norm_past_256_is_clipped_not_dropped() -> None:
    # 100 entries of 100: the norm is 1000, but its square, 1e6, overflows float16.
    params = {"w": np.zeros(100, np.float16), "b": np.zeros(4, np.float16)}
    update = {"w": np.full(100, 100.0, np.float16), "b": np.zeros(4, np.float16)}
    for weights in (False, True):
        mean, info = _one_round([update], params, z=1e-12, clip=2.0, expected=1.0, weights=weights)
        assert info["nonfinite"] == []
        assert info["clipped"] == [0]
        assert mean["w"].dtype == np.float16
        assert np.linalg.norm(mean["w"].astype(np.float64)) == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_a_model_with_an_integer_or_bool_array_is_refused_by_every_dp_mechanism(
    dtype: type,
) -> None:
    params = {"w": np.zeros(3), "c": np.ones(2, dtype)}
    dp = privacy.central(_strategy(1.0), noise_multiplier=1.0, clip=1.0, delta=DELTA)
    with pytest.raises(TypeError, match=r"non-floating-point arrays \['c'\]"):
        dp.aggregator.init(params)
    # A client's change of such an array is refused too, not clipped by a wrapped value.
    lowered = {"w": np.zeros(3), "c": (np.ones(2, dtype) * 0).astype(dtype)}
    client = privacy.ClipUpdates(Update(lowered, as_weights=True))
    with pytest.raises(TypeError, match="non-floating-point"):
        client.fit(params, {"dp_clip": 1.0})


def test_client_side_clipping_of_a_float16_update_keeps_its_direction() -> None:
    update = {"w": np.full(100, 100.0, np.float16)}
    out = privacy.ClipUpdates(Update(update)).fit(
        {"w": np.zeros(100, np.float16)}, {"dp_clip": 2.0}
    )
    assert out.delta is not None
    assert out.delta["w"].dtype == np.float16
    assert np.linalg.norm(out.delta["w"].astype(np.float64)) == pytest.approx(2.0, rel=1e-3)


def test_local_dp_sigma_and_epsilon_equal_dp_accounting() -> None:
    eps, clip = 2.0, 0.5
    client = privacy.LocalDP(
        Update({"w": np.zeros(50_000)}), epsilon=eps, delta=DELTA, clip=clip, seed=4
    )
    # The analytic Gaussian at sensitivity 2 * clip, as dp-accounting calibrates it.
    assert client.sigma == pytest.approx(2 * clip * dpa.get_sigma_gaussian(eps, DELTA), rel=1e-6)
    released = [client.fit({"w": np.zeros(50_000)}, {}) for _ in range(3)]
    noise = released[0].delta["w"]  # type: ignore[index]
    assert noise.std() == pytest.approx(client.sigma, rel=0.02)
    for k, result in enumerate(released, start=1):
        acc = pld.PLDAccountant()
        acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(client.sigma / (2 * clip)), k))
        assert result.metrics["dp_epsilon"] == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)
    # One release costs the epsilon asked for.
    assert released[0].metrics["dp_epsilon"] == pytest.approx(eps, rel=1e-6)


def test_local_dp_of_a_float16_update_is_clipped_to_clip_before_the_noise() -> None:
    # The same client in float64 and float16, with the same noise seed: the releases
    # differ by float16 rounding only (before the fix the float16 update became 0).
    releases = {}
    for dtype in (np.float64, np.float16):
        update = {"w": np.full(100, 100.0, dtype)}
        client = privacy.LocalDP(Update(update), epsilon=10.0, delta=DELTA, clip=2.0, seed=5)
        out = client.fit({"w": np.zeros(100, dtype)}, {})
        assert out.metrics["dp_clipped"] == 1.0
        assert out.delta is not None
        assert out.delta["w"].dtype == dtype
        releases[dtype] = out.delta["w"].astype(np.float64)
    np.testing.assert_allclose(releases[np.float16], releases[np.float64], rtol=2e-3, atol=2e-3)


def test_adaptive_clipping_costs_what_its_two_gaussians_cost_together() -> None:
    # Andrew et al.: the update noise z_u and the clipped-count noise sigma_b (a count
    # of sensitivity 1/2) are released together; dp-accounting composes the pair.
    z, q, n = 1.0, 0.5, 40
    dp = privacy.central(
        _strategy(q), noise_multiplier=z, clip=0.2, delta=DELTA, adaptive=True, noise_seed=1
    )
    result = covey.simulate(
        lambda c: Update({"w": np.full(4, 0.05 * (c % 7))}), n, 3, dp, {"w": np.zeros(4)}
    )
    for record in [r for r in result.history.rounds if r.round > 0]:
        info = record.aggregate_info["dp"]
        z_update = info["noise_std"] / info["clip"]
        sigma_b = 0.05 * info["expected_clients"]
        pair = dpa.ComposedDpEvent(
            [dpa.GaussianDpEvent(z_update), dpa.GaussianDpEvent(2 * sigma_b)]
        )
        acc = rdp.RdpAccountant()
        acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, pair), record.round))
        assert record.privacy is not None
        assert record.privacy["epsilon"] == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)
        assert z_update > z  # the update gets less noise than z: the count takes the rest


def test_dp_ftrls_epsilon_equals_dp_accounting_over_full_and_partial_trees() -> None:
    z, tree = 2.0, 4
    dp = privacy.dp_ftrl(
        _strategy(1.0), noise_multiplier=z, clip=1.0, delta=DELTA, tree_rounds=tree
    )
    result = covey.simulate(lambda c: Update({"w": np.ones(2)}), 8, 6, dp, {"w": np.zeros(2)})
    relation = dpa.NeighboringRelation.REPLACE_SPECIAL
    for record in [r for r in result.history.rounds if r.round > 0]:
        full, part = divmod(record.round, tree)
        events: list[dpa.DpEvent] = [dpa.SingleEpochTreeAggregationDpEvent(z, tree)] * full
        if part:
            events.append(dpa.SingleEpochTreeAggregationDpEvent(z, part))
        acc = rdp.RdpAccountant(neighboring_relation=relation)
        acc.compose(dpa.ComposedDpEvent(events))
        assert record.privacy is not None
        assert record.privacy["epsilon"] == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)
