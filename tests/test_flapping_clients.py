"""Clients that come and leave again (phones) keep a wait going for the rest of its time-out."""

from __future__ import annotations

import itertools
import time
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


class _Flapping:
    """Each wait succeeds; the clients connected then are ``seen`` in turn (the last stays)."""

    def __init__(self, seen: list[list[int]]) -> None:
        self.seen = seen
        self.available: list[int] = [0]
        self.waits: list[float | None] = []

    def clients(self) -> Sequence[int]:
        return self.available

    def joins(self, cid: int) -> int:
        return 1  # a network's: clients that leave may come back

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        self.waits.append(timeout)
        time.sleep(0.01)  # one came, and left again before the loop looked
        self.available = self.seen.pop(0) if len(self.seen) > 1 else self.seen[0]
        return True

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        raise AssertionError("not asked here")

    def close(self) -> None:
        pass


def _round_loop(transport: Any, wait_timeout: float) -> RoundLoop:
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    return RoundLoop(strategy, transport, {"w": np.zeros(1)}, wait_timeout=wait_timeout)


def test_a_round_whose_clients_flapped_waits_again_and_goes_on_when_they_are_back() -> None:
    # Before: "round 1: 1 client available, fewer than the 2 needed", at the first wait.
    transport = _Flapping([[0], [0, 1]])
    assert list(_round_loop(transport, 60.0)._available(1, 2)) == [0, 1]
    assert len(transport.waits) == 2


def test_a_round_whose_clients_keep_flapping_stops_once_the_time_out_ran_out() -> None:
    transport = _Flapping([[0]])
    loop = _round_loop(transport, 0.2)
    with pytest.raises(covey.FederationError) as stopped:
        loop._available(1, 2)
    said = str(stopped.value)
    assert said.startswith("round 1: only 1 of the 2 clients needed"), said
    assert said.endswith("connected within 0.2 s"), said
    # One time-out in all, not started again with each wait.
    waits = [w for w in transport.waits if w is not None]
    assert len(waits) == len(transport.waits) >= 2
    assert waits[0] == 0.2
    assert all(later < earlier for earlier, later in itertools.pairwise(waits))


class _Client(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


class _AsyncFlapping(SimulatedAsyncTransport):
    """Asynchronous, networked: each wait succeeds, and only the last leaves enough there."""

    def __init__(self, inner: Any, flaps: int) -> None:
        super().__init__(inner)
        self.flaps = flaps
        self.waits: list[float | None] = []

    def clients(self) -> Sequence[int]:
        return [0, 1] if self.flaps < 0 else [0]

    def joins(self, cid: int) -> int:
        return 1

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        self.waits.append(timeout)
        time.sleep(0.01)
        self.flaps -= 1
        return True


def _async_loop(flaps: int, idle_timeout: float) -> tuple[AsyncLoop, _AsyncFlapping]:
    clients = MemoryTransport([0, 1], lambda cid, task: run_task(_Client(), cid, task))
    transport = _AsyncFlapping(clients, flaps)
    strategy = covey.FedBuff(buffer_size=1, min_available_clients=2)
    return AsyncLoop(strategy, transport, {"w": np.zeros(1)}, idle_timeout=idle_timeout), transport


def test_an_asynchronous_run_whose_clients_flapped_waits_again_for_them() -> None:
    # Before: "update 3: no client can be given a task: ...", after the first wait.
    loop, transport = _async_loop(flaps=2, idle_timeout=60.0)
    loop._wait_for_tasks(3)  # enough were back: the run goes on
    assert len(transport.waits) == 3


def test_an_asynchronous_run_whose_clients_keep_flapping_stops_at_the_idle_time_out() -> None:
    loop, transport = _async_loop(flaps=10**9, idle_timeout=0.2)
    with pytest.raises(covey.FederationError) as stopped:
        loop._wait_for_tasks(3)
    said = str(stopped.value)
    assert said.startswith("update 3: 1 client connected, fewer than min_available_clients=2")
    assert said.endswith("no more came within 0.2 s"), said
    waits = [w for w in transport.waits if w is not None]
    assert len(waits) == len(transport.waits) >= 2
    assert all(later < earlier for earlier, later in itertools.pairwise(waits))


def test_an_asynchronous_run_whose_first_clients_flapped_waits_again_for_them() -> None:
    # Before: "update 1: 1 client available, fewer than min_available_clients=2".
    loop, transport = _async_loop(flaps=1, idle_timeout=60.0)
    loop._wait_for_clients(1)
    assert len(transport.waits) == 2
