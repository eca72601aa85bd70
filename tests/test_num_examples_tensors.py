"""A count of examples given as a tensor or an array is refused with how to pass its number."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey


@pytest.mark.parametrize("count", [np.array(32), np.array(32.0), np.array([32])], ids=repr)
def test_a_numpy_array_as_num_examples_is_refused_with_a_hint(count: Any) -> None:
    with pytest.raises(ValueError, match=r"use int\(x\) or x\.item\(\)"):
        covey.FitResult(weights={"w": np.zeros(2)}, num_examples=count)
    with pytest.raises(ValueError, match=r"use int\(x\) or x\.item\(\)"):
        covey.EvaluateResult(loss=0.5, num_examples=count)


def test_numpy_integers_are_still_counts_and_other_values_get_no_hint() -> None:
    five: Any = np.int64(5)  # len() of some datasets
    assert covey.FitResult(weights={"w": np.zeros(2)}, num_examples=five).num_examples == 5
    wrong: tuple[Any, ...] = (-1, 1.5, "32", np.float32(3.0))
    for bad in wrong:
        with pytest.raises(ValueError, match="non-negative int") as caught:
            covey.FitResult(weights={"w": np.zeros(2)}, num_examples=bad)
        assert "item()" not in str(caught.value)


def test_a_torch_tensor_returned_as_num_examples_fails_the_client_with_a_hint() -> None:
    torch = pytest.importorskip("torch")

    class Counted(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(weights=dict(weights), num_examples=torch.tensor(32))

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(lambda cid: Counted(), 1, 1, strategy, {"w": np.zeros(2)}, seed=0)
    assert "got tensor(32)" in str(caught.value)
    assert "use int(x) or x.item()" in str(caught.value)
