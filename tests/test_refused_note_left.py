"""A run short of clients that came then left names the connections refused while it waited."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import covey
from covey.clients._client import run_task
from covey.core import Reply, Task
from covey.server import AsyncLoop, RoundLoop
from covey.transport import MemoryTransport, SimulatedAsyncTransport

pytestmark = pytest.mark.timeout(60)

NOTE = "2 connections refused in the wait: TLS handshake failed from 127.0.0.1 x2"


class _CameThenLeft:
    """Its wait for clients succeeds, having refused two connections; then one is gone."""

    refused_in_wait = ""

    def __init__(self) -> None:
        self.available: list[int] = [0]

    def clients(self) -> Sequence[int]:
        return self.available

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        self.refused_in_wait = NOTE
        return True  # all there as it returned; one left before the round sampled

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        raise AssertionError("a round short of clients asks none")

    def close(self) -> None:
        pass


def test_a_round_whose_clients_left_after_the_wait_names_the_refused_connections() -> None:
    # Before: "round 1: 1 client available, fewer than the 2 needed (...)", and no more.
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    loop = RoundLoop(strategy, _CameThenLeft(), {"w": np.zeros(1)})
    with pytest.raises(covey.FederationError) as stopped:
        loop.run(1)
    said = str(stopped.value)
    assert said.startswith("round 1: 1 client available, fewer than the 2 needed"), said
    assert said.endswith(f"; {NOTE}"), said
    assert loop.history.stopped_reason == said


class _Client(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


class _AsyncCameThenLeft(SimulatedAsyncTransport):
    """An asynchronous transport whose wait succeeds, refusing two; then too few are there."""

    refused_in_wait = ""

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        self.refused_in_wait = NOTE
        return True


def _async_loop() -> AsyncLoop:
    """A FedBuff loop wanting two clients, over a transport of one whose wait refused two."""
    clients = MemoryTransport([0], lambda cid, task: run_task(_Client(), cid, task))
    return AsyncLoop(
        covey.FedBuff(buffer_size=1, min_available_clients=2),
        _AsyncCameThenLeft(clients),
        {"w": np.zeros(1)},
    )


def test_an_asynchronous_run_whose_clients_left_after_the_wait_names_the_refused() -> None:
    # Before: "update 1: 1 client available, fewer than min_available_clients=2".
    loop = _async_loop()
    with pytest.raises(covey.FederationError) as stopped:
        loop.run(1)
    said = str(stopped.value)
    assert said.startswith("update 1: 1 client available, fewer than min_available_clients=2")
    assert said.endswith(f"; {NOTE}"), said
    assert loop.history.stopped_reason == said


def test_an_asynchronous_run_whose_clients_came_back_and_left_again_names_the_refused() -> None:
    # Mid-run, too few connected: the wait for them returns, yet too few are there when
    # it does. Before: "update 3: no client can be given a task: ...", and no more.
    loop = _async_loop()
    with pytest.raises(covey.FederationError) as stopped:
        loop._wait_for_tasks(3)
    said = str(stopped.value)
    assert said.startswith("update 3: no client can be given a task"), said
    assert said.endswith(f"; {NOTE}"), said
