"""Under central DP, a min_fit_clients above the clients there are is explained as it is.

Poisson sampling picks each round's clients, so min_fit_clients bounds no round
(docs/privacy.md); a message that says "samples at least N clients per round"
would tell the user the opposite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy


class _Step(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.full(4, 0.001)}, num_examples=3)


def test_central_dp_min_fit_clients_above_num_clients_names_the_poisson_draw() -> None:
    strategy = privacy.central(
        covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0, min_fit_clients=10),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
    )
    with pytest.raises(ValueError, match="central DP picks each round's clients") as caught:
        covey.simulate(lambda cid: _Step(), 4, 1, strategy, {"w": np.zeros(4)}, seed=0)
    message = str(caught.value)
    assert "Poisson" in message
    assert "min_fit_clients does not bound" in message
    assert "fraction_fit=0.5, so a round expects 2 of 4" in message
    assert "expected_clients" in message
    assert "min_fit_clients=10" in message
    assert "more than num_clients=4" in message
    assert "samples at least" not in message


def test_without_dp_min_fit_clients_above_num_clients_keeps_its_message() -> None:
    strategy = covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0, min_fit_clients=10)
    with pytest.raises(ValueError, match=r"samples at least 10 clients per round"):
        covey.simulate(lambda cid: _Step(), 4, 1, strategy, {"w": np.zeros(4)}, seed=0)
