"""What a round under ``where=`` records and says of the clients it could not count on."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
import pytest

import covey
from covey.clients._client import run_task
from covey.core import RoundRecord
from covey.server._said import MOST_LOGGED, PROPERTIES, said_at_end
from covey.server._sync import RoundLoop
from covey.strategies._checks import clients_there
from covey.transport._memory import MemoryTransport


class Regional(covey.Client):
    """Reports a region: even ids are in "eu"."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        return {"region": "eu" if self.cid % 2 == 0 else "us"}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


def test_clients_offline_when_asked_for_properties_are_counted_in_the_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # They were left out of the round's sample with only a warning logged: the
    # record had them in neither fit_participants nor fit_failures, nor anywhere.
    strategy = covey.FedAvg(
        where=lambda p: p["region"] == "eu", min_fit_clients=1, fraction_evaluate=0.0
    )
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(
            Regional, 12, 3, strategy, {"w": np.zeros(1)}, availability=0.5, seed=0
        )
    said: dict[int, int] = {}
    for line in caplog.records:
        found = re.search(r"did not report its properties: offline in round (\d+)", line.message)
        if found:
            said[int(found[1])] = said.get(int(found[1]), 0) + 1
    assert said.get(1), said  # some were offline when first asked
    for record in result.history.rounds[1:]:
        assert record.aggregate_info.get("unreported", 0) == said.get(record.round, 0), record
    assert "unreported" not in result.history.rounds[0].aggregate_info
    # history.json keeps the count
    loaded = covey.History.from_dict(result.history.to_dict())
    assert loaded[1].aggregate_info["unreported"] == said[1]


class Waiting(MemoryTransport):
    """Clients connected to a deployed server, which waits for more that never come."""

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        if len(self.clients()) >= count:
            return True
        time.sleep(min(timeout or 0.0, 0.05))
        return False


def test_a_deployed_round_short_of_eligible_clients_says_how_long_it_waited() -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=2, where={"region": "eu"})
    transport = Waiting([1, 2, 3], lambda cid, task: run_task(Regional(cid), cid, task))
    loop = RoundLoop(strategy, transport, {"w": np.zeros(1)}, wait_timeout=0.2)
    with pytest.raises(covey.FederationError) as caught:
        loop.run(1)
    assert str(caught.value).startswith(
        "round 1: the strategy wants 2 clients to train but only 1 client passes "
        "where={'region': 'eu'} within the 0.2 s wait (wait_timeout, --wait-timeout) "
        "(min_fit_clients=2); lower min_fit_clients to at most 1, or let more clients "
        "pass where="
    ), caught.value


@pytest.mark.filterwarnings("ignore:secure aggregation without signed keys")
def test_too_few_clients_left_for_secure_aggregation_says_what_to_set() -> None:
    from covey.secagg import secure

    strategy = secure(covey.FedAvg(min_fit_clients=4, fraction_evaluate=0.0), clip_range=1.0)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(Regional, 4, 1, strategy, {"w": np.zeros(1)}, availability=0.25, seed=3)
    said = str(caught.value)
    assert "only 1 client advertised keys, fewer than the threshold 2; " in said, said
    assert "min_fit_clients=4" in said, said
    assert "threat=ThreatModel(dropout_rate=" in said, said


def test_counts_of_one_client_are_singular(caplog: pytest.LogCaptureFixture) -> None:
    record = RoundRecord(round=2)
    with caplog.at_level(logging.WARNING, logger="covey"):
        said_at_end("round", record, {PROPERTIES: MOST_LOGGED + 1, "fit": MOST_LOGGED + 1}, "gone")
    assert caplog.messages == [
        "round 2: 1 more client did not report its properties; the last: gone",
        "round 2: 1 more client failed in fit; every failure is in the history",
    ]
    assert record.aggregate_info == {"unreported": MOST_LOGGED + 1}
    from covey.secagg import ThreatModel
    from covey.secagg._params import complete_threshold

    with pytest.raises(ValueError, match="but only 1 client is expected to survive"):
        complete_threshold(2, ThreatModel())
    assert clients_there(1, None) == "1 client is available"
    assert clients_there(2, None) == "2 clients are available"
    assert clients_there(1, {"a": 1}) == "1 client passes where={'a': 1}"
    with pytest.raises(ValueError, match="needs 2 clients") as caught:
        covey.FedAvg(where={"a": 1}).sample([5], 2, 3, seed=0, purpose=0)
    assert str(caught.value) == "round 3 needs 2 clients but only 1 client passes where={'a': 1}"
