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
