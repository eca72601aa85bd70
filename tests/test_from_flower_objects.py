"""Flower's values where covey's belong: each is refused saying what to give instead.

Flower (``flwr``) is not installed with covey, so its containers are stood in
for by classes of its modules' names with the attributes covey's hints read:
``Parameters`` (serialized ``tensors``), ``Array`` (``.numpy()``) and
``ArrayRecord`` (a mapping of names to ``Array``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult


class Parameters:
    """Flower's ``Parameters``: the arrays as serialized bytes."""

    __module__ = "flwr.compat.common.typing"

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.tensors = [a.tobytes() for a in arrays]
        self.tensor_type = "numpy.ndarray"


class Array:
    """Flower's ``Array``: one array as serialized bytes, read back by ``numpy()``."""

    __module__ = "flwr.app.message.array"

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def numpy(self) -> np.ndarray:
        return self._array.copy()


class ArrayRecord(dict[str, Array]):
    """Flower's ``ArrayRecord``: a mapping of names to ``Array``."""

    __module__ = "flwr.app.message.arrayrecord"

    def to_numpy_ndarrays(self) -> list[np.ndarray]:
        return [a.numpy() for a in self.values()]


def test_flower_s_parameters_as_initial_weights_are_told_to_name_their_arrays() -> None:
    parameters: Any = Parameters([np.zeros(3)])
    with pytest.raises(covey.WeightsError, match="got Parameters") as info:
        covey.simulate(lambda cid: covey.Client(), 2, 1, covey.FedAvg(), parameters)
    assert "parameters_to_ndarrays" in str(info.value)


def test_flower_s_parameters_returned_from_fit_are_told_to_name_their_arrays() -> None:
    parameters: Any = Parameters([np.zeros(3)])
    with pytest.raises(TypeError, match="got Parameters") as info:
        FitResult(weights=parameters, num_examples=1)
    assert "parameters_to_ndarrays" in str(info.value)


def test_flower_s_array_record_is_told_to_read_each_array_with_numpy() -> None:
    record: Any = ArrayRecord(w=Array(np.zeros(3)))
    with pytest.raises(TypeError, match=r"\['w'\] is Array") as info:
        FitResult(weights=record, num_examples=1)
    said = str(info.value)
    assert ".numpy()" in said
    assert "np.asarray" not in said  # np.asarray(Array) makes an object array
    with pytest.raises(covey.WeightsError, match="'w' must be a NumPy array, got Array") as bad:
        covey.simulate(lambda cid: covey.Client(), 2, 1, covey.FedAvg(), record)
    assert ".numpy()" in str(bad.value)


def test_the_hinted_conversion_of_an_array_record_is_taken() -> None:
    record = ArrayRecord(w=Array(np.ones(3)))
    weights = {name: a.numpy() for name, a in record.items()}
    taken = FitResult(weights=weights, num_examples=1).weights
    assert taken is not None
    assert taken["w"].tolist() == [1.0, 1.0, 1.0]


class Returns(covey.Client):
    """Returns ``value`` from fit and evaluate alike."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def fit(self, weights: Any, config: dict[str, Any]) -> Any:
        return self.value(weights)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> Any:
        return self.value(weights)


@pytest.mark.parametrize(
    ("value", "instead"),
    [
        (lambda w: {"weights": dict(w), "num_examples": 3}, "rather than a dict"),
        (lambda w: None, "returned nothing: is its return statement missing?"),
        (lambda w: [dict(w), 3], ""),
    ],
    ids=["dict", "none", "list"],
)
def test_fit_returning_no_fit_result_is_told_what_to_return(value: Any, instead: str) -> None:
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(
            lambda cid: Returns(value),
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0, accept_failures=False),
            {"w": np.zeros(2)},
        )
    errors = [f.error for r in info.value.history.rounds for f in r.fit_failures]
    assert errors
    for error in errors:
        assert "return covey.FitResult(weights={name: array}, num_examples=n" in error, error
        assert instead in error, error


def test_evaluate_returning_a_dict_is_told_to_return_an_evaluate_result() -> None:
    class FitsWell(Returns):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            return FitResult(weights=dict(weights), num_examples=1)

    result = covey.simulate(
        lambda cid: FitsWell(lambda w: {"loss": 0.5, "num_examples": 3}),
        2,
        1,
        covey.FedAvg(min_evaluate_clients=0),
        {"w": np.zeros(2)},
    )
    failures = result.history.rounds[1].evaluate_failures
    assert len(failures) == 2
    for failure in failures:
        assert "return covey.EvaluateResult(loss=loss, num_examples=n" in failure.error
        assert "rather than a dict" in failure.error


def test_flower_s_evaluate_only_sampling_is_told_covey_s_way() -> None:
    with pytest.raises(ValueError, match="would train no client") as info:
        covey.FedAvg(fraction_fit=0.0, min_fit_clients=0)
    assert "simulate(evaluate_fn=..., rounds=0)" in str(info.value)
    # ... and that way works: the given model is judged at round 0, nothing trains.
    result = covey.simulate(
        lambda cid: covey.Client(),
        2,
        0,
        covey.FedAvg(),
        {"w": np.zeros(2)},
        evaluate_fn=lambda rnd, w: (0.25, {}),
    )
    assert result.history.metric("loss") == [(0, 0.25)]


def test_a_fitting_client_is_unchanged() -> None:
    class Fine(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            return FitResult(weights={"w": weights["w"] + 1}, num_examples=1)

        def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
            return EvaluateResult(loss=0.0, num_examples=1)

    result = covey.simulate(lambda cid: Fine(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)})
    assert result.weights["w"].tolist() == [1.0, 1.0]


class Decaying(covey.Strategy):
    """A Flower user's strategy class, to be passed uncalled."""

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": 0.1 / round}


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (covey.Strategy, "not the class Strategy itself: call it, covey.Strategy(...)"),
        (Decaying, "not the class Decaying itself: call it, Decaying(...)"),
    ],
    ids=["Strategy", "subclass"],
)
def test_a_strategy_class_given_uncalled_is_told_to_call_it(given: Any, said: str) -> None:
    with pytest.raises(TypeError, match=r"strategy must be a covey\.Strategy") as info:
        covey.simulate(lambda cid: covey.Client(), 2, 1, given, {"w": np.zeros(2)})
    assert said in str(info.value)
