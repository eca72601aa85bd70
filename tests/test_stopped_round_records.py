"""A round that stops the run before it samples is kept in the history, with why.

Such a round (too few clients pass ``where=``, or too few connect) used to leave
no record: its reason was in the raised error and ``stopped_reason`` only, and the
clients that did not report their properties (``aggregate_info["unreported"]``)
were counted nowhere at all.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.clients._client import run_task
from covey.core import RoundRecord
from covey.server._async import AsyncLoop
from covey.server._sync import RoundLoop
from covey.transport._async import SimulatedAsyncTransport
from covey.transport._memory import MemoryTransport
from test_selection_records import Waiting


class Regional(covey.Client):
    """Reports a region: client 0 alone is in "eu"; client 3's properties() fails."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        if self.cid == 3:
            raise RuntimeError("no region here")
        return {"region": "eu" if self.cid == 0 else "us"}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


def stopped(history: covey.History, rnd: int) -> RoundRecord:
    """The last record of ``history``, checked to be round ``rnd``'s, stopped with why."""
    record = history.rounds[-1]
    assert record.round == rnd, history.rounds
    assert not record.aggregated
    assert history.stopped_reason == f"round {rnd}: {record.aggregate_info['error']}"
    return record


def test_a_simulated_round_too_few_clients_pass_where_is_kept(tmp_path: Path) -> None:
    strategy = covey.FedAvg(where={"region": "eu"}, min_fit_clients=2, fraction_evaluate=0.0)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(Regional, 6, 2, strategy, {"w": np.zeros(1)}, run_dir=tmp_path / "run")
    record = stopped(caught.value.history, 1)
    assert record.aggregate_info["error"].startswith("the strategy wants 2 clients to train")
    assert record.aggregate_info["unreported"] == 1  # client 3
    assert "fit" in record.durations
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [0, 1]
    assert saved["rounds"][1]["aggregate_info"] == record.aggregate_info


def test_a_deployed_round_short_of_connected_clients_is_kept() -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=3)
    transport = Waiting([0, 1], lambda cid, task: run_task(Regional(cid), cid, task))
    loop = RoundLoop(strategy, transport, {"w": np.zeros(1)}, wait_timeout=0.1)
    with pytest.raises(covey.FederationError):
        loop.run(2)
    record = stopped(loop.history, 1)
    assert record.aggregate_info == {
        "error": "only 2 of the 3 clients needed (min_available_clients, min_fit_clients) "
        "connected within 0.1 s"
    }
    assert "wait" in record.durations  # the seconds it waited, not counted as the fit's


def test_a_deployed_round_short_of_eligible_clients_keeps_its_unreported() -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=2, where={"region": "eu"})
    transport = Waiting([0, 3], lambda cid, task: run_task(Regional(cid), cid, task))
    loop = RoundLoop(strategy, transport, {"w": np.zeros(1)}, wait_timeout=0.2)
    with pytest.raises(covey.FederationError):
        loop.run(1)
    record = stopped(loop.history, 1)
    assert record.aggregate_info["unreported"] == 1
    assert "client 3 did not report its properties" in record.aggregate_info["error"]


def test_a_fedbuff_update_no_client_can_be_given_is_kept() -> None:
    strategy = covey.FedBuff(buffer_size=2, where={"region": "eu"}, min_available_clients=1)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(Regional, 4, 2, strategy, {"w": np.zeros(1)})
    history = caught.value.history
    record = history.rounds[-1]
    assert record.round == 1, history.rounds
    assert history.stopped_reason == f"update 1: {record.aggregate_info['error']}"
    assert "no client can be given a task" in record.aggregate_info["error"]


