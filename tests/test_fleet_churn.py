"""A fleet whose clients come and go: the server forgets what it kept of those gone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import covey
from covey.clients._client import run_task
from covey.core import Reply, Task
from covey.server._async import AsyncLoop
from covey.server._base import DEPARTED_KEPT
from covey.server._sync import RoundLoop
from covey.transport._async import SimulatedAsyncTransport
from covey.transport._memory import MemoryTransport

CONNECTED = 10  # clients connected at any time
GENERATIONS = 100  # each round (update) a new set of clients replaces them


class Phone(covey.Client):
    """Reports a few properties, as a phone would (its battery)."""

    def properties(self) -> dict[str, Any]:
        return {"battery": 0.5}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


class Churn(MemoryTransport):
    """The clients of a deployed fleet: :meth:`turn` replaces those connected by new ones."""

    def __init__(self) -> None:
        super().__init__(range(CONNECTED), lambda cid, task: run_task(Phone(), cid, task))
        self.generation = 0

    def turn(self, _record: Any = None) -> None:
        """The clients connected leave, and as many new ones join."""
        self.generation = (self.generation + 1) % GENERATIONS
        start = self.generation * CONNECTED
        self._clients = range(start, start + CONNECTED)

    def joins(self, cid: int) -> int:
        """Each client connected once (a deployed transport counts its connections)."""
        return 1


class ChurnAsync(SimulatedAsyncTransport):
    """:class:`Churn` on a virtual clock, for an asynchronous run."""

    def joins(self, cid: int) -> int:
        return 1

    def clients(self) -> Sequence[int]:
        return self._transport.clients()


def bound() -> int:
    """The most clients' properties a server may keep with :data:`CONNECTED` connected.

    Those gone are forgotten once more than twice the clients kept then plus
    ``DEPARTED_KEPT`` are kept; a round (an update) brings :data:`CONNECTED` new ones.
    """
    return 2 * CONNECTED + DEPARTED_KEPT + CONNECTED


def test_a_round_loop_forgets_the_properties_of_clients_that_left() -> None:
    churn = Churn()
    strategy = covey.FedAvg(where=lambda p: p["battery"] > 0.1, fraction_evaluate=0.0)
    loop = RoundLoop(strategy, churn, {"w": np.zeros(1)}, on_round=churn.turn)
    history = loop.run(GENERATIONS - 1)
    assert len(history.rounds) == GENERATIONS  # every round ran, each with new clients
    last = list(range((GENERATIONS - 1) * CONNECTED, GENERATIONS * CONNECTED))
    assert history.rounds[-1].fit_participants == last
    # 1000 clients came and went; what is kept of them stays bounded.
    assert len(loop.properties) <= bound()
    assert len(loop._reported_in) <= bound()
    assert set(last) <= set(loop.properties)  # those still connected then are kept


def test_an_asynchronous_loop_forgets_the_clients_that_left_too() -> None:
    churn = Churn()
    strategy = covey.FedBuff(
        buffer_size=CONNECTED, where=lambda p: p["battery"] > 0.1, min_available_clients=1
    )
    transport = ChurnAsync(churn)
    loop = AsyncLoop(strategy, transport, {"w": np.zeros(1)}, on_round=churn.turn)
    history = loop.run(GENERATIONS - 1)
    assert history.rounds[-1].round == GENERATIONS - 1
    assert len(loop.properties) <= bound()
    assert len(loop._reported_in) <= bound()
    # Who passes where= is kept of simulated clients only; none is kept here.
    assert loop._where_kept.count <= bound()
    assert len(loop._where_kept._new) <= bound()


def test_clients_still_connected_keep_their_properties() -> None:
    asked: list[int] = []

    def handler(cid: int, task: Task) -> Reply:
        if task.kind == "properties":
            asked.append(cid)
        return run_task(Phone(), cid, task)

    churn = Churn()
    churn._handler = handler
    strategy = covey.FedAvg(where=lambda p: True, fraction_evaluate=0.0)
    loop = RoundLoop(strategy, churn, {"w": np.zeros(1)})
    loop.run(2 * DEPARTED_KEPT // CONNECTED)  # no churn: nothing is forgotten or asked again
    assert sorted(asked) == list(range(CONNECTED))
