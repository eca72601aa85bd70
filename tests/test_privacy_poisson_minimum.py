"""Under central DP, a min_fit_clients above the clients there are is explained as it is.

Poisson sampling picks each round's clients, so min_fit_clients bounds no round
(docs/privacy.md); a message that says "samples at least N clients per round"
would tell the user the opposite.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served


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


def test_deployed_central_dp_waiting_for_min_fit_clients_names_the_poisson_draw() -> None:
    # A deployed round waits for min_fit_clients connected; when fewer come, the stop
    # says that under central DP that number bounds no round's clients, and to lower it.
    strategy = privacy.central(
        covey.FedAvg(
            fraction_fit=0.3, fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=1
        ),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        noise_seed=0,
    )
    served = Served(strategy, 1, wait_timeout=1.0, initial_weights={"w": np.zeros(4)})
    clients = [Joined(served.port, _Step(), retry_for=1.0) for _ in range(2)]
    with pytest.raises(covey.FederationError, match="of the 3 clients needed") as caught:
        served.join()
    message = str(caught.value)
    assert "central DP picks each round's clients by a Poisson draw" in message
    assert "min_fit_clients does not bound that number" in message
    assert "min_fit_clients=3 only makes each round wait for that many clients available" in message
    assert re.search(r"more than the (\d) available: lower min_fit_clients to at most \1", message)
    for client in clients:
        client.join()


class _Site(_Step):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"site": "a" if self.cid < 3 else "b"}


def test_central_dp_min_fit_clients_above_the_clients_that_pass_where_names_the_poisson_draw() -> (
    None
):
    # 10 clients, 3 of which pass where=: every round stopped saying "the strategy
    # wants 4 clients to train", though a Poisson draw bounds no round by min_fit_clients.
    strategy = privacy.central(
        covey.FedAvg(
            fraction_fit=0.3, fraction_evaluate=0.0, min_fit_clients=4, where={"site": "a"}
        ),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        noise_seed=0,
    )
    with pytest.raises(covey.FederationError, match="only 3 clients pass where=") as caught:
        covey.simulate(_Site, 10, 1, strategy, {"w": np.zeros(4)}, seed=0)
    message = str(caught.value)
    # Its first part said "the strategy wants 4 clients to train but only 3 are
    # available", and its last that min_fit_clients makes rounds wait for clients
    # available (10 were): the draw is made from the 3 that pass where=.
    assert message.startswith(
        "round 1: only 3 clients pass where={'site': 'a'}, fewer than min_fit_clients=4; "
        "central DP picks "
        "each round's clients by a Poisson draw: every client that passes where= trains with "
        "probability fraction_fit=0.3, so a round expects 0.9 of 3"
    )
    assert "wants" not in message
    assert (
        "min_fit_clients=4 only makes each round need that many clients that pass where=, "
        "more than the 3 that do: lower min_fit_clients to at most 3" in message
    )
