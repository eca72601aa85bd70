"""Finite values at the edge of float range, and a step given no function, from outside.

Each failed before: a SCAFFOLD control variate pushed past float64 stopped the
run from the next round on, a federated loss of one client at 1e308 made the
round's loss infinite, and ``staleness_weight(3)`` failed at the first stale
update with a bare ``'int' object is not callable``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest

import covey
from covey import clients
from covey.aggregate import chain, staleness_weight, weighted_mean


class _Scaffold(covey.Client):
    """A SCAFFOLD client; clients 1 and 2 send a control-variate change of 1e308 in round 1."""

    def __init__(self, cid: int) -> None:
        self.cid, self.cv = cid, clients.ControlVariate()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if self.cid in (1, 2) and config["round"] == 1:
            huge = {"w": np.full(3, 1e308)}
            delta = {"w": np.full(3, 0.01)}
            return covey.FitResult(delta=delta, num_examples=1, extras={"scaffold_delta_c": huge})
        correction = self.cv.correction(weights, config)
        w = weights["w"] - 0.1 * (weights["w"] - 1.0 + correction["w"])
        return self.cv.fit_result({"w": w}, num_examples=1, steps=1, lr=0.1)


def test_a_scaffold_control_variate_past_float64_is_not_taken() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no NumPy overflow warning from covey's code
        result = covey.simulate(
            _Scaffold,
            4,
            3,
            covey.Scaffold(num_clients=4, fraction_fit=1.0, fraction_evaluate=0.0),
            {"w": np.zeros(3)},
        )
    first = result.history.rounds[1]
    assert first.aggregate_info["scaffold_overflow"] == ["w"]
    assert [len(r.fit_failures) for r in result.history.rounds] == [0, 0, 0, 0]
    assert np.isfinite(result.weights["w"]).all()


class _Loss(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.zeros(2)}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        if self.cid == 0:
            return covey.EvaluateResult(loss=1e308, num_examples=5)
        return covey.EvaluateResult(loss=1.0, num_examples=100)


def test_a_federated_loss_whose_products_overflow_is_still_the_weighted_mean() -> None:
    result = covey.simulate(_Loss, 4, 1, covey.FedAvg(fraction_evaluate=1.0), {"w": np.zeros(2)})
    loss = result.history.rounds[1].evaluate_loss
    assert loss == pytest.approx(5 / 305 * 1e308 + 300 / 305)  # 1.639e306, not inf


class _Metric(_Loss):
    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        big = self.cid == 0
        return covey.EvaluateResult(
            loss=1.0, num_examples=5 if big else 100, metrics={"mse": 1e308 if big else 1.0}
        )


def test_a_federated_metric_whose_products_overflow_is_still_the_weighted_mean() -> None:
    result = covey.simulate(_Metric, 4, 1, covey.FedAvg(fraction_evaluate=1.0), {"w": np.zeros(2)})
    mse = result.history.rounds[1].evaluate_metrics["mse"]
    assert mse == pytest.approx(5 / 305 * 1e308 + 300 / 305)  # as the loss: not inf
    both = covey.strategies.weighted_metrics([(5, {"m": 1e308}), (5, {"m": 1e308})])
    assert both == {"m": 1e308}


def test_a_metric_every_client_reports_as_minus_zero_keeps_its_sign() -> None:
    # scikit-learn's neg_ scores of a perfect model are -0.0; the mean summed from 0.0
    # recorded 0.0, which history.json and the trackers then wrote as 0.0
    mean = float(covey.strategies.weighted_metrics([(5, {"m": -0.0}), (3, {"m": -0.0})])["m"])
    assert math.copysign(1.0, mean) == -1.0
    mixed = float(covey.strategies.weighted_metrics([(5, {"m": -0.0}), (3, {"m": 0.0})])["m"])
    assert math.copysign(1.0, mixed) == 1.0  # as -0.0 + 0.0 is


class _PerfectLoss(_Loss):
    """Every client's loss is -0.0 (a perfect model's negated score), client 0's 0.0 if mixed."""

    mixed = False

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = 0.0 if self.mixed and self.cid == 0 else -0.0
        return covey.EvaluateResult(loss=loss, num_examples=3 + self.cid)


class _MixedLoss(_PerfectLoss):
    mixed = True


def test_a_federated_loss_every_client_reports_as_minus_zero_keeps_its_sign() -> None:
    # summed from 0.0, the round's loss was 0.0 as weighted_metrics' metrics were
    strategy = covey.FedAvg(fraction_evaluate=1.0)
    result = covey.simulate(_PerfectLoss, 4, 1, strategy, {"w": np.zeros(2)})
    loss = result.history.rounds[1].evaluate_loss
    assert loss is not None
    assert math.copysign(1.0, loss) == -1.0
    result = covey.simulate(_MixedLoss, 4, 1, strategy, {"w": np.zeros(2)})
    loss = result.history.rounds[1].evaluate_loss
    assert loss is not None
    assert math.copysign(1.0, loss) == 1.0


def test_staleness_weight_refuses_what_it_cannot_call() -> None:
    with pytest.raises(TypeError, match=r"staleness_weight\(fn\) takes a function .* got int"):
        chain(staleness_weight(3), weighted_mean())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "median"),
    [([1e304, 1e304], 1e304), ([1.7e308] * 3 + [-1.7e308] * 2, 1.7e308)],
)
def test_fedrfa_finds_a_geometric_median_near_float64s_limit(
    values: list[float], median: float
) -> None:
    """Before: the Weiszfeld step's weighted sum overflowed, and the round was refused."""

    class Sends(covey.Client):
        def __init__(self, cid: int) -> None:
            self.value = values[cid]

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(delta={"x": np.full(4, self.value)}, num_examples=10)

    result = covey.simulate(
        Sends,
        len(values),
        1,
        covey.FedRFA(fraction_fit=1.0, fraction_evaluate=0.0),
        {"x": np.zeros(4)},
    )
    assert result.history.rounds[1].aggregated
    np.testing.assert_allclose(result.weights["x"], np.full(4, median), rtol=1e-12)


@pytest.mark.parametrize("rule", ["qfedavg", "clip_norm"])
def test_an_update_whose_norm_passes_float64_warns_of_nothing(rule: str) -> None:
    """Handled as documented (refused by q-FedAvg, clipped to the bound), and no warning."""

    class Huge(covey.Client):
        def __init__(self, cid: int) -> None:
            self.value = 1e200 if cid == 0 else 1.0

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            delta = {"x": np.full(4, self.value)}
            return covey.FitResult(delta=delta, num_examples=1, metrics={"loss": 1.0})

    if rule == "qfedavg":
        strategy = covey.QFedAvg(fraction_evaluate=0.0, min_fit_clients=2)
    else:
        clipped = chain(covey.aggregate.clip_norm(1.0), weighted_mean())
        strategy = covey.Strategy(aggregator=clipped, fraction_evaluate=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = covey.simulate(Huge, 3, 1, strategy, {"x": np.zeros(4)})
    if rule == "qfedavg":
        assert [f.cid for f in result.history.rounds[1].fit_failures] == [0]
    else:
        np.testing.assert_allclose(result.weights["x"], 0.5)  # each update clipped to norm 1
