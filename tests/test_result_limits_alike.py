"""A client's result near each limit gets one verdict on every backend and over the network.

The process backend's pipe took 64 MiB of JSON and arrays of 1 Mi elements, and
the inline and Ray backends refused what that pipe refused; a deployed server
reads results with at most 4 MiB of JSON and arrays no larger than the model.
A result between the two passed every simulation and failed once deployed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest

import covey
from _live import Joined, Served
from _nearlimits import MODEL_SIZE, NEAR, SERVER, Near, model, refused, result
from covey.transport.grpc._wire import WireError, result_from_wire, result_to_wire


def _server_reads(data: bytes, arrays: Any) -> str | None:
    """Why a deployed server refuses a reply's result (its limits, set from the model), or None."""
    try:
        result_from_wire(data, arrays, None, SERVER)
    except WireError as exc:
        return str(exc)
    return None


def test_the_table_is_near_the_deployed_servers_limits() -> None:
    for cid, (accepted, _) in NEAR.items():
        data, arrays = result_to_wire(result(cid))  # no limit: what the server would read
        assert (_server_reads(data, arrays) is None) == accepted, cid
        assert (refused(cid) is None) == accepted, cid


def _deployed(strategy: covey.Strategy) -> covey.History:
    run = Served(strategy, 1, round_timeout=60.0, initial_weights=model())
    joined = [Joined(run.port, Near(cid), name=f"site-{cid}") for cid in NEAR]
    try:
        history: covey.History = run.join(120).history
    finally:
        for j in joined:
            j.join(30)
    for j in joined:
        assert j.error is None  # each client's stream stays open
    return history


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
@pytest.mark.parametrize("backend", ["inline", "process", "deployed"])
def test_each_backend_refuses_what_a_deployed_server_refuses_with_its_error(
    backend: Literal["inline", "process", "deployed"],
) -> None:
    strategy = covey.FedAvg(
        min_fit_clients=1, min_available_clients=len(NEAR), fraction_evaluate=0.0
    )
    if backend == "deployed":
        history = _deployed(strategy)
        names = {f"site-{cid}": cid for cid in NEAR}
        failed = {names[f.name]: f.error for f in history.rounds[1].failures}
    else:
        result = covey.simulate(Near, len(NEAR), 1, strategy, model(), backend=backend)
        failed = {f.cid: f.error for f in result.history.rounds[1].failures}
        accepted = [cid for cid, (ok, _) in NEAR.items() if ok]
        np.testing.assert_array_equal(result.weights["w"], np.mean(accepted))  # theirs alone
    assert failed == {cid: refused(cid) for cid, (ok, _) in NEAR.items() if not ok}
    assert "exceed the limit of 4194304" in failed[2]
    assert failed[6].endswith(f"exceeds the limit of {MODEL_SIZE} elements (at 'metrics'.'hist')")
