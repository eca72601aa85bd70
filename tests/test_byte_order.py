"""A global model given in the other byte order trains like one in native order."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)

OTHER = ">" if sys.byteorder == "little" else "<"


class PlusOne(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _model() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros((2, 3), dtype=f"{OTHER}f8"),
        "i": np.arange(3, dtype=f"{OTHER}i4"),
    }


@pytest.mark.parametrize(
    ("backend", "compression"), [("inline", None), ("process", None), ("inline", "q8")]
)
def test_a_model_in_the_other_byte_order_is_simulated(
    backend: str, compression: str | None
) -> None:
    result = covey.simulate(
        lambda cid: PlusOne(),
        2,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        _model(),
        backend=backend,  # type: ignore[arg-type]
        num_workers=1,
        compression=compression,
    )
    np.testing.assert_allclose(result.weights["w"], np.full((2, 3), 2.0), atol=1e-2)
    np.testing.assert_array_equal(result.weights["i"], np.arange(3) + 2)
    assert all(not r.fit_failures for r in result.history.rounds)
    assert result.weights["w"].dtype.isnative


def test_a_model_in_the_other_byte_order_is_served() -> None:
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 2, initial_weights=_model())
    clients = [Joined(served.port, PlusOne(), name=f"c{k}") for k in range(2)]
    result = served.join()
    for client in clients:
        client.join()
        assert client.error is None
    np.testing.assert_array_equal(result.weights["w"], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(result.weights["i"], np.arange(3) + 2)
