"""Secure aggregation checked from outside: the plain mean as reference, in simulation and gRPC.

Random models of several dtypes and shapes, clients that drop out, values at
and beyond the quantization range, and the settings that must be refused.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._weights import subtract
from covey.secagg import ThreatModel, secure
from covey.secagg._ring import RangeError, quantize, scale

CLIP, BITS = 2.0, 16
STEP = 1.0 / scale(CLIP, BITS)  # one quantization step in model units


def _model() -> dict[str, np.ndarray]:
    return {
        "conv": np.zeros((2, 3, 2), np.float32),
        "dense": np.ones(7, np.float64),
        "half": np.full((2, 2), 0.5, np.float16),
        "count": np.full(3, 5, np.uint8),
        "steps": np.full(2, 100, np.int32),
        "mask": np.array([True, False, True, False, False]),
    }


class Random(covey.Client):
    """A random update per dtype; a uint8 delta is sent modulo 2**8 (a decrease wraps)."""

    def __init__(self, cid: int, *, fail: bool = False, as_weights: bool = False) -> None:
        self.rng = np.random.default_rng(cid)
        self.fail = fail
        self.as_weights = as_weights
        self.n = int(self.rng.integers(1, 40))

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if self.fail:
            raise RuntimeError("this site's training crashed")
        new: dict[str, np.ndarray] = {}
        for name, w in weights.items():
            if w.dtype.kind == "b":  # a mask: flip about half of it
                new[name] = w ^ (self.rng.random(w.shape) < 0.5)
            elif w.dtype.kind == "f":
                change = self.rng.uniform(-CLIP, CLIP, w.shape)
                new[name] = (w + change).astype(w.dtype)
            else:
                change = self.rng.integers(-2, 3, w.shape)  # -2..2, a uint8 may go down
                new[name] = (w.astype(np.int64) + change).astype(w.dtype)
        if self.as_weights:
            return covey.FitResult(weights=new, num_examples=self.n)
        delta = subtract(new, weights)
        return covey.FitResult(delta=delta, num_examples=self.n)


def _quiet_secure(strategy: covey.Strategy, **kw: Any) -> covey.Strategy:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*honest-but-curious")
        return secure(strategy, clip_range=CLIP, bits=BITS, **kw)


def _fedavg(n: int) -> covey.Strategy:
    return covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n)


def _compare(secured: dict[str, np.ndarray], plain: dict[str, np.ndarray], clients: int) -> None:
    for name, value in plain.items():
        assert secured[name].dtype == value.dtype, name
        assert secured[name].shape == value.shape, name
        if value.dtype.kind == "f":
            # Each client's value is off by less than a step; the weighted mean too,
            # plus the rounding of the layer's own dtype.
            tol = STEP + (1e-3 if value.dtype == np.float16 else 1e-6)
            np.testing.assert_allclose(secured[name], value, atol=tol, err_msg=name)
        else:
            # An integer layer's mean is rounded: the two roundings differ by at most one.
            diff = secured[name].astype(np.int64) - value.astype(np.int64)
            assert np.abs(diff).max() <= 1, (name, secured[name], value)


@pytest.mark.parametrize("as_weights", [False, True])
def test_secure_fedavg_of_a_mixed_dtype_model_equals_the_plain_mean(as_weights: bool) -> None:
    n = 8

    def make(cid: int) -> Random:
        return Random(cid, as_weights=as_weights)

    plain = covey.simulate(make, n, 1, _fedavg(n), _model(), seed=0).weights
    safe = covey.simulate(make, n, 1, _quiet_secure(_fedavg(n)), _model(), seed=0).weights
    _compare(safe, plain, n)


def test_a_uint8_decrease_sent_as_a_wrapped_delta_is_summed_by_its_value() -> None:
    # Every client lowers the counter 5 -> 3 and sends the delta 254 (mod 256); within
    # a range of 2 it must read as -2, not fail the client as out of range.
    class Lower(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            count = weights["count"]
            if count.dtype == np.uint8:
                return covey.FitResult(
                    delta={"w": np.zeros(2, np.float32), "count": np.full(3, 254, np.uint8)},
                    num_examples=3,
                )
            raise AssertionError(count.dtype)

    init: dict[str, np.ndarray] = {"w": np.zeros(2, np.float32), "count": np.full(3, 5, np.uint8)}
    out = covey.simulate(lambda c: Lower(), 4, 1, _quiet_secure(_fedavg(4)), init, seed=0)
    np.testing.assert_array_equal(out.weights["count"], [3, 3, 3])
    assert out.history.rounds[-1].fit_failures == []


def test_a_client_that_drops_out_leaves_the_plain_mean_of_the_others() -> None:
    n, broken = 9, 4

    def make(cid: int) -> Random:
        return Random(cid, fail=cid == broken)

    def others(cid: int) -> Random:  # the plain reference without the broken client
        return Random(cid if cid < broken else cid + 1)

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=n - 1)
    safe = covey.simulate(make, n, 1, _quiet_secure(strategy), _model(), seed=0)
    plain = covey.simulate(others, n - 1, 1, _fedavg(n - 1), _model(), seed=0).weights
    record = safe.history.rounds[-1]
    assert sorted(record.fit_participants) == [c for c in range(n) if c != broken]
    assert [f.cid for f in record.fit_failures] == [broken]
    _compare(safe.weights, plain, n - 1)


def test_values_at_the_range_edges_are_kept_and_beyond_it_refused() -> None:
    top = (1 << (BITS - 1)) - 1
    edges = np.array([CLIP, -CLIP, 0.0, CLIP * (1 - 1e-12)])
    for _ in range(20):  # the random rounding never steps past the range
        q = quantize(edges, CLIP, BITS)
        assert q[0] == top
        assert q[1] == -top
        assert q[2] == 0
        assert q[3] in (top - 1, top)
    for bad in (np.nextafter(CLIP, np.inf), -CLIP * 1.5, np.nan, np.inf):
        with pytest.raises(RangeError):
            quantize(np.array([0.0, bad]), CLIP, BITS)


def test_a_client_past_the_range_fails_alone_and_the_rest_are_summed() -> None:
    class Past(covey.Client):
        def __init__(self, cid: int) -> None:
            self.value = CLIP * 1.01 if cid == 0 else CLIP  # client 0 just past the range

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(delta={"w": np.full(4, self.value)}, num_examples=1)

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=5)
    out = covey.simulate(Past, 6, 1, _quiet_secure(strategy), {"w": np.zeros(4)}, seed=0)
    record = out.history.rounds[-1]
    assert [f.cid for f in record.fit_failures] == [0]
    assert "RangeError" in record.fit_failures[0].error
    np.testing.assert_allclose(out.weights["w"], CLIP, atol=STEP)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_range": 0.0}, "clip_range"),
        ({"clip_range": float("nan")}, "clip_range"),
        ({"clip_range": float("inf")}, "clip_range"),
        ({"bits": 1}, "bits"),
        ({"bits": 49}, "bits"),
        ({"bits": 16.5}, "bits"),
        ({"bits": True}, "bits"),
        ({"max_examples": 0}, "max_examples"),
        ({"max_examples": 2.5}, "max_examples"),
    ],
)
def test_bad_secure_settings_are_refused_with_their_name(
    kwargs: dict[str, Any], match: str
) -> None:
    settings: dict[str, Any] = {"clip_range": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        secure(covey.FedAvg(), **settings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"corrupt_rate": -0.1}, "corrupt_rate"),
        ({"corrupt_rate": 1.0}, "corrupt_rate"),
        ({"dropout_rate": float("nan")}, "dropout_rate"),
        ({"dropout_rate": True}, "dropout_rate"),
        ({"adversary": "malicious"}, "adversary"),
        ({"corrupt_rate": 0.5, "dropout_rate": 0.45}, "infeasible"),
        ({"corrupt_rate": 0.3, "dropout_rate": 0.35, "adversary": "semi-malicious"}, "infeasible"),
    ],
)
def test_bad_threat_models_are_refused_with_their_name(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ThreatModel(**kwargs)


@pytest.mark.slow
def test_the_secure_sum_over_grpc_equals_the_plain_mean() -> None:
    from _live import Joined, Served

    n = 4
    strategy = _quiet_secure(_fedavg(n))
    served = Served(strategy, 1, initial_weights=_model())
    joined = [Joined(served.port, Random(cid), name=f"site-{cid}") for cid in range(n)]
    try:
        result = served.join(120)
    finally:
        for client in joined:
            client.join(30)
            assert client.error is None, client.error
    record = result.history.rounds[-1]
    assert record.round == 1
    assert len(record.fit_participants) == n
    assert record.aggregate_info["secagg_ring_bits"] > BITS
    # The clients joined in any order: compare with the plain mean of the same clients.
    plain = covey.simulate(Random, n, 1, _fedavg(n), _model(), seed=0).weights
    _compare(dict(result.weights), plain, n)


@pytest.mark.parametrize("loss", [150.0, float("nan")])
def test_a_metric_past_its_bound_fails_the_client_naming_the_metric(loss: float) -> None:
    class Loss(covey.Client):
        def __init__(self, cid: int) -> None:
            self.loss = loss if cid == 0 else 1.0

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            delta = {"w": np.full(3, 0.1)}
            return covey.FitResult(delta=delta, num_examples=2, metrics={"loss": self.loss})

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=3)
    secured = _quiet_secure(strategy, metrics={"loss": 100.0})
    out = covey.simulate(Loss, 4, 1, secured, {"w": np.zeros(3)}, seed=0)
    record = out.history.rounds[-1]
    assert [f.cid for f in record.fit_failures] == [0]
    assert "fit metric 'loss'" in record.fit_failures[0].error
    assert "[-100, 100]" in record.fit_failures[0].error
    assert record.fit_metrics["loss"] == pytest.approx(1.0, abs=100.0 / (2**15 - 1))
