"""A metric too large for the reader is refused where the result is sent, naming it.

The process backend's server side and a deployed server read results with the
network's limits (strings of at most 1 MiB); a client's metric over them used
to reach the reader as "unreadable reply: a string of N characters exceeds the
limit", naming neither the metric nor the side at fault.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined, Served
from covey.transport.grpc._wire import WireError, WireLimits, result_to_wire

MB = 1 << 20


class Big(covey.Client):
    """Client 0 reports a metric of 2 MiB of text; the others a small one."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        blob = "x" * (2 * MB) if self.cid == 0 else "x"
        return covey.FitResult(weights=weights, num_examples=1, metrics={"blob": blob})


def _init() -> dict[str, Any]:
    return {"w": np.zeros(3)}


def test_result_to_wire_with_limits_names_the_metric() -> None:
    result = covey.FitResult(weights=_init(), num_examples=1, metrics={"blob": b"y" * 2 * MB})
    said = r"2097152 bytes .* exceeds the limit .*\(at 'metrics'.'blob'\)"
    with pytest.raises(WireError, match=said):
        result_to_wire(result, WireLimits())
    text, _ = result_to_wire(result)  # without limits: encoded as before
    assert len(text) > 2 * MB


def test_a_process_backend_metric_over_the_limit_fails_its_client_naming_it() -> None:
    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0)
    result = covey.simulate(Big, 2, 1, strategy, _init(), backend="process", num_workers=1)
    (failure,) = result.history.rounds[1].failures
    assert failure.cid == 0
    assert "2097152 characters exceeds the limit of 1048576 characters" in failure.error
    assert failure.error.endswith("(at 'metrics'.'blob')")


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_metric_over_the_limit_fails_that_client_naming_it() -> None:
    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0)
    run = Served(strategy, 1, round_timeout=60.0, initial_weights=_init())
    joined = [Joined(run.port, Big(k), name=f"site-{k}") for k in range(2)]
    try:
        history = run.join(120).history
    finally:
        for j in joined:
            j.join(30)
    (failure,) = history.rounds[1].failures
    assert "cannot send the result" in failure.error
    assert failure.error.endswith("(at 'metrics'.'blob')")
    for j in joined:
        assert j.error is None  # the client's stream stays open