def test_a_fedbuff_run_short_of_clients_before_its_first_update_keeps_it_unfinished() -> None:
    # As a round short of clients before it samples: the update is kept with why,
    # and the error and stopped_reason name it, so it does not read as finished.
    from covey.cli._rounds import last_finished

    clients = MemoryTransport([0, 1], lambda cid, task: run_task(Regional(cid), cid, task))
    loop = AsyncLoop(
        covey.FedBuff(buffer_size=2, min_available_clients=3),
        SimulatedAsyncTransport(clients),
        {"w": np.zeros(1)},
    )
    with pytest.raises(covey.FederationError) as caught:
        loop.run(2)
    assert caught.value.step == 1
    history = loop.history
    assert [r.round for r in history.rounds] == [0, 1]
    error = "2 clients available, fewer than min_available_clients=3"
    assert history.rounds[1].aggregate_info == {"error": error}
    assert history.stopped_reason == f"update 1: {error}" == str(caught.value)
    assert last_finished(history) == 0


def test_a_resumed_fedbuff_run_short_of_clients_keeps_the_update_it_would_run() -> None:
    clients = MemoryTransport([0, 1], lambda cid, task: run_task(Regional(cid), cid, task))
    loop = AsyncLoop(
        covey.FedBuff(buffer_size=2, min_available_clients=3),
        SimulatedAsyncTransport(clients),
        {"w": np.zeros(1)},
    )
    loop.history.rounds.extend(RoundRecord(round=r) for r in range(3))
    with pytest.raises(covey.FederationError) as caught:
        loop.run(5, start=3)
    assert caught.value.step == 3
    assert [r.round for r in loop.history.rounds] == [0, 1, 2, 3]
    assert str(loop.history.stopped_reason).startswith("update 3: 2 clients available")


def served_short(
    strategy: covey.Strategy, cids: tuple[int, ...], wait: float, run: Path
) -> tuple[covey.FederationError, dict[str, Any]]:
    """The error that stopped a served run that clients ``cids`` joined, and its history.json."""
    from covey.deploy import connect, serve

    threads: list[threading.Thread] = []

    def start(port: int) -> None:
        for cid in cids:
            site = threading.Thread(
                target=connect,
                args=(Regional(cid), f"127.0.0.1:{port}"),
                kwargs={"insecure": True, "name": f"site-{cid}"},
                daemon=True,
            )
            site.start()
            threads.append(site)

    try:
        with pytest.raises(covey.FederationError) as caught:
            serve(
                strategy,
                2,
                {"w": np.zeros(1)},
                "127.0.0.1:0",
                insecure=True,
                on_listen=start,
                wait_timeout=wait,
                plot=False,
                run_dir=run,
            )
    finally:
        for site in threads:
            site.join(timeout=30)
    return caught.value, json.loads((run / "history.json").read_text())


def test_a_served_round_short_of_eligible_clients_is_kept_in_its_run_folder(
    tmp_path: Path,
) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=2, where={"region": "eu"})
    _, saved = served_short(strategy, (0, 1), 5.0, tmp_path / "run")
    assert [r["round"] for r in saved["rounds"]] == [0, 1]
    info = saved["rounds"][1]["aggregate_info"]
    assert info["error"].startswith(
        "the strategy wants 2 clients to train but only 1 client passes where={'region': 'eu'} "
        "within the 5 s wait"
    ), info
    assert saved["stopped_reason"].endswith(info["error"]), saved["stopped_reason"]


def test_a_served_fedbuff_run_short_of_clients_keeps_its_first_update_and_says_how_many(
    tmp_path: Path,
) -> None:
    strategy = covey.FedBuff(buffer_size=1, min_available_clients=2)
    caught, saved = served_short(strategy, (1,), 2.0, tmp_path / "run")
    error = "only 1 of the 2 clients needed (min_available_clients) connected within 2.0 s"
    assert str(caught) == f"update 1: {error}"
    assert [r["round"] for r in saved["rounds"]] == [0, 1]
    assert saved["rounds"][1]["aggregate_info"] == {"error": error}
    assert saved["stopped_reason"] == f"update 1: {error}"
