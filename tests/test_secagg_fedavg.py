"""secure(strategy): the same model as the plain strategy within the quantization error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey.secagg import Noise, ThreatModel, secure
from covey.secagg._ring import scale

CLIP, BITS = 1.0, 16


class Toy(covey.Client):
    def __init__(self, cid: int) -> None:
        rng = np.random.default_rng(cid)
        self.step = rng.uniform(-0.5, 0.5, size=(3, 4)).astype(np.float32)
        self.bias = rng.uniform(-0.5, 0.5, size=4).astype(np.float32)
        self.n = int(rng.integers(1, 50))
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        new = {"w": weights["w"] + self.step * 0.5, "b": weights["b"] + self.bias * 0.5}
        return covey.FitResult(
            weights=new, num_examples=self.n, metrics={"loss": float(self.cid), "tag": "x"}
        )


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((3, 4), np.float32), "b": np.ones(4, np.float32)}


def _run(strategy: covey.Strategy, n: int = 20, rounds: int = 2, **kw: Any) -> Any:
    return covey.simulate(Toy, n, rounds, strategy, _init(), seed=0, **kw)


def _secure(strategy: covey.Strategy, **kw: Any) -> covey.Strategy:
    with pytest.warns(UserWarning, match="honest-but-curious"):
        return secure(strategy, clip_range=CLIP, bits=BITS, **kw)


def test_secure_fedavg_matches_plain_fedavg_with_20_clients() -> None:
    plain = _run(covey.FedAvg(fraction_evaluate=0.0))
    safe = _run(_secure(covey.FedAvg(fraction_evaluate=0.0), metrics={"loss": 100.0}))
    tol = 2 * 2 / scale(CLIP, BITS)  # two rounds, error below one unit per value each
    for name in ("w", "b"):
        assert safe.weights[name].dtype == np.float32
        np.testing.assert_allclose(safe.weights[name], plain.weights[name], atol=tol)
    last = safe.history.rounds[-1]
    assert sorted(last.fit_participants) == list(range(20))
    assert last.fit_examples == plain.history.rounds[-1].fit_examples
    assert last.fit_metrics["loss"] == pytest.approx(
        plain.history.rounds[-1].fit_metrics["loss"], abs=1e-2
    )
    assert "tag" not in last.fit_metrics
    assert last.aggregate_info["secagg_ring_bits"] >= 16


def test_server_side_steps_run_on_the_unmasked_mean() -> None:
    plain = _run(covey.FedAdam(eta=0.1, fraction_evaluate=0.0))
    safe = _run(_secure(covey.FedAdam(eta=0.1, fraction_evaluate=0.0)))
    for name in ("w", "b"):
        np.testing.assert_allclose(safe.weights[name], plain.weights[name], atol=1e-2)
    plain = _run(covey.FedAvgM(fraction_evaluate=0.0))
    safe = _run(_secure(covey.FedAvgM(fraction_evaluate=0.0)))
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=1e-3)


def test_unweighted_mean_is_recognized() -> None:
    strategy = covey.Strategy(
        aggregator=covey.aggregate.chain(covey.aggregate.mean()), fraction_evaluate=0.0
    )
    plain = _run(strategy, rounds=1)
    safe = _run(_secure(strategy), rounds=1)
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=1e-3)


@pytest.mark.parametrize(
    "make",
    [
        covey.FedMedian,
        lambda **kw: covey.FedTrimmedAvg(beta=0.2, **kw),
        lambda **kw: covey.Krum(f=1, **kw),
    ],
)
def test_reducers_that_need_individual_updates_are_refused(make: Any) -> None:
    with pytest.raises(ValueError, match="needs individual updates"):
        secure(make(), clip_range=1.0)


def test_custom_median_chain_is_refused_by_the_probe() -> None:
    strategy = covey.Strategy(aggregator=covey.aggregate.chain(covey.aggregate.median()))
    with pytest.raises(ValueError, match="needs individual updates"):
        secure(strategy, clip_range=1.0)


def test_value_outside_the_clip_range_fails_that_client_loudly() -> None:
    class Big(Toy):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            res = super().fit(weights, config)
            if self.cid == 3:
                assert res.weights is not None
                return covey.FitResult(
                    weights={"w": res.weights["w"] + 5.0, "b": res.weights["b"]},
                    num_examples=self.n,
                )
            return res

    out = covey.simulate(Big, 10, 1, _secure(covey.FedAvg(fraction_evaluate=0.0)), _init(), seed=0)
    record = out.history.rounds[-1]
    assert 3 not in record.fit_participants
    failure = next(f for f in record.fit_failures if f.cid == 3)
    assert "clipping range" in failure.error


def test_abort_stops_the_run_with_the_reason_recorded() -> None:
    class Flaky(Toy):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            if self.cid < 7:
                raise RuntimeError("gone")
            return super().fit(weights, config)

    strategy = _secure(
        covey.FedAvg(fraction_evaluate=0.0), threat=ThreatModel(0.3, 0.3), complete=True
    )
    with pytest.raises(covey.FederationError, match="aborted"):
        covey.simulate(Flaky, 10, 1, strategy, _init(), seed=0)


def test_clients_failing_alike_are_named_together_when_secure_aggregation_aborts() -> None:
    class Broken(Toy):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            raise ValueError("no data on this site")

    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    with pytest.raises(covey.FederationError, match="aborted") as info:
        covey.simulate(Broken, 5, 1, strategy, _init(), seed=0)
    said = str(info.value)
    assert "failures: client 0, client 1, client 2, client 3, client 4: ValueError" in said
    assert said.count("no data on this site") == 1, said


def test_process_backend_gives_the_same_model() -> None:
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    a = _run(strategy, n=6, rounds=1, backend="process", num_workers=2)
    b = _run(covey.FedAvg(fraction_evaluate=0.0), n=6, rounds=1)
    np.testing.assert_allclose(a.weights["w"], b.weights["w"], atol=2 / scale(CLIP, BITS))


def test_distributed_noise_has_the_stated_scale_after_unmasking() -> None:
    from covey.clients._client import run_task
    from covey.secagg import register_input, secure_sum
    from covey.transport._memory import MemoryTransport

    register_input("test.zeros", lambda client, payload: np.zeros(20_000, dtype=np.int64))
    clients = {c: object() for c in range(8)}
    transport = MemoryTransport(list(clients), lambda cid, t: run_task(clients[cid], cid, t))
    for mechanism in ("skellam", "gaussian"):
        res = secure_sum(
            transport,
            list(clients),
            round=1,
            input_kind="test.zeros",
            length=20_000,
            bound=10,
            noise=Noise(mechanism, 3.0),
            complete=True,
        )
        # 8 clients, sigma 3 each: total deviation 3 * sqrt(8) = 8.49.
        assert np.std(res.total) == pytest.approx(3.0 * np.sqrt(8), rel=0.05)
        assert abs(np.mean(res.total)) < 0.3


def test_distributed_noise_in_secure_fedavg_is_reported_and_applied() -> None:
    sigma = 50.0
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0), noise=Noise("skellam", sigma))
    out = _run(strategy, n=12, rounds=1)
    plain = _run(covey.FedAvg(fraction_evaluate=0.0), n=12, rounds=1)
    record = out.history.rounds[-1]
    std = record.aggregate_info["secagg_noise_std"]
    assert std == pytest.approx(sigma * np.sqrt(12) / (scale(CLIP, BITS) * record.fit_examples))
    diff = np.concatenate([(out.weights[k] - plain.weights[k]).ravel() for k in ("w", "b")]).astype(
        np.float64
    )
    assert 0.3 * std < np.std(diff) < 3 * std


def test_clients_failing_after_key_sharing_are_recovered_in_secure_fedavg() -> None:
    class Flaky(Toy):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            if self.cid in (2, 5):
                raise RuntimeError("battery died")
            return super().fit(weights, config)

    class Healthy(Toy):
        def __init__(self, cid: int) -> None:
            super().__init__([c for c in range(10) if c not in (2, 5)][cid])

    safe = covey.simulate(
        Flaky, 10, 1, _secure(covey.FedAvg(fraction_evaluate=0.0)), _init(), seed=0
    )
    plain = covey.simulate(Healthy, 8, 1, covey.FedAvg(fraction_evaluate=0.0), _init(), seed=0)
    record = safe.history.rounds[-1]
    assert record.aggregate_info["secagg_dropped"] == [2, 5]
    assert sorted(f.cid for f in record.fit_failures) == [2, 5]
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=2 / scale(CLIP, BITS))


def test_a_ring_too_wide_is_refused_naming_bits_and_max_examples() -> None:
    # Checked for a federation of up to 1000 clients when the strategy is made: the
    # message speaks of the user's settings, not of "1000 values".
    with pytest.raises(ValueError, match="bits=40 and max_examples=100000") as info:
        secure(covey.FedAvg(), clip_range=CLIP, bits=40)
    assert "1000 clients" in str(info.value)
    assert "62" in str(info.value)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"clip_range": 1e-310}, "clip range 1e-310 is too small for 16-bit fixed point"),
        ({"clip_range": CLIP, "metrics": {"loss": 1e-320}}, "metric 'loss' has a bound of 1e-320"),
    ],
)
def test_a_range_too_small_for_fixed_point_is_refused(options: dict[str, Any], said: str) -> None:
    # Its scale overflows a float: updates would quantize to garbage and unmask as zeros.
    with pytest.raises(ValueError, match=said) as info:
        secure(covey.FedAvg(), bits=BITS, **options)
    assert "at least 2e-304" in str(info.value)


@pytest.mark.parametrize("clip_range", [True, False])
def test_a_bool_clip_range_is_refused_naming_it(clip_range: bool) -> None:
    # True is an int to Python: it would have been taken as a range of 1.0.
    said = f"clip_range must be a positive finite number, got {clip_range}"
    with pytest.raises(ValueError, match=said):
        secure(covey.FedAvg(), clip_range=clip_range, bits=BITS)


def test_the_smallest_range_suggested_quantizes_and_unquantizes() -> None:
    from covey.secagg._ring import quantize, smallest_range

    for bits in (2, 16, 48):
        tiny = smallest_range(bits)
        q = quantize(np.array([tiny, -tiny, 0.0]), tiny, bits)
        np.testing.assert_array_equal(q, [2 ** (bits - 1) - 1, -(2 ** (bits - 1) - 1), 0])
        assert np.isfinite(scale(tiny, bits))


def test_a_client_lost_in_the_unmasking_is_named_though_its_update_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The round completed with client 3's update in the mean and no word of it
    # having left: not in the round's failures, not in aggregate_info.
    from covey.clients import _client

    unmask = _client._HANDLERS["secagg.unmask"]

    def leaving(client: Any, task: Any) -> Any:
        if client.cid == 3:
            raise ConnectionError("the phone went offline")
        return unmask(client, task)

    monkeypatch.setitem(_client._HANDLERS, "secagg.unmask", leaving)
    safe = covey.simulate(Toy, 10, 1, _secure(covey.FedAvg(fraction_evaluate=0.0)), _init(), seed=0)
    plain = covey.simulate(Toy, 10, 1, covey.FedAvg(fraction_evaluate=0.0), _init(), seed=0)
    record = safe.history.rounds[-1]
    assert record.aggregated
    assert record.aggregate_info["secagg_silent"] == [3]
    assert record.aggregate_info["secagg_dropped"] == []
    (failure,) = record.fit_failures
    assert failure.cid == 3
    assert "left after its masked input was taken (it is in the sum)" in failure.error
    assert "the phone went offline" in failure.error
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=2 / scale(CLIP, BITS))


class ZeroDim(Toy):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        result = super().fit(weights, config)
        # loss.detach().numpy() gives a 0-d array, which the plain mean reads as its number
        metrics: dict[str, Any] = {"loss": np.array(float(self.cid)), "count": np.array(self.cid)}
        return covey.FitResult(weights=result.weights, num_examples=self.n, metrics=metrics)


def test_a_metric_sent_as_a_0d_array_is_averaged_as_without_secure_aggregation() -> None:
    bounds = {"loss": 100.0, "count": 100.0}
    plain = covey.simulate(ZeroDim, 6, 1, covey.FedAvg(fraction_evaluate=0.0), _init(), seed=0)
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0), metrics=bounds)
    safe = covey.simulate(ZeroDim, 6, 1, strategy, _init(), seed=0)
    expected = plain.history[1].fit_metrics
    assert sorted(expected) == ["count", "loss"]
    assert sorted(safe.history[1].fit_metrics) == ["count", "loss"]
    for name in bounds:
        assert safe.history[1].fit_metrics[name] == pytest.approx(expected[name], abs=1e-2)


def _none_in_round_1(candidates: Any, round: int, rng: Any) -> list[int]:
    return [] if round == 1 else list(candidates)


def test_a_selector_choosing_no_client_trains_none_under_secure_aggregation() -> None:
    # The docs say an empty choice trains no client and keeps the model; secure() stopped
    # the run instead ("secure aggregation needs at least 2 clients, got 0").
    strategy = covey.FedAvg(selector=_none_in_round_1, fraction_evaluate=0.0)
    plain, safe = _run(strategy, n=4), _run(_secure(strategy), n=4)
    for result in (plain, safe):
        assert result.history[1].fit_participants == []
        assert not result.history[1].aggregated
        assert sorted(result.history[2].fit_participants) == [0, 1, 2, 3]
    tol = 2 / scale(CLIP, BITS)
    for name in ("w", "b"):
        np.testing.assert_allclose(safe.weights[name], plain.weights[name], atol=tol)


def test_a_round_of_one_client_says_what_to_set() -> None:
    # It said only "secure aggregation needs at least 2 clients, got 1".
    strategy = _secure(covey.FedAvg(fraction_fit=0.25, min_fit_clients=1, fraction_evaluate=0.0))
    with pytest.raises(covey.FederationError) as caught:
        _run(strategy, n=4, rounds=1)
    assert str(caught.value).startswith(
        "round 1: secure aggregation aborted in stage setup: secure aggregation needs at least "
        "2 clients, got 1; this round sampled 1: set min_fit_clients=2 or more"
    ), caught.value
