"""Strategy.aggregate and describe, and what a FitResult accepts when it is built."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey.core import Config, Weights


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "W": rng.normal(size=(4, 3)),
        "b": rng.normal(size=3).astype(np.float32),
        "scale": np.array(1.5),
    }


def _result(cid: int, weights: Weights) -> covey.FitResult:
    rng = np.random.default_rng(100 + cid)
    new = {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in weights.items()}
    if cid % 2:
        return covey.FitResult(weights=new, num_examples=10 + cid)
    delta = {k: new[k] - weights[k] for k in weights}
    return covey.FitResult(delta=delta, num_examples=10 + cid, metrics={"loss": 0.1 * cid})


class FixedClient(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Weights, config: Config) -> covey.FitResult:
        return _result(self.cid, weights)


STRATEGIES: dict[str, Any] = {
    "FedAvg": lambda: covey.FedAvg(fraction_evaluate=0.0),
    "FedAdam": lambda: covey.FedAdam(eta=0.05, fraction_evaluate=0.0),
    "FedMedian": lambda: covey.FedMedian(fraction_evaluate=0.0),
    "FedTrimmedAvg": lambda: covey.FedTrimmedAvg(beta=0.2, fraction_evaluate=0.0),
    "Krum": lambda: covey.Krum(f=1, fraction_evaluate=0.0),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_aggregate_equals_the_same_round_run_through_simulate(name: str) -> None:
    initial = _model()
    strategy = STRATEGIES[name]()
    simulated = covey.simulate(lambda cid: FixedClient(cid), 6, 1, strategy, initial)
    by_hand = strategy.aggregate(initial, [_result(cid, initial) for cid in range(6)])
    assert set(by_hand) == set(simulated.weights)
    for key, value in by_hand.items():
        assert value.dtype == simulated.weights[key].dtype
        assert value.shape == simulated.weights[key].shape
        np.testing.assert_array_equal(value, simulated.weights[key])


def test_aggregate_given_flower_tuples_says_what_to_give_as_a_client_is_told() -> None:
    initial = _model()
    flower = ([np.zeros((2, 3)), np.zeros(3, np.float32), np.array(0.0)], 3, {"loss": 0.5})
    hint = (
        r"result 1 is tuple, expected covey\.FitResult: give each client's result as "
        r"covey\.FitResult\(weights=\{name: array\}, num_examples=n, metrics=\{\.\.\.\}\) "
        r"rather than a \(parameters, num_examples, metrics\) tuple$"
    )
    good = covey.FitResult(weights=initial, num_examples=1)
    with pytest.raises(TypeError, match=hint):
        covey.FedAvg().aggregate(initial, [good, flower])  # type: ignore[list-item]


def test_aggregate_refuses_what_a_round_refuses() -> None:
    initial = _model()
    wrong_shape = covey.FitResult(
        delta={"W": np.zeros((2, 2)), "b": np.zeros(3, np.float32), "scale": np.array(0.0)},
        num_examples=3,
    )
    with pytest.raises(covey.WeightsError, match=r"client 0's delta: 'W' has shape \(2, 2\)"):
        covey.FedAvg().aggregate(initial, [wrong_shape])
    with pytest.raises(TypeError, match=r"result 0 is dict, expected covey\.FitResult"):
        covey.FedAvg().aggregate(initial, [{"W": 1}])  # type: ignore[list-item]
    empty = covey.FitResult(delta={k: np.zeros_like(v) for k, v in initial.items()}, num_examples=0)
    with pytest.raises(covey.AggregationError):
        covey.FedAvg().aggregate(initial, [empty])


@pytest.mark.parametrize(
    ("round", "error", "said"),
    [
        (0, ValueError, r"got 0: the round loops number training rounds from 1"),
        (-2, ValueError, r"got -2: the round loops"),
        (True, TypeError, r"got bool True"),
        (1.0, TypeError, r"got float 1\.0"),
        ("1", TypeError, r"got str '1'"),
    ],
)
def test_aggregate_refuses_a_round_no_loop_runs(round: Any, error: type, said: str) -> None:
    # Before: round=0, a negative round, a bool or a float was taken and given to the steps.
    initial = _model()
    results = [_result(cid, initial) for cid in range(3)]
    with pytest.raises(error, match=r"^round must be an int >= 1.*" + said):
        covey.FedAvg().aggregate(initial, results, round=round)


def test_aggregate_takes_a_round_from_1_a_numpy_integer_too() -> None:
    initial = _model()
    results = [_result(cid, initial) for cid in range(3)]
    first = covey.FedAvg().aggregate(initial, results, round=1)
    later: Any
    for later in (7, np.int64(7)):
        new = covey.FedAvg().aggregate(initial, results, round=later)
        assert all(np.array_equal(new[k], first[k]) for k in first)


def test_describe_gives_the_hyperparameters_back() -> None:
    described = covey.FedProx(proximal_mu=0.3, fraction_fit=0.2).describe()
    assert described["name"] == "FedProx"
    assert described["hyperparameters"] == {"proximal_mu": 0.3}
    assert described["options"]["fraction_fit"] == 0.2
    assert "on_fit_config" not in described["options"]  # mu is a fixed entry, not a function
    assert covey.Krum(f=2).describe()["hyperparameters"] == {"f": 2}
    custom = covey.Strategy(where={"site": "hospital"}).describe()
    assert custom["name"] == "custom"
    assert custom["options"]["where"] == {"site": "hospital"}


def test_describe_gives_the_aggregation_step_with_its_arguments() -> None:
    # A chain of one's own was recorded as "custom" with no hyperparameters: a
    # history.json said nothing of the rule that ran, nor of its settings.
    from covey.aggregate import Aggregate, Step, chain, clip_norm, krum, server_adam

    step = chain(clip_norm(1.0), krum(f=1), server_adam(eta=0.3, average=()))
    described = covey.Strategy(aggregator=step).describe()
    assert described["aggregator"] == (
        "chain(clip_norm(max_norm=1.0), krum(f=1), "
        "server_adam(eta=0.3, beta1=0.9, beta2=0.99, tau=0.001, average=()))"
    )
    assert covey.FedAvg().describe()["aggregator"] == "weighted_mean()"

    def own_update(state: Any, event: Any) -> tuple[Any, tuple[Aggregate, ...]]:
        return state, ()

    own = covey.Strategy(aggregator=Step(lambda params: None, own_update)).describe()
    assert own["aggregator"].endswith("own_update")


def test_a_numpy_scalar_is_accepted_as_a_0d_array() -> None:
    weights = {"w": np.ones(2), "t": np.add(np.array(1.0), np.array(2.0))}
    assert isinstance(weights["t"], np.float64)  # what np.add gives for 0-d arrays
    result = covey.FitResult(weights=weights, num_examples=1)
    assert result.weights is not None
    assert isinstance(result.weights["t"], np.ndarray)
    assert result.weights["t"].shape == ()
    assert float(result.weights["t"]) == 3.0
    assert result.weights["w"] is weights["w"]  # arrays are not copied

    class ScalarClient(covey.Client):
        def fit(self, weights: Weights, config: Config) -> covey.FitResult:
            return covey.FitResult(
                weights={"t": np.add(weights["t"], np.array(1.0))}, num_examples=1
            )

    out = covey.simulate(
        lambda cid: ScalarClient(),
        2,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"t": np.array(0.0)},
    )
    assert float(out.weights["t"]) == 2.0
    assert not out.history.failures()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1.0, 2.0], r"FitResult.weights\['w'\] is list, expected a NumPy array"),
        (1.0, r"FitResult.weights\['w'\] is float, expected a NumPy array"),
        ("abc", r"FitResult.weights\['w'\] is str, expected a NumPy array"),
        (None, r"FitResult.weights\['w'\] is NoneType, expected a NumPy array"),
    ],
)
def test_a_wrong_type_is_refused_when_the_result_is_built(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        covey.FitResult(weights={"w": value}, num_examples=1)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=message.replace("weights", "delta")):
        covey.FitResult(delta={"w": value}, num_examples=1)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="must be a dict of names to NumPy arrays, got list"):
        covey.FitResult(weights=[np.ones(2)], num_examples=1)  # type: ignore[arg-type]


def test_writing_into_the_shared_weights_says_they_are_shared_and_how_to_copy() -> None:
    class InPlace(covey.Client):
        def fit(self, weights: Weights, config: Config) -> covey.FitResult:
            weights["w"] += 1.0  # the common mistake: the arrays are read-only
            return covey.FitResult(weights=weights, num_examples=1)

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1)
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(lambda cid: InPlace(), 1, 1, strategy, {"w": np.zeros(2)})
    [(_, failure)] = info.value.history.failures()
    assert failure.error.startswith("covey: the weights a client receives are shared read-only")
    assert "array.copy()" in failure.error
    assert "read-only" in failure.traceback  # numpy's own message is kept above the hint
