"""A deployed client's refused update is named by the client's chosen name, not its internal id."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

import covey
from covey import FitResult
from covey.deploy import connect, serve


class Sends(covey.Client):
    """Sends the global weights plus one, or, with ``wrong``, an array of another shape."""

    def __init__(self, wrong: bool) -> None:
        self.wrong = wrong

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.wrong:
            return FitResult(weights={"w": np.zeros(7)}, num_examples=1)
        return FitResult(weights={"w": weights["w"] + 1}, num_examples=1)


def test_a_deployed_clients_wrong_weights_are_named_by_its_name() -> None:
    sites: list[threading.Thread] = []

    def start_sites(port: int) -> None:
        for name, wrong in (("hospital-a", False), ("hospital-b", True)):
            site = threading.Thread(
                target=connect,
                args=(Sends(wrong), f"127.0.0.1:{port}"),
                kwargs={"insecure": True, "name": name},
                daemon=True,
            )
            site.start()
            sites.append(site)

    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0)
    try:
        result = serve(
            strategy,
            1,
            {"w": np.zeros(6)},
            "127.0.0.1:0",
            insecure=True,
            on_listen=start_sites,
            wait_timeout=30.0,
            plot=False,
        )
    finally:
        for site in sites:
            site.join(timeout=30)
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.name == "hospital-b"
    # The internal id (the order of joins) would read as another site's number.
    assert failure.error == "hospital-b's weights: 'w' has shape (7,), expected (6,)"
    np.testing.assert_array_equal(result.weights["w"], np.ones(6))
