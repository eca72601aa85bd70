"""A deployed client's refused update is named by the client's chosen name, not its internal id."""

from __future__ import annotations

import numpy as np
import pytest

import covey
from _live import served_to
from _mistaken import Sends
from covey.clients._client import run_task
from covey.compress import CompressedFitPayload, scheme_named
from covey.compress._counted import CountedAsyncTransport
from covey.core._messages import Task


def _served(compression: str | None) -> covey.deploy.ServeResult:
    """One round served to hospital-a (right) and hospital-b (wrong shape), with ``compression``."""
    sites = [("hospital-a", Sends(False)), ("hospital-b", Sends(True))]
    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0)
    return served_to(sites, strategy, {"w": np.zeros(6)}, compression=compression)


def test_a_deployed_clients_wrong_weights_are_named_by_its_name() -> None:
    result = _served(None)
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.name == "hospital-b"
    # The internal id (the order of joins) would read as another site's number.
    assert failure.error == "hospital-b's weights: 'w' has shape (7,), expected (6,)"
    np.testing.assert_array_equal(result.weights["w"], np.ones(6))


def test_a_compressing_clients_wrong_weights_read_as_an_uncompressed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The compressing client checks its update itself: it said "covey.core._weights.
    # WeightsError: client 1's weights: ...", by its internal id and with a class path.
    with caplog.at_level("WARNING", logger="covey"):
        result = _served("q8")
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.name == "hospital-b"
    assert failure.error == "hospital-b's weights: 'w' has shape (7,), expected (6,)"
    said = [r.getMessage() for r in caplog.records if "failed in fit" in r.getMessage()]
    assert said == [
        "round 1: hospital-b failed in fit: hospital-b's weights: 'w' has shape (7,), expected (6,)"
    ]
    np.testing.assert_allclose(result.weights["w"], np.ones(6), atol=0.01)


class _Fleet:
    """An asynchronous transport's stand-in that names its clients and keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: dict[int, Task] = {}

    def client_name(self, cid: int) -> str | None:
        return "hospital-b"

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        self.sent[cid] = task


def test_an_asynchronous_runs_compressing_client_names_itself_as_the_server_does() -> None:
    fleet = _Fleet()
    counted = CountedAsyncTransport(fleet, scheme_named("q8"))
    counted.submit(1, Task("fit", 3, {}, {"w": np.zeros(6)}))
    payload, _ = CompressedFitPayload.of(fleet.sent[1])
    assert payload.name == "hospital-b"
    reply = run_task(Sends(True), 1, fleet.sent[1])
    assert reply.error == "hospital-b's weights: 'w' has shape (7,), expected (6,)"
